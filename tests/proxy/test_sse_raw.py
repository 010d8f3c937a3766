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
import zlib
from typing import Any

import orjson
from aiohttp import web

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config

SHAPE = "/v1/shape?table=items&handle=h-1"


def _batch(lsn: int, id_: int) -> bytes:
    change = {
        "key": f'"public"."items"/"{id_}"',
        "value": {"id": str(id_), "org_id": "org-a", "title": "t"},
        "headers": {"operation": "insert", "lsn": str(lsn), "op_position": 0},
    }
    up_to_date = {"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}}
    return b"data: " + orjson.dumps(change) + b"\n\ndata: " + orjson.dumps(up_to_date) + b"\n\n"


class GzipEngine:
    """SSE answers gzip-compressed: transaction 200, then (once `release` is set) 300."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/shape", self.shape)
        return app

    async def shape(self, request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        self.requests.append(offset)
        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "content-encoding": "gzip",
                "cache-control": "public, max-age=59",
                "electric-handle": "h-1",
                "electric-offset": offset,
                "shapegate-log-end": offset,
                "electric-cursor": "123",
            }
        )
        await resp.prepare(request)
        gzip = zlib.compressobj(wbits=31)
        if offset == "100_2":
            await resp.write(gzip.compress(_batch(200, 5)) + gzip.flush(zlib.Z_SYNC_FLUSH))
            await self.release.wait()
        await resp.write(gzip.compress(_batch(300, 6)) + gzip.flush())
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
    server = await aiohttp_server(engine.app(), access_log=None)
    config = base_config(str(server.make_url("")), str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make()
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
