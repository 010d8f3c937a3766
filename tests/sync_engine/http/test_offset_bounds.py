"""An offset past what the engine has seen waits (`out_of_bounds_wait`) for the stream to
reach it: another engine of the same database may have served it first. One past the WAL's
end as Postgres says it after the request arrived can never come: it is the 400 at once. It
waited the whole `out_of_bounds_wait` (10 s by default, 600 s here) first (attack, LOW)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from tests.sync_engine.engine_harness import SETTINGS, Engine, stopped_within

#: Seconds a request may take here: far beyond an answer, far below the wait.
ANSWER_WITHIN = 30.0


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", out_of_bounds_wait=600.0
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")
    await stopped_within(client.close(), "the in-process engine")


@pytest.mark.parametrize("live", [False, True], ids=["catch-up", "live"])
async def test_an_offset_past_the_wal_is_400_at_once(engine: Engine, live: bool) -> None:
    engine.sql("CREATE TABLE ob (id int PRIMARY KEY)")
    engine.sql("INSERT INTO ob VALUES (1)")
    _, handle, _ = await engine.sync(table="ob")
    end = engine.sql("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")[0][0]
    for tx in (10**18, end + 10**9):
        params = {"table": "ob", "offset": f"{tx}_0", "handle": handle}
        if live:
            params["live"] = "true"
        async with asyncio.timeout(ANSWER_WITHIN):
            status, _, body = await engine.get(**params)
        assert status == 400, body
        assert body["errors"] == {"offset": ["out of bounds for this shape"]}


async def test_an_offset_within_the_wal_waits_for_the_stream(engine: Engine) -> None:
    """(what another engine of the same database may have served: answered once this one's
    stream has passed it)"""
    engine.sql("CREATE TABLE ob (id int PRIMARY KEY)")
    engine.sql("INSERT INTO ob VALUES (1)")
    _, handle, _ = await engine.sync(table="ob")
    engine.sql("SELECT pg_switch_wal()")  # (the stream has seen nothing past this yet)
    end = engine.sql("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")[0][0]
    ahead = asyncio.ensure_future(engine.get(table="ob", offset=f"{end}_0", handle=handle))
    async with asyncio.timeout(ANSWER_WITHIN):
        await engine.until_parked(1)  # (it waits: nothing else comes)
    engine.sql("INSERT INTO ob VALUES (2)")
    async with asyncio.timeout(ANSWER_WITHIN):
        status, _, _ = await ahead
    # (not a 400: the stream passed it; no entry of this log is there, so a 409 here, where
    # another engine's real offset is served)
    assert status == 409
