"""A client too slow for its shape's shared SSE stream goes on, in the same response, on a
stream of its own; once that one has caught up with the shared stream, the response goes on
there (README: "rejoins the shared stream at its next up-to-date"). It ended at that
up-to-date instead, so a slow client reconnected once per fall-behind (twin 08:16, LOW).

The engine is a fake (`test_sse_paced`'s log): the shared stream writes transactions 200
(1.5 MB, so a client that stopped reading falls behind in it) and 300 once both clients are
on it, then 400 when told;
the client's own stream (from its last up-to-date) gets 200 and 300 and then nothing, so
transaction 400 can only come to the client from the shared stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from proxy.http.handlers import FORWARDER
from proxy.upstream import sse
from tests.proxy.sse_fakes import proxy_in_front, sse_headers
from tests.proxy.test_sse_paced import LOG, StoppedReader, _up_to_date
from tests.support.waiting import wait_until_async


async def _hold(resp: web.StreamResponse, until: asyncio.Event | None = None) -> None:
    """Until `until` (for ever without one), with a keep-alive comment every 0.5 s, as the
    engine sends them (else the proxy's `first_byte_timeout`, 3 s here, ends the stream)."""
    while until is None or not until.is_set():
        try:
            await asyncio.wait_for(asyncio.shield((until or asyncio.Event()).wait()), 0.5)
        except TimeoutError:
            await resp.write(b": keep-alive\n\n")


class RejoinEngine:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.go = asyncio.Event()
        self.more = asyncio.Event()
        self.shared_at_300 = asyncio.Event()

    async def shape(self, request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        self.requests.append(offset)
        resp = web.StreamResponse(headers=sse_headers(offset))
        await resp.prepare(request)
        if len(self.requests) == 1:  # the shared stream, once both clients are on it
            await _hold(resp, self.go)
            for piece in (LOG[0][1], LOG[0][2], LOG[1][1] + LOG[1][2]):
                await resp.write(piece)
                await asyncio.sleep(0.3)
            self.shared_at_300.set()
            await _hold(resp, self.more)
            await resp.write(LOG[2][1] + LOG[2][2])
        else:  # the client's own: the log up to 300, as it is when the shared stream has it
            await self.shared_at_300.wait()
            after = int(offset.split("_")[0])
            await resp.write(b"".join(c + u for lsn, c, u in LOG[:2] if lsn > after))
        await _hold(resp)
        return resp


async def test_a_client_that_caught_up_goes_on_on_the_shared_stream(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    engine = RejoinEngine()
    proxy, token = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy
    )
    # (a client that reads as it comes keeps the shared stream open: a stream nobody reads
    # is let go)
    fast, reader = StoppedReader(proxy, token), StoppedReader(proxy, token)
    try:
        await fast.open()
        fast_read = asyncio.ensure_future(fast.read_until(_up_to_date(400)))
        await reader.open()  # (and reads nothing: it falls behind in 200's 1.5 MB row)
        forwarder = proxy.app[FORWARDER]

        def both_on_it() -> bool:
            return any(len(s.subscribers) == 2 for s in forwarder._streams._streams.values())

        await wait_until_async(both_on_it, message="both clients on the shared stream")
        engine.go.set()

        def fell_behind() -> bool:
            return engine.shared_at_300.is_set() and any(
                len(s.subscribers) == 1 for s in forwarder._streams._streams.values()
            )

        await wait_until_async(fell_behind, message="the slow client off the shared stream")
        engine.more.set()  # (400 comes on the shared stream only)
        # (a response younger than MIN_CLIENT_STREAM went on anyway, as a too-short one:
        # the twin's slow client had been reading for seconds)
        await asyncio.sleep(sse.MIN_CLIENT_STREAM)
        # It reads again: its own stream (from its last up-to-date) gives it 200 and 300,
        # has then caught up with the shared stream, and its response goes on there.
        ended = await reader.read_until(_up_to_date(400))
        assert ended == "done", (ended, reader.body()[-300:])
        assert reader.ids() == ["1", "2", "3", "4"]  # each once, in one response
        assert len(engine.requests) == 2  # (the shared stream and its own, nothing more)
        streams = forwarder._streams._streams.values()
        assert not any(s.paced for s in streams)  # (its own stream was let go)
        assert await fast_read == "done"
    finally:
        reader.close()
        fast.close()
