"""A clean stop whose wait for a request in progress times out in the same turn of the event
loop as that request ends logs no "Unhandled exception" (chaos, seed 3402: two
`InvalidStateError` records in engine.log after a SIGTERM while big snapshot chunks were sent).

aiohttp's `RequestHandler.shutdown` waits for the request in progress on a future
(`_handler_waiter`), at most the runner's `shutdown_timeout` (the engine's: 2 s). When that
timeout fires it cancels the future at once, but clears it only when the stop's task runs
again; a request whose last step runs first (its wake-up was due in the same turn: a loaded
machine's turns are long) sets the cancelled future's result in `_handle_request`'s `finally`:
`InvalidStateError` escapes the request's task, aiohttp logs it as unhandled and force-closes
the connection. The answer was already written, so no client saw anything.

Real path: the engine's connection class (`LiveConnection`) under aiohttp's real runner and
server, a real socket; the event loop is held (a blocking sleep) so that the request's wake-up
and the stop's timeout are due in one turn, the request's first, as on a loaded machine.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiohttp import web

from sync_engine.http.live import LiveConnection
from sync_engine.http.parser_refusals import RefusingApplication

#: The stop's wait for requests in progress (`shutdown_timeout`; the engine's is 2 s).
STOP_WAIT = 0.2


async def test_a_request_ending_as_the_stop_gives_up_waiting_is_not_an_unhandled_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release: asyncio.Future[None] = loop.create_future()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await release
        return web.Response(text="done")

    app = RefusingApplication(LiveConnection)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, shutdown_timeout=STOP_WAIT, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(started.wait(), 10)
        # The request's wake-up falls due before the stop's deadline (armed within moments of
        # `cleanup` starting), and the loop is held past both: they run in one turn, in that
        # order (timers run by due time), as when a loaded machine's turn outlasts the gap.
        loop.call_later(STOP_WAIT / 4, release.set_result, None)
        loop.call_later(STOP_WAIT / 8, time.sleep, STOP_WAIT * 2)
        with caplog.at_level(logging.DEBUG, logger="aiohttp"):
            await runner.cleanup()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"done")
    unhandled = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not unhandled, [(r.getMessage(), r.exc_info) for r in unhandled]
