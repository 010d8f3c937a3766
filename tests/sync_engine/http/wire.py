"""A real aiohttp server for a response class alone, and what went over its socket.

For tests of how the engine's own response classes (`_ShapeResponse`, `ChunkFileResponse`)
put bytes on the wire: served by a real aiohttp server on a selector loop, asked by a raw
socket client (so the exact bytes are seen), with every transport write recorded (so the
number of writes, and whether a buffer was copied before it went, can be checked). No Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from asyncio import selector_events
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: A request for `path` that closes the connection after its answer.
ASK = "{} /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class FakeShape:
    """What a response needs of its shape: the count of its sends in flight."""

    sending = 0

    def sent(self) -> None:
        self.sending -= 1


def record_writes(monkeypatch: pytest.MonkeyPatch, *, copy: bool = False) -> list[Any]:
    """Every buffer given to a selector transport's `write` from now on (`copy`: as bytes;
    else the objects themselves, so a test can tell a buffer written as it is)."""
    writes: list[Any] = []
    transport_class: Any = vars(selector_events)["_SelectorSocketTransport"]
    real_write = transport_class.write

    def write(self: Any, chunk: Any) -> None:
        writes.append(bytes(chunk) if copy else chunk)
        real_write(self, chunk)

    monkeypatch.setattr(transport_class, "write", write)
    return writes


@contextlib.asynccontextmanager
async def serving(routes: dict[str, Handler]) -> AsyncIterator[int]:
    """A server answering `/<name>` with `routes[name]` (any method), on a free port."""
    app = web.Application()
    for name, handler in routes.items():
        app.router.add_route("*", f"/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        got = b""
        while piece := sock.recv(1 << 16):
            got += piece
        return got


async def ask(port: int, method: str, path: str) -> bytes:
    """The whole answer (head and body) to one request, read until the server closes."""
    return await asyncio.to_thread(_exchange, port, ASK.format(method, path).encode())


def undated(answer: bytes) -> bytes:
    """The answer without its Date header (two answers may straddle a second)."""
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)
