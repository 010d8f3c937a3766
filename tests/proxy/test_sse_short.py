"""No short SSE streams from the shared fan-out (`proxy.upstream.sse.MIN_CLIENT_STREAM`).

A client that joins a shape's shared SSE stream just before the engine ends it (its SSE
timeout counts from when the stream opened, not from when this client joined) got a stream
of a few ms; Electric's client (1.5.28) takes three streams under 1 s in a row for a
buffering proxy and falls back to long-polling for good. Now such a client's response goes
on, on the shape's next engine stream, from the last event it had. Real client:
tests/node/sse.test.mjs ("SSE clients never get short streams from the shared fan-out").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from proxy.config.loader import load_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.sse_fakes import proxy_in_front, sse_batch, sse_headers
from tests.support.waiting import wait_until_async

SHAPE = "/v1/shape?table=items&handle=h-1"


class EndingEngine:
    """From 100_0: transaction 200, then the stream ends when `end` is set. From any other
    offset: `answer` (a 200 stream with transaction 300 once `later` is set, or a 409)."""

    def __init__(self, answer: int = 200) -> None:
        self.end = asyncio.Event()
        self.later = asyncio.Event()
        self.answer = answer
        self.requests: list[str] = []

    async def shape(self, request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        self.requests.append(offset)
        assert request.query["live_sse"] == "true"
        if offset != "100_0" and self.answer == 409:
            body = orjson.dumps([{"headers": {"control": "must-refetch"}}])
            return web.Response(
                status=409,
                body=body,
                headers={"electric-handle": "h-2"},
                content_type="application/json",
            )
        resp = web.StreamResponse(headers=sse_headers(offset))
        await resp.prepare(request)
        if offset == "100_0":
            await resp.write(sse_batch(200, 5))
            await self.end.wait()
        else:
            await self.later.wait()
            await resp.write(sse_batch(300, 6))
            await asyncio.Event().wait()
        await resp.write_eof()
        return resp


async def _open(proxy: Any, token: str, offset: str) -> Any:
    resp = await proxy.client.get(
        f"{SHAPE}&offset={offset}&live=true&live_sse=true&cursor=",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )
    assert resp.status == 200, await resp.text()
    return resp


def _ids(body: bytes) -> list[str]:
    return [
        orjson.loads(block[6:])["value"]["id"]
        for block in body.split(b"\n\n")
        if block.startswith(b"data: ") and b'"operation"' in block
    ]


UP_TO_DATE = b'"global_last_seen_lsn":"%d"}}\n\n'


async def test_clients_of_a_stream_that_ends_at_once_go_on_on_the_next(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    engine = EndingEngine()
    proxy, token = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy
    )
    first = await _open(proxy, token, "100_0")
    assert _ids(await first.content.readuntil(UP_TO_DATE % 200)) == ["5"]
    joined = await _open(proxy, token, "200_0")  # (just before the end)
    engine.end.set()  # the engine ends the shared stream
    # Both responses go on, on one new engine stream from where they are.
    await wait_until_async(lambda: engine.requests == ["100_0", "200_0"], message="next stream")
    engine.later.set()
    for resp in (first, joined):
        assert _ids(await resp.content.readuntil(UP_TO_DATE % 300)) == ["6"]
        resp.close()
    assert engine.requests == ["100_0", "200_0"]


async def test_a_stream_going_on_into_a_409_ends_cleanly_and_the_client_gets_it_next(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """The shape rotated when the stream ended: the client's response ends (whole, as the
    engine's does), and its reconnect gets the engine's 409."""
    engine = EndingEngine(answer=409)
    proxy, token = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy
    )
    first = await _open(proxy, token, "100_0")
    assert _ids(await first.content.readuntil(UP_TO_DATE % 200)) == ["5"]
    engine.end.set()
    assert await asyncio.wait_for(first.read(), 20) == b""  # a clean end, no error
    again = await proxy.client.get(
        f"{SHAPE}&offset=200_0&live=true&live_sse=true&cursor=",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )
    assert again.status == 409
    assert engine.requests[:2] == ["100_0", "200_0"]


class LiveEngine:
    """Every SSE stream stays open (keep-alives every 0.2 s); `change` sends transaction
    `lsn` on all of them."""

    def __init__(self) -> None:
        self.streams: list[web.StreamResponse] = []
        self.requests: list[str] = []

    async def shape(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.query["offset"])
        resp = web.StreamResponse(headers=sse_headers(request.query["offset"]))
        await resp.prepare(request)
        self.streams.append(resp)
        with contextlib.suppress(ConnectionError):
            while True:
                await resp.write(b": keep-alive\n\n")
                await asyncio.sleep(0.2)
        return resp

    async def change(self, lsn: int, row: int) -> None:
        for resp in self.streams:
            with contextlib.suppress(ConnectionError):
                await resp.write(sse_batch(lsn, row))


async def test_a_stream_ends_when_its_token_expires(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """From policy: a client's SSE stream went on delivering changes after its token's
    `exp`, for as long as the engine kept the stream open (60 s). It now ends cleanly at
    `exp`; the client reconnects and gets its 401 (or goes on with a fresh token). A client
    of the same stream with a longer-lived token keeps it."""
    engine = LiveEngine()
    proxy, lasting = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy
    )
    exp = int(time.time()) + 3
    expiring = proxy.tokens.make(exp=exp)
    short = await _open(proxy, expiring, "100_0")
    long = await _open(proxy, lasting, "100_0")
    await engine.change(200, 5)
    for resp in (short, long):
        assert _ids(await resp.content.readuntil(UP_TO_DATE % 200)) == ["5"]
    # its end: clean (no error), within a few seconds of exp
    rest = await asyncio.wait_for(short.read(), 20)
    assert time.time() >= exp - 0.1
    await engine.change(300, 6)
    assert _ids(rest) == []
    assert _ids(await long.content.readuntil(UP_TO_DATE % 300)) == ["6"]
    long.close()
    assert engine.requests == ["100_0"]


async def test_a_reload_ends_the_streams_it_may_revoke(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any, tmp_path: Path
) -> None:
    """From policy: a config reload that removes a member's rule did not end the member's
    open SSE stream. A reload (or an issuer's key dropped) now ends every shared stream
    cleanly; clients reconnect and are authorised again: here, refused."""
    engine = LiveEngine()
    app = web.Application()
    app.router.add_get("/v1/shape", engine.shape)
    server = await aiohttp_server(app, access_log=None)
    config = base_config(str(server.make_url("")), str(idp_server.make_url("/jwks.json")))
    config["server"] = {"reload_interval": 0.05}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    proxy = await make_proxy(load_config(path, environ), config_path=path, environ=environ)
    token = proxy.tokens.make()
    stream = await _open(proxy, token, "100_0")
    await engine.change(200, 5)
    assert _ids(await stream.content.readuntil(UP_TO_DATE % 200)) == ["5"]
    config["tables"]["items"]["allow"] = [
        rule for rule in config["tables"]["items"]["allow"] if rule["name"] != "member"
    ]
    (tmp_path / "next.yaml").write_text(yaml.safe_dump(config))
    os.replace(tmp_path / "next.yaml", path)
    rest = await asyncio.wait_for(stream.read(), 20)  # a clean end, no error
    await engine.change(300, 6)
    assert _ids(rest) == []
    again = await proxy.client.get(
        f"{SHAPE}&offset=200_0&live=true&live_sse=true&cursor=",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )
    assert again.status == 403
