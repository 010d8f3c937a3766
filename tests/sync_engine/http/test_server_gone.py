"""A request held by the engine is let go when its client closes its connection
(`sync_engine/http/live.py` `LiveConnection`, `client_gone`), whatever it waits for: here a
request whose offset is beyond anything the engine has seen (from another engine, a stale
cache), which waits `out_of_bounds_wait` for the stream to catch up before its 400. It waited
the whole of it after its client had gone: a reconnect storm with such offsets multiplied the
held requests, each for its 10 s.

Real path: the engine's app in-process on a real server (its `LiveConnection`) that does not
cancel handlers, as `web.run_app` serves it (aiohttp's test server cancels a handler whose
client has gone, which hid this), real Postgres, raw sockets for the clients that go away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

#: Long enough that a request held for all of it cannot pass for one let go.
OUT_OF_BOUNDS_WAIT = 40.0


class _ServerAsRun(TestServer):
    """The test server with `web.run_app`'s `handler_cancellation=False`."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        out_of_bounds_wait=OUT_OF_BOUNDS_WAIT,
    )
    server = _ServerAsRun(build_app(settings))
    client = await aiohttp_client(server)
    assert server.runner is not None and server.runner.server is not None
    assert not server.runner.server.handler_cancellation
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


@pytest.mark.parametrize("live", [False, True], ids=["catch-up", "live"])
async def test_a_request_beyond_the_log_is_let_go_when_its_client_leaves(
    engine: Engine, live: bool
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1')")
    _, handle, _ = await engine.sync(table="items")
    assert engine.parked() == 0
    # An offset within the WAL that this engine's stream has not passed (one far past the
    # WAL's end is a 400 at once, 5fa2311b): it is held, waiting for the stream.
    engine.sql("SELECT pg_switch_wal()")
    end = engine.sql("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")[0][0]
    target = f"/v1/shape?table=items&handle={handle}&offset={end}_0"
    if live:
        target += "&live=true"
    server = engine.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await engine.until_parked(1)
    finally:
        writer.close()
    # let go within moments (it was held for all of OUT_OF_BOUNDS_WAIT)
    await wait_until_async(lambda: engine.parked() == 0, timeout=15, message="the request let go")
    assert await reader.read() == b""
    # the engine goes on serving the shape
    rows, handle2, _ = await engine.sync(table="items")
    assert handle2 == handle and sorted(rows) == ['"public"."items"/"1"']
