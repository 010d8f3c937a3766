"""An SSE client that goes away while its stream waits to write is no error in the log.

A client gone while the stream waited for room to write (it had stopped reading) makes
aiohttp raise a plain `ConnectionError("Connection lost")` into the write
(aiohttp/base_protocol.py, `connection_lost` with an error while writing is paused), a
sibling of the `ConnectionResetError` the stream caught: it was logged at ERROR with a
traceback per client ("SSE stream of shape ... failed": 66 in one of attack's probes), which
any client can cause and which hides real failures. It is the client going away: DEBUG.

The stream's write is made to fail as aiohttp fails it (the moment a reset lands while a
write is paused is a race a test cannot hit every time); the request is real, through the
in-process engine, real Postgres behind it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sync_engine.http import live
from tests.sync_engine.engine_harness import Engine


async def test_an_sse_client_gone_while_its_stream_waits_is_no_error(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 'a')")
    _, handle, offset = await engine.sync(table="items")

    async def lost(*args: Any) -> None:
        raise ConnectionError("Connection lost")  # (aiohttp's, from a paused write)

    monkeypatch.setattr(live, "_stream", lost)
    status, _, _ = await engine.get(
        table="items", handle=handle, offset=offset, live="true", live_sse="true"
    )
    assert status == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
