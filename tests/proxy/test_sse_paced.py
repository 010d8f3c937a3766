"""A client too slow for its shape's shared SSE stream, on the stream of its own it goes on on
(`proxy.upstream.sse`, `paced`): it must get every change once, in the same response, and
never be left hanging with its response open and nothing sent.

The engine here is a fake whose log is three transactions: the shared stream (the first
request) writes them with pauses, so a client that stops reading falls behind at a known
place; every later request (the slow client's own stream, from its last up-to-date) gets
what follows its offset at once, in the same write as its headers, as the real engine
answers a catch-up. The client is a raw socket with a small receive buffer that stops
reading, then reads again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.config.loader import build_config
from proxy.http.handlers import FORWARDER
from proxy.upstream import sse
from proxy.upstream.sse import SharedStream
from tests.proxy.proxy_fakes import base_config
from tests.proxy.sse_fakes import RawSseSocket, proxy_in_front, sse_headers
from tests.support.waiting import wait_until_async

SHAPE = "/v1/shape?table=items&handle=h-1"


def _event(lsn: int, op: int, id_: int, title: str) -> bytes:
    value = {"id": str(id_), "org_id": "org-a", "title": title}
    headers = {"operation": "insert", "lsn": str(lsn), "op_position": op}
    message = {"key": f'"public"."items"/"{id_}"', "value": value, "headers": headers}
    return b"data: " + orjson.dumps(message) + b"\n\n"


def _up_to_date(lsn: int) -> bytes:
    control = {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}
    return b"data: " + orjson.dumps({"headers": control}) + b"\n\n"


#: The log: (lsn, its change events, its up-to-date). Transaction 200 is one 1.5 MB row:
#: more than the proxy lets wait unsent for a client of the shared stream besides its
#: latest write, so the next write finds a client that stopped reading behind.
LOG = [
    (200, _event(200, 0, 1, "x" * 1_500_000), _up_to_date(200)),
    (300, _event(300, 0, 2, "b"), _up_to_date(300)),
    (400, _event(400, 0, 3, "c") + _event(400, 2, 4, "d"), _up_to_date(400)),
    (500, _event(500, 0, 5, "y" * 1_500_000), _up_to_date(500)),  # (only for a later request)
]


class PacedEngine:
    """The first request (from 100_0) is the shared stream: transaction 200's row, its
    up-to-date and 300, each after a pause, then it stays open (no 400 yet) until `end`.
    Any later request gets every transaction after its offset with its headers, in one
    write, but for 500's up-to-date (sent at `last`), then stays open (`answer`: 409
    instead, as after a rotation)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.end = asyncio.Event()
        self.last = asyncio.Event()
        self.answer = 200
        self.open = 0  # engine streams open right now

    async def shape(self, request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        self.requests.append(offset)
        if len(self.requests) > 1 and self.answer == 409:
            body = orjson.dumps([{"headers": {"control": "must-refetch"}}])
            return web.Response(status=409, body=body, content_type="application/json")
        resp = web.StreamResponse(headers=sse_headers(offset))
        await resp.prepare(request)
        self.open += 1
        try:
            if len(self.requests) == 1:
                for piece in (LOG[0][1], LOG[0][2], LOG[1][1] + LOG[1][2]):
                    await resp.write(piece)
                    await asyncio.sleep(0.3)
                await self.end.wait()
            else:
                after = int(offset.split("_")[0])
                answer = b"".join(c + u for lsn, c, u in LOG if lsn > after)
                await resp.write(answer.removesuffix(LOG[-1][2]))
                await self.last.wait()  # (500's up-to-date)
                await resp.write(LOG[-1][2])
                await asyncio.Event().wait()
            await resp.write_eof()
        finally:
            self.open -= 1
        return resp


class StoppedReader(RawSseSocket):
    """One SSE request on a socket with a small receive buffer, read only when told."""

    def __init__(self, proxy: Any, token: str) -> None:
        super().__init__(proxy, token, f"{SHAPE}&offset=100_0")

    async def open(self) -> bytes:
        head = await super().open()
        assert head.startswith(b"HTTP/1.1 200"), head
        return head

    async def read_until(self, marker: bytes, timeout: float = 20) -> str:
        """Read until `marker` arrived ("done"), or the response ended cleanly ("ended"),
        or the connection closed ("closed"), or nothing came for `timeout` ("silent")."""
        loop = asyncio.get_running_loop()
        while True:
            if marker in self.body():
                return "done"
            if self.received.endswith(b"\r\n0\r\n\r\n"):
                return "ended"
            try:
                piece = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
            except TimeoutError:
                return "silent"
            except ConnectionResetError:
                return "closed"
            if not piece:
                return "closed"
            self.received += piece

    def ids(self) -> list[str]:
        return [
            orjson.loads(block[6:])["value"]["id"]
            for block in self.body().split(b"\n\n")
            if block.startswith(b"data: ") and b'"operation"' in block
        ]


async def _fell_behind(proxy: Any, engine: PacedEngine) -> None:
    """Until the proxy took the client off the shared stream (it stopped reading)."""

    def behind() -> bool:
        streams: list[SharedStream] = list(proxy.app[FORWARDER]._streams._streams.values())
        return len(engine.requests) == 1 and any(
            s.head is not None and not s.subscribers and not s._ahead for s in streams
        )

    await wait_until_async(behind, timeout=20, message="the client fell behind")


def _paced_unsent(proxy: Any) -> int:
    """Bytes written to the client of a paced stream and not yet taken by its socket."""
    streams: list[SharedStream] = list(proxy.app[FORWARDER]._streams._streams.values())
    return sum(
        sub.transport.get_write_buffer_size()
        for stream in streams
        if stream.paced
        for sub in (*stream.subscribers, *stream._ahead)
    )


async def _setup(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any, **limits: Any
) -> Any:
    engine = PacedEngine()
    proxy, token = await proxy_in_front(
        engine.shape, aiohttp_server, idp_server, environ, make_proxy, limits=limits
    )
    return engine, proxy, StoppedReader(proxy, token)


async def test_a_client_that_fell_behind_gets_what_its_own_stream_answered_at_once(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """Its own stream's first read came with its headers, before the client was attached to
    it: that read was trimmed to its last event (a paced stream keeps only that), so the
    client could not join, and its response ended cleanly where it was (the cut-and-retry of
    a slow reader, again) instead of going on with 300 and 400. Then it stops reading while
    its stream waits for it, and goes away: its engine request is closed, nothing left."""
    engine, proxy, reader = await _setup(aiohttp_server, idp_server, environ, make_proxy)
    try:
        await reader.open()
        await _fell_behind(proxy, engine)
        assert await reader.read_until(_up_to_date(400)) == "done", reader.body()[-300:]
        assert reader.ids() == ["1", "2", "3", "4"]  # each once, in one response
        assert engine.requests[0] == "100_0" and len(engine.requests) == 2
        # It stops reading again, inside 500's row (its stream waits for it), and goes away:
        # that engine request ends.
        await wait_until_async(lambda: _paced_unsent(proxy) > 0, message="its stream waits")
        reader.close()
        await wait_until_async(lambda: engine.open == 1, message="its own stream closed")
        await wait_until_async(lambda: len(proxy.app[FORWARDER]._streams) == 1, message="freed")
    finally:
        reader.close()


async def test_a_client_at_its_limit_of_engine_requests_goes_on_on_its_own_stream(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """Its own stream is the same client request going on, not a new one: with the shared
    stream charged to its principal at `max_concurrent: 1`, it was refused (429), so its
    response ended cleanly where it was, and it was cut and retried again."""
    engine, proxy, reader = await _setup(
        aiohttp_server, idp_server, environ, make_proxy, max_concurrent=1, rate=1, burst=1
    )
    try:
        await reader.open()
        await _fell_behind(proxy, engine)
        assert await reader.read_until(_up_to_date(400)) == "done", reader.body()[-300:]
        assert reader.ids() == ["1", "2", "3", "4"]
    finally:
        reader.close()


async def test_a_slow_reader_past_its_ceiling_ends_at_its_next_up_to_date(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any, monkeypatch: Any
) -> None:
    """On its own stream, a response past its ceiling (`MAX_CLIENT_RESPONSE`, 1 s here) ends
    cleanly, but only once the client has its batch whole: it stopped reading inside 500's
    row, the ceiling passed, and reading again it gets the whole row and its up-to-date, then
    a clean end (else it would resume before 500, and a reader slower than the ceiling never
    got past it). Without the ceiling there, its response stayed open after 500 for as long
    as its engine stream did."""
    engine, proxy, reader = await _setup(aiohttp_server, idp_server, environ, make_proxy)
    try:
        await reader.open()
        await _fell_behind(proxy, engine)
        monkeypatch.setattr(sse, "MAX_CLIENT_RESPONSE", 1.0)  # (from its own stream on)
        monkeypatch.setattr(sse, "CEILING_GRAIN", 0.1)
        assert await reader.read_until(_up_to_date(400)) == "done", reader.body()[-300:]
        await wait_until_async(lambda: _paced_unsent(proxy) > 0, message="its stream waits")

        def overdue() -> bool:
            streams = proxy.app[FORWARDER]._streams._streams.values()
            return any(stream.paced and stream._overdue for stream in streams)

        await wait_until_async(overdue, message="past its ceiling, inside 500")
        engine.last.set()
        assert await reader.read_until(b"never sent") == "ended", reader.body()[-300:]
        assert reader.ids() == ["1", "2", "3", "4", "5"]
        assert reader.body().endswith(_up_to_date(500))
    finally:
        reader.close()


async def test_a_client_that_stops_reading_as_the_shape_rotates_gets_a_clean_end(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """It stopped reading just before the shared stream ended on a rotation: once it reads
    again it gets all it was written, then its response ends cleanly (never silence with
    the response open); its own stream's 409 is the next request's to get."""
    engine, proxy, reader = await _setup(aiohttp_server, idp_server, environ, make_proxy)
    try:
        await reader.open()
        await _fell_behind(proxy, engine)
        engine.answer = 409
        engine.end.set()  # the shared stream ends; the next answer is a 409
        await wait_until_async(lambda: engine.open == 0, message="the shared stream ended")
        assert await reader.read_until(b"no such marker") == "ended", reader.body()[-300:]
        assert reader.ids()[0] == "1" and len(engine.requests) == 2
        assert len(proxy.app[FORWARDER]._streams) == 0
    finally:
        reader.close()


@pytest.mark.parametrize("collapse", [True, False], ids=["shared", "direct"])
async def test_a_response_on_a_stream_that_never_ends_ends_at_its_ceiling(
    aiohttp_server: Any,
    idp_server: Any,
    environ: Any,
    make_proxy: Any,
    monkeypatch: Any,
    collapse: bool,
) -> None:
    """An engine stream that stays open sending only keep-alive comments (the engine ends
    its own after its SSE timeout; one that never does, or any wait in the fan-out that
    missed its wake-up) held its clients' responses open with no change for as long as it
    lasted (a silent one breaks after `first_byte_timeout`): a client's response on a shared
    stream now ends cleanly at its ceiling (0.3 s here, 300 s in the proxy) and the client
    reconnects. Its last reader gone, the engine request is closed too. The same for a
    stream passed straight through (`collapse: false`), which had no ceiling at all."""
    monkeypatch.setattr(sse, "MAX_CLIENT_RESPONSE", 0.3)
    monkeypatch.setattr(sse, "CEILING_GRAIN", 0.1)
    engine_open: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=sse_headers(request.query["offset"]))
        await resp.prepare(request)
        engine_open.append(1)
        try:
            await resp.write(LOG[2][1] + LOG[2][2])  # 400, then only keep-alives, for ever
            while True:
                await asyncio.sleep(0.2)
                await resp.write(b": keep-alive\n\n")
        finally:
            engine_open.pop()

    proxy, token = await proxy_in_front(
        endless, aiohttp_server, idp_server, environ, make_proxy, collapse=collapse
    )
    resp = await proxy.client.get(
        f"{SHAPE}&offset=300_0&live=true&live_sse=true&cursor=",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )
    assert resp.status == 200
    body = await asyncio.wait_for(resp.read(), 10)  # (a clean end: no error)
    assert body.startswith(LOG[2][1] + LOG[2][2]) and body.endswith(b": keep-alive\n\n")
    await wait_until_async(lambda: not engine_open, message="the engine stream closed")


async def test_a_client_behind_when_access_is_revoked_gets_no_stream_of_its_own(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """A reload (or an issuer's key dropped) revokes access while the client is off the
    shared stream, taking what it was written (attack 23:19, HIGH): once it had, it went on
    on a stream of its own opened from the request authorised under the old rule, and got
    the changes written after the revocation (here 300 and 400, only that stream's), for as
    long as that stream lasted. Now its response ends cleanly where it is (its reconnect is
    decided under the new config), and no engine stream is opened for it."""
    engine, proxy, reader = await _setup(aiohttp_server, idp_server, environ, make_proxy)
    try:
        await reader.open()
        await _fell_behind(proxy, engine)
        proxy.app[FORWARDER].end_streams()  # (what a reload that revokes access does)
        assert await reader.read_until(_up_to_date(400)) == "ended", reader.body()[-300:]
        assert "3" not in reader.ids() and "4" not in reader.ids(), reader.ids()
        assert engine.requests == ["100_0"]  # no stream of its own
    finally:
        reader.close()


async def test_a_client_behind_when_its_token_expires_gets_no_stream_of_its_own(
    aiohttp_server: Any, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """Its token expires while the client is off the shared stream, taking what it was
    written (its expiry timer went with its place on that stream): once it had, it went on,
    on a stream of its own whose first events (here 300 and 400, only that stream's: changes
    after its `exp`) were written to it as it was attached, before the expiry registered
    there (already past) could end it. Now its response ends cleanly where it is (its
    reconnect gets the 401), and no engine stream is opened for it. The token is one its
    issuer's leeway still accepts, so the response's deadline is its `MIN_CLIENT_STREAM`:
    whether it fell behind before that or not, nothing after `exp` may reach it (no bound on
    how long anything takes; the events are waited for)."""
    engine = PacedEngine()
    app = web.Application()
    app.router.add_get("/v1/shape", engine.shape)
    server = await aiohttp_server(app, access_log=None)
    config = base_config(str(server.make_url("")), str(idp_server.make_url("/jwks.json")))
    config["issuers"][0]["leeway"] = 120
    proxy = await make_proxy(build_config(config, environ))
    expired = int(time.time()) - 60  # (within the leeway, however long the test takes)
    reader = StoppedReader(proxy, proxy.tokens.make(exp=expired, iat=expired - 600))
    try:
        opened = time.time()
        await reader.open()
        await _fell_behind(proxy, engine)
        forwarder = proxy.app[FORWARDER]
        # (its response's deadline passes meanwhile: it is not reading)
        await wait_until_async(
            lambda: time.time() > opened + sse.MIN_CLIENT_STREAM + 0.5,
            timeout=60,
            message="the response's deadline passed",
        )
        assert await reader.read_until(_up_to_date(400)) == "ended", reader.body()[-300:]
        assert "3" not in reader.ids() and "4" not in reader.ids(), reader.ids()
        assert engine.requests == ["100_0"]  # no stream of its own
        assert forwarder.shared_streams <= 1
    finally:
        reader.close()
