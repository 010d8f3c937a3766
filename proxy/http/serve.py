"""Listening for clients and stopping gracefully: the proxy's server around its connections.

Shutdown follows uvicorn's order: stop listening, close idle connections and ask busy ones to
close after their current answer, end held live answers cleanly (SSE streams, long-polls: their
clients reconnect elsewhere), wait up to a timeout, then cancel what is still running and close.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
from collections.abc import Callable
from typing import Protocol

from proxy.connection_terms import STALL_GRACE
from proxy.http.protocol import App, Connection
from proxy.upstream.forward import Forwarder
from sync_engine.http.parser_refusals import (
    CONNECTION_GRACE,
    MIN_CONNECTIONS,
    refuse_at_the_cap,
)

logger = logging.getLogger(__name__)


class ServedApp(App, Protocol):
    """What the server needs of the app beyond its connections' needs (`proxy.app.ProxyApp`
    is the one implementation): the engine connections open, live answers to end."""

    @property
    def forwarder(self) -> Forwarder: ...


#: File descriptors kept free of client and engine connections: JWKS fetches, the log, the
#: listening sockets, the event loop's own (the proxy opens no files per request). A share
#: of the limit instead (an eighth: 2,500 of 20,000) refused the benchmark's 19,500 clients.
_FD_RESERVE = 256


def descriptor_budget() -> int:
    """The descriptors client and engine connections may hold together: the file limit less
    a reserve. Without a cap, connections that never finish a request (no token needed) took
    every descriptor: new clients were reset and no engine connection could be opened."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(MIN_CONNECTIONS, soft - _FD_RESERVE)


class _TooMany(asyncio.Protocol):
    """A connection beyond the cap while every other one is busy: answered 503 and closed,
    its request never read (`refuse_at_the_cap`, as the engine refuses)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        refuse_at_the_cap(transport)


class Server:
    """The connections of one listening socket."""

    def __init__(self, app: ServedApp) -> None:
        self._app = app
        #: Open connections, oldest first (a dict for its order: `_make_room`).
        self._connections: dict[Connection, None] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._budget: int | None = None

    def _closed(self, conn: Connection) -> None:
        self._connections.pop(conn, None)

    def _connection(self) -> asyncio.Protocol:
        if self._budget is None:
            self._budget = descriptor_budget()
        # The engine connections open now, not the pool's size, count against the budget: a
        # pool sized for thousands (the default 4,096) that collapsing keeps at a handful left
        # 7,500 of a 20,000 limit for clients, and 10,000 held long-polls got 503s.
        engine = self._app.forwarder.pool.open_connections
        cap = max(MIN_CONNECTIONS, self._budget - engine)
        if len(self._connections) >= cap and not self._make_room():
            return _TooMany()
        conn = Connection(self._app, self._closed)
        self._connections[conn] = None
        return conn

    def _make_room(self) -> bool:
        """Close the connection waiting longest without a request (see `Connection.waiting`);
        else the one whose client has read nothing of its answer the longest, past
        `STALL_GRACE` (clients that stop reading a large answer, from the cache and charged
        to no principal, held every connection for `SEND_TIMEOUT`: attack 07:50); False when
        every one is busy or just opened. One passed over goes to the back, so a round looks
        at each at most once."""
        now = asyncio.get_running_loop().time()
        stalled: Connection | None = None
        longest = STALL_GRACE
        for _ in range(len(self._connections)):
            conn = next(iter(self._connections))
            del self._connections[conn]
            if conn.waiting_since(now) >= CONNECTION_GRACE:
                conn.abort()
                return True
            self._connections[conn] = None
            waited = conn.stalled_for(now)
            if waited >= longest:
                stalled, longest = conn, waited
        if stalled is not None:
            del self._connections[stalled]
            stalled.evict()
            return True
        return False

    async def start(self, socks: list[socket.socket], *, backlog: int = 128) -> None:
        """Accept clients on each of `socks` (one per address the host name resolves to)."""
        loop = asyncio.get_running_loop()
        for sock in socks:
            server = await loop.create_server(self._connection, sock=sock, backlog=backlog)
            self._servers.append(server)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def shutdown(self, timeout: float) -> None:
        """Stop listening, let answers in progress finish for up to `timeout`, then close."""
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.shut_down()
        # Live answers never finish on their own within the timeout (an SSE stream lasts the
        # engine's SSE timeout, a long-poll its hold): end them now as a revocation does,
        # each cleanly (an SSE stream as the engine's ends, a long-poll as its timeout), and
        # each client goes on from where it is. They were aborted after the timeout: every
        # stop with a live client took `timeout` and broke its stream.
        self._app.forwarder.end_streams()
        answering = [a for conn in self._connections if (a := conn.answering) is not None]
        if answering:
            await asyncio.wait(answering, timeout=timeout)
        for conn in list(self._connections):
            conn.abort()
        if self._connections:
            await asyncio.sleep(0)  # let the cancelled answers unwind
        for server in self._servers:
            await server.wait_closed()


async def serve_until_signalled(
    app: ServedApp,
    socks: list[socket.socket],
    *,
    backlog: int,
    shutdown_timeout: float,
    on_listening: Callable[[], None],
    on_stopping: Callable[[], None],
) -> None:
    """Serve `app` on `socks` until SIGINT or SIGTERM, then shut down (see `Server.shutdown`).

    The app's own resources are started and stopped by the caller around this.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    server = Server(app)
    await server.start(socks, backlog=backlog)
    on_listening()
    try:
        await stop.wait()
    finally:
        on_stopping()
        await server.shutdown(shutdown_timeout)
        for signum in installed:
            loop.remove_signal_handler(signum)
