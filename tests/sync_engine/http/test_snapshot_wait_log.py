"""A request that gives up on a new shape's snapshot (503 "Snapshot is taking too long")
logs where the snapshot is: queued, or what its batch awaits, so that a snapshot that never
ends says where it stopped (chaos seed 201: a shape's snapshot stopped half-way by a
Postgres crash, neither finished nor failed, its client answered 503 for minutes, and no
line said why).

Real path: the engine in process, a real Postgres whose table lock holds the snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.http import shape as shape_module
from tests.sync_engine.engine_harness import SETTINGS, Engine


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", snapshot_quiet=30.0
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_a_request_giving_up_on_a_snapshot_says_where_it_is(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1')")
    await engine.sync(table="items")  # (the table's description is known: no lookup waits)
    monkeypatch.setattr(shape_module, "SNAPSHOT_WAIT", 1.0)
    with psycopg.connect(engine.db_url) as locker, caplog.at_level(logging.INFO):
        locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        status, _, body = await engine.get(table="items", offset="-1", where="id > 0")
        assert status == 503, body
        locker.rollback()
    lines = [r.getMessage() for r in caplog.records if "gave up on chunk" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "its batch awaits run_batch (batch.py:" in lines[0], lines[0]
