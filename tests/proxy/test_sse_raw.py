"""An engine SSE answer the fan-out cannot read as events is shared only whole.

A compressed event stream (`content-encoding: gzip`, from an engine or a tier in front of it
that compresses) is bytes the fan-out cannot split into events, and that a client cannot
decode from the middle: clients whose requests are identical to the first share it, each
from its first byte; any other client gets an engine stream of its own. The fan-out used to
parse the compressed bytes as events (nothing reached the clients until the stream ended,
then not all of it), and for any such answer to a request at `<lsn>_<last op>`, the offset
the engine names as the log's end turned the joiners' position past the stream's bytes.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.proxy.sse_fakes import proxy_in_front, sse_batch, sse_headers

SHAPE = "/v1/shape?table=items&handle=h-1"


class GzipEngine:
    """SSE answers gzip-compressed: transaction 200, then (once `release` is set) 300."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests: list[str] = []

    async def shape(self, request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        self.requests.append(offset)
        resp = web.StreamResponse(headers=sse_headers(offset, {"content-encoding": "gzip"}))
        await resp.prepare(request)
        gzip = zlib.compressobj(wbits=31)
        if offset == "100_2":
            await resp.write(gzip.compress(sse_batch(200, 5)) + gzip.flush(zlib.Z_SYNC_FLUSH))
            await self.release.wait()
        await resp.write(gzip.compress(sse_batch(300, 6)) + gzip.flush())
        await resp.write_eof()
        return resp


async def _open(proxy: Any, token: str, offset: str) -> Any:
    resp = await proxy.client.get(
        f"{SHAPE}&offset={offset}&live=true&live_sse=true&cursor=",
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "text/event-stream",
            "Accept-Encoding": "gzip",
        },
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["content-encoding"] == "gzip"
    return resp


def _ids(compressed: bytes) -> list[str]:
    body = zlib.decompress(compressed, wbits=31)
    return [
        orjson.loads(block[6:])["value"]["id"]
        for block in body.split(b"\n\n")
        if block.startswith(b"data: ") and b'"operation"' in block
    ]


async def test_a_compressed_event_stream_is_shared_whole_by_identical_requests(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    engine = GzipEngine()
    proxy, token = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy
    )
    first = await _open(proxy, token, "100_2")  # (the log's end: its last op, 2)
    start = await first.content.readany()  # the first transaction has gone out to it
    assert start
    joiner = await _open(proxy, token, "100_2")  # identical: shares it, from its first byte
    other = await _open(proxy, token, "100_0")  # not identical: a stream of its own
    assert engine.requests == ["100_2", "100_0"]
    engine.release.set()
    assert _ids(start + await first.read()) == ["5", "6"]
    assert _ids(await joiner.read()) == ["5", "6"]
    assert _ids(await other.read()) == ["6"]


async def test_a_compressed_stream_is_closed_not_cut_short_when_its_token_expires(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """At its token's `exp` a shared stream ends cleanly between two reads (its client
    reconnects): for a compressed one, that clean end was a truncated gzip body, which a
    client's decoder refuses mid-way. It is closed instead (a broken stream, which the
    client retries from its last up-to-date). On the old code: a clean end, undecodable."""
    engine = GzipEngine()
    proxy, _ = await proxy_in_front(engine.shape, aiohttp_server, idp_server, environ, make_proxy)
    token = proxy.tokens.make(exp=int(time.time()) + 2)
    resp = await _open(proxy, token, "100_2")
    received = await resp.content.readany()
    assert received
    with pytest.raises(aiohttp.ClientPayloadError):  # (not a clean end)
        received += await asyncio.wait_for(resp.content.read(), 20)
    assert engine.requests == ["100_2"]
