"""Listening for clients and stopping gracefully: the proxy's server around its connections.

Shutdown follows uvicorn's order: stop listening, close idle connections and ask busy ones to
close after their current answer, wait up to a timeout, then cancel what is still running
(held long-polls: their clients reconnect elsewhere) and close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.http.protocol import Connection

if TYPE_CHECKING:
    from proxy.app import ProxyApp

logger = logging.getLogger(__name__)


class Server:
    """The connections of one listening socket."""

    def __init__(self, app: ProxyApp) -> None:
        self._app = app
        self._connections: set[Connection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    def _connection(self) -> Connection:
        conn = Connection(self._app, self._connections.discard)
        self._connections.add(conn)
        return conn

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
    app: ProxyApp,
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
