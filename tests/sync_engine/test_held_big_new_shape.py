"""A new shape whose snapshot was taken before a big transaction committed, but whose horizon
the engine learnt only after the stream had delivered it (its batch was still running), gets
its later changes, though none of the big transaction's rows is its own.

Chaos (`t_heldbig.py`, `t_storm.py` seed 6, 2026-12-06): the big transaction was parked, then
held and written a part at a time once the horizon was known; it wrote nothing for the shape
(no row matched), which was taken for a failed write and retried every 5 s for good, every
later transaction of the shape held behind it: its clients were told "up to date" with rows
Postgres had deleted. Through the real path: the engine in-process, one snapshot connection,
the batch held open by a lock on another shape's table while the big INSERT commits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

BIG = 6000  # (past assembler.BIG_TRANSACTION: held and written a part at a time)


async def test_a_new_shape_gets_its_changes_after_a_big_transaction_with_none_of_its_rows(
    aiohttp_client: Any, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sync_engine.replication.replicator")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE hb_items (id int PRIMARY KEY, title text)")
        conn.execute("CREATE TABLE hb_block1 (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE hb_block2 (id int PRIMARY KEY)")
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", max_concurrent_snapshots=1
    )
    client = await aiohttp_client(build_app(settings))
    source = client.app[SOURCES]["default"]
    await source.ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    where = "title LIKE 'zz%'"
    # Prepared as the engine would (it alters a table for its first shape: that would wait
    # for the locks below on the catalog connection, before any snapshot).
    engine.sql(
        "ALTER TABLE hb_block1 REPLICA IDENTITY FULL; ALTER TABLE hb_block2 REPLICA IDENTITY FULL;"
        " ALTER TABLE hb_items REPLICA IDENTITY FULL; ALTER PUBLICATION shapegate_pub_default"
        " ADD TABLE hb_items, hb_block1, hb_block2"
    )

    locks = [await psycopg.AsyncConnection.connect(db_url) for _ in range(2)]
    requests: list[asyncio.Task[Any]] = []
    try:
        for lock, table in zip(locks, ("hb_block1", "hb_block2"), strict=True):
            await lock.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

        async def waiting_on(table: str) -> bool:
            rows = engine.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE %s",
                (f"%{table}%",),
            )
            return bool(rows[0][0])

        # The only snapshot connection busy (a batch waiting for hb_block1's lock): the
        # target shape and a shape of hb_block2 queue, and go together in the next batch.
        requests.append(asyncio.ensure_future(engine.get(table="hb_block1", offset="-1")))
        await wait_until_async(lambda: waiting_on("hb_block1"), message="batch 1 waiting")
        requests.append(
            asyncio.ensure_future(engine.get(table="hb_items", offset="-1", where=where))
        )
        requests.append(asyncio.ensure_future(engine.get(table="hb_block2", offset="-1")))
        await wait_until_async(lambda: len(source.registry.by_handle) == 3, message="3 shapes")
        await locks[0].commit()
        # Batch 2 took its snapshot and waits for hb_block2's lock: the engine has not read
        # the horizon (Postgres sends the results when the batch goes on).
        await wait_until_async(lambda: waiting_on("hb_block2"), message="batch 2 waiting")
        seen = source.replicator.changes_seen
        engine.sql("INSERT INTO hb_items SELECT g, 'b' || g FROM generate_series(1, %s) g", (BIG,))
        await wait_until_async(
            lambda: source.replicator.changes_seen >= seen + BIG, message="big INSERT read"
        )
        await locks[1].commit()
        await asyncio.gather(*requests)

        engine.sql("INSERT INTO hb_items VALUES (0, 'zz0'), (-1, 'zz1')")
        engine.sql("DELETE FROM hb_items WHERE id = -1")
        engine.sql("INSERT INTO hb_items VALUES (-9, 'zz9')")  # (the marker: last)
        target = next(s for s in source.registry.by_handle.values() if s.where is not None)
        # (the race this is about: the big one held for the target, written apart)
        assert any(
            f"writing {BIG} changes for shape {target.handle}" in r.getMessage()
            for r in caplog.records
        )
        await wait_until_async(lambda: not target.held, timeout=5, message="held big settled")
        rows, handle, offset = await engine.sync(table="hb_items", where=where)
        if "-9" not in {r["id"] for r in rows.values()}:
            await engine.follow_live(rows, handle, offset, "-9", table="hb_items", where=where)
        assert {r["id"]: r["title"] for r in rows.values()} == {"0": "zz0", "-9": "zz9"}
    finally:
        for task in requests:
            task.cancel()
        for lock in locks:
            await lock.close()
