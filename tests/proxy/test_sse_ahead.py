"""A client ahead of the shared SSE stream it joins gets only what follows its offset.

The case behind a duplicate the npm client saw through the proxy (`sse-fanout.test.mjs`,
"got 1,2,3,103,4,5,5,6,..."): after the engine ends its SSE streams (`--sse-timeout`), the
clients of a shape reconnect one by one. One that is still at the offset before a change
opens a shared stream, and the engine answers it with that change as its catch-up; another
client, which already had the change from the stream before, reconnects at the offset after
it and joins the same shared stream before the catch-up has arrived. The fan-out wrote every
event to every client, so the second one got the change a second time.

Here the engine is a fake that holds its catch-up until the test lets it go: both clients'
streams are open when it arrives, every time (the real path: `test_sse_fanout_real.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.upstream import sse
from tests.proxy.sse_fakes import proxy_in_front, sse_batch, sse_headers
from tests.support.waiting import wait_until_async

SHAPE = "/v1/shape?table=items&handle=h-1"


class GatedEngine:
    """An engine whose SSE answer from offset 100_0 is the catch-up of transaction 200 (its
    log's end), sent only once `release` is set; it then ends the stream, as the engine ends
    a catch-up. Offset 200_0 is at the log's end: held, then transaction 300 live."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.later = asyncio.Event()
        self.requests: list[str] = []

    async def shape(self, request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        self.requests.append(offset)
        assert request.query.get("live_sse") == "true", request.url
        log_end = "200_2" if offset == "100_0" else offset
        resp = web.StreamResponse(
            headers=sse_headers(offset, {"electric-has-data": "true"}, log_end)
        )
        await resp.prepare(request)
        if offset == "100_0":
            await self.release.wait()
            await resp.write(sse_batch(200, 5, 6))
        else:
            await self.later.wait()
            await resp.write(sse_batch(300, 7))
        await resp.write_eof()
        return resp


async def _open(proxy: Any, token: str, offset: str) -> Any:
    """An SSE request through the proxy, its headers read (the proxy has attached it)."""
    resp = await proxy.client.get(
        f"{SHAPE}&offset={offset}&live=true&live_sse=true&cursor=",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )
    assert resp.status == 200, await resp.text()
    return resp


def _ids(body: bytes) -> list[str]:
    ids = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: "):
            message = orjson.loads(block[6:])
            if message["headers"].get("operation") == "insert":
                ids.append(message["value"]["id"])
    return ids


async def test_a_client_ahead_of_a_shared_catch_up_does_not_get_it_again(
    aiohttp_server: Any,
    idp_server: Any,
    environ: Any,
    make_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (streams that end at once, as the engine's did after a catch-up: each client's with it)
    monkeypatch.setattr(sse, "MIN_CLIENT_STREAM", 0.0)
    engine = GatedEngine()
    proxy, token = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy
    )
    behind = await _open(proxy, token, "100_0")  # opens the shared stream: a catch-up
    # Had transaction 200 already (from an earlier stream), in both spellings of its end.
    ahead = [await _open(proxy, token, "200_0"), await _open(proxy, token, "200_2")]
    assert engine.requests == ["100_0"]  # they share the first one's engine stream
    engine.release.set()
    assert _ids(await behind.read()) == ["5", "6"]
    for resp in ahead:
        assert _ids(await resp.read()) == []  # was ["5", "6"]: a second time
    # The catch-up is over; the next stream (from 200_0) is live: all three get 7, once.
    streams = [await _open(proxy, token, "200_0") for _ in range(3)]
    engine.later.set()
    for resp in streams:
        assert _ids(await resp.read()) == ["7"]
    assert engine.requests == ["100_0", "200_0"]


async def test_a_client_ahead_gets_the_part_of_a_read_after_its_offset(
    aiohttp_server: Any,
    idp_server: Any,
    environ: Any,
    make_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream's next read holds transactions 200 and 300; a client at 200_0 gets 300."""
    monkeypatch.setattr(sse, "MIN_CLIENT_STREAM", 0.0)  # (as above)
    engine = GatedEngine()

    async def shape(request: web.Request) -> web.StreamResponse:
        engine.requests.append(request.query["offset"])
        resp = web.StreamResponse(headers=sse_headers(request.query["offset"]))
        await resp.prepare(request)
        await engine.release.wait()
        await resp.write(sse_batch(200, 5, 6) + sse_batch(300, 7))
        await engine.later.wait()
        await resp.write(sse_batch(400, 8))
        await resp.write_eof()
        return resp

    proxy, token = await proxy_in_front(shape, aiohttp_server, idp_server, environ, make_proxy)
    behind = await _open(proxy, token, "100_0")
    ahead = await _open(proxy, token, "200_0")
    further = await _open(proxy, token, "300_0")
    engine.release.set()
    engine.later.set()
    assert _ids(await behind.read()) == ["5", "6", "7", "8"]
    assert _ids(await ahead.read()) == ["7", "8"]
    assert _ids(await further.read()) == ["8"]
    assert engine.requests == ["100_0"]


class CatchUpEngine:
    """Keeps every SSE stream open, as the engine does since it goes on after a catch-up:
    from 300_0 (the tip) it waits for `live`, then sends transaction 400; from 100_0 it
    sends transactions 200 and 300 (the catch-up) and then waits at the tip for ever. It
    notes each request whose client (the proxy) went away."""

    def __init__(self) -> None:
        self.live = asyncio.Event()
        self.requests: list[str] = []
        self.closed: list[str] = []

    async def shape(self, request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        self.requests.append(offset)
        resp = web.StreamResponse(headers=sse_headers(offset, log_end="300_0"))
        await resp.prepare(request)
        try:
            if offset == "100_0":
                await resp.write(sse_batch(200, 5) + sse_batch(300, 6))
                while True:
                    await resp.write(b": keep-alive\n\n")
                    await asyncio.sleep(0.05)
            await self.live.wait()
            await resp.write(sse_batch(400, 7))
            await asyncio.Event().wait()
        except (ConnectionError, asyncio.CancelledError):
            self.closed.append(offset)
            raise
        return resp


async def test_a_client_behind_is_caught_up_then_joins_the_shared_stream(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """A client behind the shared stream's history gets the engine's catch-up on a stream of
    its own, which ends (and its engine request with it) once the client can join the shared
    stream: it does not hold a second engine stream until the SSE timeout. The client's
    response goes on, on the shared stream (it used to end there: a stream of a few ms,
    and Electric's client falls back to long-polling after three short ones in a row)."""
    engine = CatchUpEngine()
    proxy, token = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy
    )
    at_tip = await _open(proxy, token, "300_0")
    behind = await _open(proxy, token, "100_0")
    caught_up = await asyncio.wait_for(
        behind.content.readuntil(b'"global_last_seen_lsn":"300"}}\n\n'), 20
    )
    assert _ids(caught_up) == ["5", "6"]
    await wait_until_async(lambda: engine.closed == ["100_0"], message="its engine request closed")
    assert engine.requests == ["300_0", "100_0"]
    engine.live.set()
    for resp in (at_tip, behind):
        assert _ids(await resp.content.readuntil(b'"global_last_seen_lsn":"400"}}\n\n')) == ["7"]
        resp.close()
    assert engine.requests == ["300_0", "100_0"]
