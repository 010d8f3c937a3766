"""A fresh snapshot chunk (~1 MiB, kept in memory by the process that wrote it) is written as
it is, between `[` and `]`: it used to be joined into a new body first, a copy of the whole
chunk into fresh pages on every answer. The bytes on the wire are the same as the joined
body's (GET), and a HEAD gets the same head and no body.

No Postgres: the responses are served by a real aiohttp server on a selector loop whose
transport writes are recorded, to a raw socket client.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from sync_engine.http.shape import WRITE_BYTES, _ShapeResponse

from .wire import FakeShape, ask, record_writes, serving, undated


async def test_a_single_big_item_is_written_whole_and_the_bytes_are_the_joined_bodys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    item = b"{" + b'"a":1,' * ((WRITE_BYTES * 3) // 6) + b'"b":2}'  # ~768 KiB, one item
    writes = record_writes(monkeypatch)
    hdrs = {"electric-offset": "0_0", "content-type": "application/json; charset=utf-8"}

    async def pieces(request: web.Request) -> web.StreamResponse:
        shape: Any = FakeShape()
        size = len(item) + 2
        return _ShapeResponse(shape, headers=dict(hdrs), pieces=[item], size=size)

    async def joined(request: web.Request) -> web.StreamResponse:
        shape: Any = FakeShape()
        body = b"".join((b"[", item, b"]"))
        return _ShapeResponse(shape, headers=dict(hdrs), body=body)

    async with serving({"pieces": pieces, "joined": joined}) as port:
        got = await ask(port, "GET", "pieces")
        written = list(writes)
        want = await ask(port, "GET", "joined")
        head = await ask(port, "HEAD", "pieces")
        head_want = await ask(port, "HEAD", "joined")

    assert undated(got) == undated(want)
    assert got.endswith(b"\r\n\r\n[" + item + b"]")
    assert any(w is item for w in written), "the item was copied before it was written"
    assert (
        undated(head)
        == undated(head_want)
        == undated(want).partition(b"\r\n\r\n")[0] + (b"\r\n\r\n")
    )
