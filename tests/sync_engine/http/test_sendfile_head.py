"""A chunk file's response (`ChunkFileResponse`) writes its head and the body's `[` in one
write, as `web.Response` writes its head with its body: each write is a system call, a
segment on the wire and a wakeup of the client, and the head used to go out alone before
`[` (three small writes per answer: head, `[`, `]`, against nginx's one). The bytes are the
same: head, `[`, the file, `]`; a HEAD gets the same head and no body.

No Postgres: the response is served by a real aiohttp server on a selector loop whose
transport writes are recorded, to a raw socket client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sync_engine.http import parser_refusals
from sync_engine.http.sendfile import ChunkFileResponse, open_chunk

from .wire import FakeShape, ask, record_writes, serving, undated


async def test_the_head_and_the_opening_bracket_go_out_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b'{"a":1},' * 40_000 + b'{"a":2}'
    path = tmp_path / "chunk"
    path.write_bytes(data)
    writes = record_writes(monkeypatch, copy=True)

    async def handler(request: web.Request) -> web.StreamResponse:
        fd = open_chunk(str(path))
        assert fd is not None
        shape: Any = FakeShape()
        return ChunkFileResponse(fd, len(data), {"electric-offset": "0_0"}, shape)

    async with serving({"chunk": handler}) as port:
        answer = await ask(port, "GET", "chunk")
        head = writes[0]
        head_writes = list(writes)
        writes.clear()
        head_only = await ask(port, "HEAD", "chunk")

    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n["), head
    assert head_writes == [head, b"]"], [w[:40] for w in head_writes]
    assert answer == head + data + b"]"
    assert f"Content-Length: {len(data) + 2}\r\n".encode() in head
    assert undated(head_only) == undated(head[:-1])  # the same head, no body (its Date may tick)


async def test_a_region_of_a_file_is_sent_from_its_offset(tmp_path: Path) -> None:
    """A last snapshot chunk kept in its pack is sent as a region of the pack: `[`, exactly
    its bytes, `]` (GET over the kernel's sendfile), and a HEAD has the same head. The
    descriptors a send holds count against the file limit until it ends, no longer."""
    held = parser_refusals._Descriptors.sends
    region = b'{"a":1},' * 30_000 + b'{"a":2}'
    path = tmp_path / "pack"
    path.write_bytes(b"before" * 1000 + region + b"after" * 1000)
    at = 6000

    async def handler(request: web.Request) -> web.StreamResponse:
        fd = open_chunk(str(path))
        assert fd is not None
        shape: Any = FakeShape()
        return ChunkFileResponse(fd, len(region), {"electric-offset": "0_0"}, shape, at)

    async with serving({"chunk": handler}) as port:
        answer = await ask(port, "GET", "chunk")
        head_only = await ask(port, "HEAD", "chunk")
    assert parser_refusals._Descriptors.sends == held
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"[" + region + b"]"
    assert f"Content-Length: {len(region) + 2}\r\n".encode() in head + b"\r\n"
    assert undated(head_only) == undated(head + b"\r\n\r\n")
