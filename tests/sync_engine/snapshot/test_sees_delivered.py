"""A new shape's snapshot sees every transaction the replication stream already delivered.

Postgres sends a commit to the stream once its WAL record is written, a moment before the
committing backend leaves the proc array. A snapshot taken in that moment misses the
transaction, whose changes went by before the shape existed: they were in neither the
snapshot nor the log. After `TRUNCATE; INSERT ...` in one transaction (TRUNCATE is not
MVCC-safe) such a snapshot was empty, and a client that resynced on must-refetch kept only
the later updates (seen once through the proxy under load, tests/node/resync.test.mjs).

The moment is made to last here: a transaction is held open while its xid is put among the
ones the stream delivered, as if Postgres had sent its commit and not yet shown it.
"""

from __future__ import annotations

import asyncio

import psycopg

from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine


async def test_a_snapshot_waits_for_a_delivered_commit_to_be_visible(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items SELECT g, 'old ' || g FROM generate_series(1, 3) g")
    await engine.sync(table="items")  # publishes the table
    source = engine.source
    with psycopg.connect(engine.db_url) as held:
        held.execute("INSERT INTO items VALUES (100, 'new')")
        row = held.execute("SELECT txid_current()").fetchone()
        assert row is not None
        source.replicator.recent_xids.append(int(row[0]) % (1 << 32))
        answer = asyncio.ensure_future(engine.get(table="items", where="id > 0", offset="-1"))
        # The engine notices its snapshot cannot see the transaction and takes it again
        # (before the fix, it answered at once with the snapshot that missed it).
        await wait_until_async(
            lambda: answer.done() or source.snapshots.batches_run_again > 0,
            timeout=20,
            message="the batch to be run again",
        )
        held.commit()
    status, _, body = await asyncio.wait_for(answer, 30)
    assert status == 200, body
    titles = sorted(m["value"]["title"] for m in body if "key" in m)
    assert titles == ["new", "old 1", "old 2", "old 3"]
