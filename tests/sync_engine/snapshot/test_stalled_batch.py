"""A snapshot batch stuck on the engine's side is failed, never waited on forever.

Chaos seed 201 (bugs-for-faults 08:05): a new shape's whole-table snapshot, stopped half-way
by a Postgres crash during a disk-full window, was neither finished nor failed; its client
got 503 "Snapshot is taking too long" for minutes. The await it hung on was not found, so
the scheduler has a safety net (`scheduler.STALL_AFTER`): a batch that makes no progress
while Postgres says its backend is gone, idle or blocked sending to the engine is failed.

Real path: the engine in process, a real Postgres; the stall is injected in the engine (a
chunk write that never returns), as an await no answer of Postgres can end. A snapshot held
by a table lock (its backend running, waiting) is not failed by the net.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.http import shape as shape_module
from sync_engine.snapshot import batch as batch_module
from sync_engine.snapshot import scheduler as scheduler_module
from tests.sync_engine.engine_harness import SETTINGS, Engine


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        snapshot_quiet=30.0,
        chunk_bytes=4096,
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


@pytest.fixture
def quick_net(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "STALL_AFTER", 1.0)
    monkeypatch.setattr(scheduler_module, "ABANDON_CHECK", 0.3)
    monkeypatch.setattr(shape_module, "SNAPSHOT_WAIT", 5.0)


def _items(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items SELECT g, repeat('t', 40) || g FROM generate_series(1, 2000) g")


async def test_a_batch_stuck_in_the_engine_is_failed_and_its_shape_retired(
    engine: Engine,
    quick_net: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _items(engine)
    await engine.sync(table="items", where="id < 0")  # (published, described: no lookup)
    real_write = batch_module._write
    never = asyncio.Event()

    async def stuck_write(job: Any, index: int, data: bytes, fsync: bool) -> None:
        if index >= 1:  # chunk 0 is served, then the engine hangs (as on a dead await)
            await never.wait()
        await real_write(job, index, data, fsync)

    monkeypatch.setattr(batch_module, "_write", stuck_write)
    with caplog.at_level(logging.INFO):
        status, h, body = await engine.get(table="items", where="id > 0", offset="-1")
        assert status == 200, body
        handle, offset = h["electric-handle"], h["electric-offset"]
        answers = []
        for _ in range(6):  # (old code: 503 "Snapshot is taking too long" every time)
            status, _, body = await engine.get(
                table="items", where="id > 0", offset=offset, handle=handle
            )
            answers.append((status, body))
            if status == 409:
                break
        assert answers[-1][0] == 409, answers
        assert all("taking too long" not in str(b) for _, b in answers), answers
    lines = [r.getMessage() for r in caplog.records if "no progress" in r.getMessage()]
    assert lines and "waiting for the engine" in lines[0], lines
    monkeypatch.setattr(batch_module, "_write", real_write)
    rows, _, _ = await engine.sync(table="items", where="id > 0")
    assert len(rows) == 2000


async def test_a_snapshot_held_by_a_lock_is_not_failed_by_the_net(
    engine: Engine, quick_net: None, caplog: pytest.LogCaptureFixture
) -> None:
    _items(engine)
    await engine.sync(table="items", where="id < 0")
    with psycopg.connect(engine.db_url) as locker, caplog.at_level(logging.INFO):
        locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        first = asyncio.ensure_future(engine.get(table="items", where="id > 0", offset="-1"))
        await asyncio.sleep(3.5)  # (the net looks several times, its backend waits on the lock)
        assert not first.done()
        locker.rollback()
        status, _, body = await first
        assert status == 200, body
    assert not [r for r in caplog.records if "no progress" in r.getMessage()]
    rows, _, _ = await engine.sync(table="items", where="id > 0")
    assert len(rows) == 2000
