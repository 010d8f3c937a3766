"""A fresh snapshot chunk (~1 MiB, kept in memory by the process that wrote it) is written as
it is, between `[` and `]`: it used to be joined into a new body first, a copy of the whole
chunk into fresh pages on every answer. The bytes on the wire are the same as the joined
body's (GET), and a HEAD gets the same head and no body.

No Postgres: the responses are served by a real aiohttp server on a selector loop whose
transport writes are recorded, to a raw socket client.
"""

from __future__ import annotations

import asyncio
import re
import socket
from asyncio import selector_events
from typing import Any

from aiohttp import web

from sync_engine.http.shape import WRITE_BYTES, _ShapeResponse


class _Shape:
    sending = 0

    def sent(self) -> None:
        self.sending -= 1


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        got = b""
        while piece := sock.recv(1 << 16):
            got += piece
        return got


def _undated(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


async def test_a_single_big_item_is_written_whole_and_the_bytes_are_the_joined_bodys(
    monkeypatch: Any,
) -> None:
    item = b"{" + b'"a":1,' * ((WRITE_BYTES * 3) // 6) + b'"b":2}'  # ~768 KiB, one item
    writes: list[Any] = []
    transport_class: Any = vars(selector_events)["_SelectorSocketTransport"]
    real_write = transport_class.write

    def write(self: Any, chunk: Any) -> None:
        writes.append(chunk)
        real_write(self, chunk)

    monkeypatch.setattr(transport_class, "write", write)
    hdrs = {"electric-offset": "0_0", "content-type": "application/json; charset=utf-8"}

    async def pieces(request: web.Request) -> web.StreamResponse:
        size = len(item) + 2
        return _ShapeResponse(_Shape(), headers=dict(hdrs), pieces=[item], size=size)  # type: ignore[arg-type]

    async def joined(request: web.Request) -> web.StreamResponse:
        body = b"".join((b"[", item, b"]"))
        return _ShapeResponse(_Shape(), headers=dict(hdrs), body=body)  # type: ignore[arg-type]

    app = web.Application()
    app.router.add_route("*", "/pieces", pieces)
    app.router.add_route("*", "/joined", joined)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        ask = "{} /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        got = await asyncio.to_thread(_exchange, port, ask.format("GET", "pieces").encode())
        written = list(writes)
        want = await asyncio.to_thread(_exchange, port, ask.format("GET", "joined").encode())
        head = await asyncio.to_thread(_exchange, port, ask.format("HEAD", "pieces").encode())
        head_want = await asyncio.to_thread(_exchange, port, ask.format("HEAD", "joined").encode())
    finally:
        await runner.cleanup()

    assert _undated(got) == _undated(want)
    assert got.endswith(b"\r\n\r\n[" + item + b"]")
    assert any(w is item for w in written), "the item was copied before it was written"
    assert (
        _undated(head)
        == _undated(head_want)
        == _undated(want).partition(b"\r\n\r\n")[0] + (b"\r\n\r\n")
    )
