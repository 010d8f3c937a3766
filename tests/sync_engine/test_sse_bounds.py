"""An SSE request at an offset past anything the engine has seen is refused as a long-poll's
is (waits `out_of_bounds_wait`, then a 400 JSON), not answered with a stream placed there.

It was a 200 event stream naming `electric-offset: 99999999999_0` (and an ETag with it), then
up-to-dates: a client (or a forged offset) got a stream it can never be placed on, and the
proxy's SSE fan-out would learn a wrong position. Found by the proxy's transparency fuzz.
"""

from __future__ import annotations

import asyncio

from tests.sync_engine.engine_harness import Engine


async def test_an_sse_request_past_the_log_is_a_400_as_a_long_poll(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 'a')")
    status, h, _ = await engine.get(table="items", offset="-1")
    assert status == 200
    past = {"table": "items", "handle": h["electric-handle"], "offset": "99999999999_0"}
    answers = await asyncio.gather(  # (each waits `out_of_bounds_wait`: together)
        engine.get(live="true", **past), engine.get(live="true", live_sse="true", **past)
    )
    for sse, (status, headers, body) in zip((False, True), answers, strict=True):
        assert status == 400, (sse, status, headers, body)
        assert headers["content-type"].startswith("application/json")
        assert body["errors"] == {"offset": ["out of bounds for this shape"]}, body
