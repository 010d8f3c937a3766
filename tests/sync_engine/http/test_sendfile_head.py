"""A chunk file's response (`ChunkFileResponse`) writes its head and the body's `[` in one
write, as `web.Response` writes its head with its body: each write is a system call, a
segment on the wire and a wakeup of the client, and the head used to go out alone before
`[` (three small writes per answer: head, `[`, `]`, against nginx's one). The bytes are the
same: head, `[`, the file, `]`; a HEAD gets the same head and no body.

No Postgres: the response is served by a real aiohttp server on a selector loop whose
transport writes are recorded, to a raw socket client.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from asyncio import selector_events
from pathlib import Path
from typing import Any

from aiohttp import web

from sync_engine.http.sendfile import ChunkFileResponse


class _Shape:
    sending = 0

    def sent(self) -> None:
        self.sending -= 1


def _exchange(port: int, request: bytes, until: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        got = b""
        while len(got) < until:
            piece = sock.recv(1 << 16)
            if not piece:
                break
            got += piece
        return got


async def test_the_head_and_the_opening_bracket_go_out_in_one_write(
    tmp_path: Path, monkeypatch: Any
) -> None:
    data = b'{"a":1},' * 40_000 + b'{"a":2}'
    path = tmp_path / "chunk"
    path.write_bytes(data)
    writes: list[bytes] = []
    transport_class: Any = vars(selector_events)["_SelectorSocketTransport"]
    real_write = transport_class.write

    def write(self: Any, chunk: Any) -> None:
        writes.append(bytes(chunk))
        real_write(self, chunk)

    monkeypatch.setattr(transport_class, "write", write)

    async def handler(request: web.Request) -> web.StreamResponse:
        fd = os.open(path, os.O_RDONLY)
        return ChunkFileResponse(fd, len(data), {"electric-offset": "0_0"}, _Shape())  # type: ignore[arg-type]

    app = web.Application()
    app.router.add_route("*", "/chunk", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        get = b"GET /chunk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await asyncio.to_thread(_exchange, port, get, 1 << 30)
        head = writes[0]
        head_writes = list(writes)
        writes.clear()
        head_only = await asyncio.to_thread(_exchange, port, b"HEAD" + get[3:], 1 << 30)
    finally:
        await runner.cleanup()

    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n["), head
    assert head_writes == [head, b"]"], [w[:40] for w in head_writes]
    assert answer == head + data + b"]"
    assert f"Content-Length: {len(data) + 2}\r\n".encode() in head
    assert head_only == head[:-1]  # the same head, no body


async def test_a_region_of_a_file_is_sent_from_its_offset(tmp_path: Path) -> None:
    """A last snapshot chunk kept in its pack is sent as a region of the pack: `[`, exactly
    its bytes, `]` (GET over the kernel's sendfile), and a HEAD has the same head."""
    region = b'{"a":1},' * 30_000 + b'{"a":2}'
    path = tmp_path / "pack"
    path.write_bytes(b"before" * 1000 + region + b"after" * 1000)
    at = 6000

    async def handler(request: web.Request) -> web.StreamResponse:
        fd = os.open(path, os.O_RDONLY)
        shape: Any = _Shape()
        return ChunkFileResponse(fd, len(region), {"electric-offset": "0_0"}, shape, at)

    app = web.Application()
    app.router.add_route("*", "/chunk", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        get = b"GET /chunk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await asyncio.to_thread(_exchange, port, get, 1 << 30)
        head_only = await asyncio.to_thread(_exchange, port, b"HEAD" + get[3:], 1 << 30)
    finally:
        await runner.cleanup()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"[" + region + b"]"
    assert f"Content-Length: {len(region) + 2}\r\n".encode() in head + b"\r\n"
    undated = re.compile(rb"\r\nDate: [^\r]*")  # (the two may straddle a second)
    assert undated.sub(b"", head_only) == undated.sub(b"", head + b"\r\n\r\n")
