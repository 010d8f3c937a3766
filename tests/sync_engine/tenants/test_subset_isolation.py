"""One source's subset queries cannot stall another source, on real Postgres.

Subset queries ran in the event loop's default executor, min(32, CPUs + 4) threads shared by
the whole engine: the replicator's fsync of shape logs, snapshot chunk writes, secret checks.
A few subset queries of one source waiting on a lock (or just slow) held every thread, and
replication of every other source waited behind them. They now run in an executor of their
source's own (`Source.subset_executor`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from sync_engine.errors import ServiceUnavailable
from sync_engine.snapshot import subset
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import MultiEngine, make_items

#: Seconds a write to the other source may take to reach its live follower (it takes well
#: under one; the old code never delivered it while the lock was held).
DELIVERED_WITHIN = 20.0


async def _waiting_on_locks(url: str) -> int:
    """Lock waits in the database at `url` (async: the test's event loop is the engine's,
    and a thread of the default executor may be unavailable on the old code)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_subset_queries_waiting_on_a_lock_do_not_stall_another_sources_replication(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """Source A's table is locked ACCESS EXCLUSIVE by another connection, and more subset
    requests for A wait on it than the default executor has threads. A write to source B
    reaches a live follower of B promptly (fsync on: the replicator's flush needs a thread),
    and a new shape of B gets its snapshot. On the old code B's follower got nothing until
    the lock was released."""
    url_a, url_b = make_db(), make_db()
    make_items(url_a, ["a", "b", "c"])
    make_items(url_b, ["x"])
    engine = await engines(fsync=True).start()
    a = await engine.add("locked", url_a)
    b = await engine.add("other", url_b)
    sid_a, secret_a = a["source_id"], a["secret"]
    sid_b, secret_b = b["source_id"], b["secret"]
    await engine.wait_state(sid_a, "active")
    await engine.wait_state(sid_b, "active")
    await engine.sync(sid_a, secret_a, table="items")  # A's shape exists: only subsets wait
    rows_b, handle_b, offset_b = await engine.sync(sid_b, secret_b, table="items")
    assert set(rows_b) == {'"public"."items"/"1"'}, rows_b

    default_threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
    requests = default_threads + 2
    pool_size = engine.manager.running[sid_a].snapshot_pool.max_size
    locker = await psycopg.AsyncConnection.connect(url_a)
    writer = await psycopg.AsyncConnection.connect(url_b, autocommit=True)
    subsets: list[asyncio.Task[Any]] = []
    try:
        await locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        subsets = [
            asyncio.create_task(
                engine.get(sid_a, secret_a, table="items", offset="-1", subset__where=f"id > {i}")
            )
            for i in range(requests)
        ]
        # Every pooled connection of A waits for the lock (on the old code that is every
        # thread of the default executor, where it has no more threads than A's pool).
        waiting = min(default_threads, pool_size)

        async def all_waiting() -> bool:
            return await _waiting_on_locks(url_a) >= waiting

        await wait_until_async(
            all_waiting,
            timeout=30,
            message=f"{waiting} subset queries of A waiting on the lock",
        )
        assert not any(t.done() for t in subsets), [t.result() for t in subsets if t.done()]

        # A live follower of B, parked, then a write to B.
        follower = asyncio.create_task(
            engine.follow(sid_b, secret_b, handle_b, offset_b, rows_b, table="items")
        )
        await engine.until_parked(sid_b)
        await writer.execute("INSERT INTO items VALUES (2, 'y')")

        offset = offset_b

        async def delivered() -> bool:
            nonlocal follower, offset
            if not follower.done():
                await asyncio.wait({follower}, timeout=0.5)
                if not follower.done():
                    return False
            offset = follower.result()
            if '"public"."items"/"2"' in rows_b:
                return True
            follower = asyncio.create_task(
                engine.follow(sid_b, secret_b, handle_b, offset, rows_b, table="items")
            )
            return False

        try:
            await wait_until_async(
                delivered,
                timeout=DELIVERED_WITHIN,
                message="B's write at B's live follower while A's subset queries wait",
            )
        finally:
            if not follower.done():
                follower.cancel()
                await asyncio.wait({follower}, timeout=10)
        assert rows_b['"public"."items"/"2"']["name"] == "y", rows_b

        # A new shape of B: its snapshot (chunk writes in threads) is served too.
        fresh, _, _ = await asyncio.wait_for(
            engine.sync(sid_b, secret_b, table="items", where="id >= 2"), DELIVERED_WITHIN
        )
        assert set(fresh) == {'"public"."items"/"2"'}, fresh
        # A's subset requests still wait: the lock is what holds them.
        assert not any(t.done() for t in subsets), [t.result() for t in subsets if t.done()]
    finally:
        await locker.rollback()
        await locker.close()
        await writer.close()
        if subsets:
            await asyncio.wait(subsets, timeout=60)

    # Once the lock is gone, A's subset requests are all answered.
    for task in subsets:
        status, _, body = task.result()
        assert status == 200, body


async def test_a_subset_query_not_started_when_its_source_stops_is_a_503() -> None:
    """`Source.stop` shuts the subset executor down without waiting and drops the queries
    not started yet: their requests get the stopping 503 (not a 500 from the cancelled
    future), and so does a subset asked for after the stop."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="subset-test")
    source = SimpleNamespace(subset_executor=executor, snapshot_pool=None)
    release = threading.Event()
    spool = subset.Spool(Path("/nonexistent"))  # (never written: no query starts)
    busy = executor.submit(release.wait, 30)  # the executor's one thread, taken
    try:
        queued = asyncio.create_task(
            subset._bounded_run(source, None, None, spool, 0)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0)  # (it is queued behind `busy`)
        assert not queued.done()
        executor.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(ServiceUnavailable, match="stopping"):
            await asyncio.wait_for(queued, 10)
        with pytest.raises(ServiceUnavailable, match="stopping"):
            await subset._bounded_run(source, None, None, spool, 0)  # type: ignore[arg-type]
    finally:
        release.set()
        busy.result(timeout=10)
