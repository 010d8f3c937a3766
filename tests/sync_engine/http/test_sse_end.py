"""An SSE stream ends cleanly: no keep-alive at (or just before) its end.

The stream waited `min(remaining, sse_keepalive)` at a time and wrote a keep-alive after any
silence that did not reach its deadline: with a keep-alive due shortly before the end (a
stream of 2 s with keep-alives every 1.6 s; in production, a change 39 s into a 60 s stream
puts the next one 21 s later, just before its end) the client read `: keep-alive`, "still
open", then the end. Now a silence that reaches the end (or comes within
`live.KEEPALIVE_MARGIN`, capped at half the interval, of it) ends the stream with nothing
written. The keep-alives of a longer silence: test_live_modes.py.

Real path: the engine's server, a client reading the event stream to its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from tests.sync_engine.engine_harness import SETTINGS, Engine


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """Streams of 2 s, a keep-alive due after 1.6 s of silence."""
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        sse_timeout=2.0,
        sse_keepalive=1.6,
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_a_stream_ends_without_a_keepalive_just_before_its_end(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1')")
    _, handle, offset = await engine.sync(table="items")
    resp = await engine.client.get(
        "/v1/shape",
        params={
            "table": "items",
            "handle": handle,
            "offset": offset,
            "live": "true",
            "live_sse": "true",
        },
        headers={"accept": "text/event-stream"},
    )
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/event-stream"
    body = await resp.content.read()  # (to the stream's end: it ends by itself)
    assert body == b"", body  # a silent stream at the tip: nothing, then its end
