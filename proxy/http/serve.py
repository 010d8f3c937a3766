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
from proxy.limits.client import Address, Network, charged_peer, parse_address
from proxy.runtime import RuntimeHolder
from proxy.upstream.forward import Forwarder
from sync_engine.http.log_throttle import ThrottledLog
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
    @property
    def holder(self) -> RuntimeHolder: ...


#: The share of the connection cap one client address may hold by default (a quarter), and
#: the least it may hold whatever the cap. Why: connections cost no token, and a client
#: reading a large answer slowly enough never to count as stalled (~48 KB every 5 s) could
#: hold every slot for as long as it liked, one address locking everyone else out (the
#: stalled-reader eviction cannot tell it from a slow phone). A quarter leaves the other
#: three to everyone else and is still far more than any browser opens (6 per host).
PER_ADDRESS_SHARE = 4
MIN_PER_ADDRESS = 8


def per_address_cap(cap: int, configured: int | None = None) -> int:
    """How many connections one client address may hold when `cap` may be open in all:
    `configured` (`server.max_connections_per_address`) if set, else a quarter of the cap,
    at least `MIN_PER_ADDRESS`."""
    if configured is not None:
        return configured
    return max(MIN_PER_ADDRESS, cap // PER_ADDRESS_SHARE)


def _exempt(address: Address, trusted: tuple[Network, ...]) -> bool:
    """A peer whose connections are many clients': loopback (a front tier on this host:
    nginx, Varnish, a CDN's agent) or a trusted proxy (`server.trusted_proxies`: a load
    balancer). The cap per address is not theirs to bear (they are capped as a whole). (A
    peer that is no IP address, a Unix socket's, only this host reaches: exempt too.)"""
    if address.is_loopback:
        return True
    return any(address.version == net.version and address in net for net in trusted)


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


#: Refusals over an address's share logged at most this many a minute, then one line with the
#: count (the engine's `ThrottledLog`): one client opening and closing connections in a loop
#: wrote a line per connect (14,534 lines in 5 s; review 11:31).
_REFUSALS_LOGGED = 5
_REFUSED = "refused a connection: %s holds its share of the connections"


class Server:
    """The connections of one listening socket."""

    def __init__(self, app: ServedApp) -> None:
        self._app = app
        #: Open connections, oldest first (a dict for its order: `_make_room`).
        self._connections: dict[Connection, None] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._budget: int | None = None
        #: Open connections of each client address (`_opened`; IPv6 by its /64, as the
        #: limits charge it), and each counted connection's address.
        self._by_address: dict[str, dict[Connection, None]] = {}
        self._address_of: dict[Connection, str] = {}
        self._refusals = ThrottledLog(
            logger,
            "refused %d more connections over their address's share in the last minute",
            first=_REFUSALS_LOGGED,
        )

    def _closed(self, conn: Connection) -> None:
        self._connections.pop(conn, None)
        address = self._address_of.pop(conn, None)
        if address is not None:
            held = self._by_address[address]
            del held[conn]
            if not held:
                del self._by_address[address]

    def _charged(self, transport: asyncio.BaseTransport) -> str | None:
        """The client address a new connection counts against (`charged_peer`), or None
        when its peer is not capped per address (`_exempt`)."""
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, (list, tuple)) and peer else None
        if host is None:
            return None
        parsed = parse_address(host)
        if parsed is None or parsed.is_loopback:
            return None  # (`_exempt`'s first cases, before the config is read)
        if _exempt(parsed, tuple(self._app.holder.current.loaded.config.server.trusted_proxies)):
            return None
        return charged_peer(host)

    def _opened(self, conn: Connection, transport: asyncio.BaseTransport) -> bool:
        """Admit a new connection, or answer it 503 and close it, its request never read
        (`refuse_at_the_cap`, as the engine refuses). Its client address's share
        (`per_address_cap`) is checked first, an idle connection of that address closed to
        make room (`_reclaim`); then the whole cap, where `_make_room` may close another
        client's waiting connection: only for a newcomer that will then be admitted (one
        refused for its share closed someone else's first: review LOW)."""
        address = self._charged(transport)
        if address is not None:
            held = self._by_address.get(address)
            if held is not None and len(held) >= self._share() and not self._reclaim(held):
                self._refusals.log(logging.INFO, _REFUSED, address)
                refuse_at_the_cap(transport)
                return False
        if len(self._connections) >= self._cap() and not self._make_room():
            refuse_at_the_cap(transport)
            return False
        self._connections[conn] = None
        if address is not None:
            self._by_address.setdefault(address, {})[conn] = None
            self._address_of[conn] = address
        return True

    def _share(self) -> int:
        configured = self._app.holder.current.loaded.config.server.max_connections_per_address
        return per_address_cap(self._cap(), configured)

    def _reclaim(self, held: dict[Connection, None]) -> bool:
        """Close the one of `held` (an address's connections) idle between requests the
        longest, past `CONNECTION_GRACE` (`Connection.idle_for`); False when none is. Why:
        everyone behind one NAT shares an address, and their browsers' idle keep-alive
        connections (kept 75 s) filled its share: the next user got 503s while those slots
        sat idle (review 11:33). A request arriving, answered or held is never closed."""
        now = asyncio.get_running_loop().time()
        idlest: Connection | None = None
        longest = CONNECTION_GRACE
        for conn in held:
            idle = conn.idle_for(now)
            if idle >= longest:
                idlest, longest = conn, idle
        if idlest is None:
            return False
        self._closed(idlest)
        idlest.abort()
        return True

    def _cap(self) -> int:
        """Client connections that may be open at once: the descriptor budget less the
        engine connections open now."""
        if self._budget is None:
            self._budget = descriptor_budget()
        # The engine connections open now, not the pool's size, count against the budget: a
        # pool sized for thousands (the default 4,096) that collapsing keeps at a handful left
        # 7,500 of a 20,000 limit for clients, and 10,000 held long-polls got 503s.
        engine = self._app.forwarder.pool.open_connections
        return max(MIN_CONNECTIONS, self._budget - engine)

    def _connection(self) -> asyncio.Protocol:
        # (Admitted or refused in `_opened`, once its peer is known.)
        return Connection(self._app, self._closed, self._opened)

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
