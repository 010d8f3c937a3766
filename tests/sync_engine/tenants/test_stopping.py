"""Stopping a source (engine stop, pause, delete) finishes, whatever its connections are
doing when it comes, on real Postgres."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import MultiEngine, make_items, sql

#: Seconds a stop may take here: its own waits are a few seconds at most.
STOP_WITHIN = 20.0


def _terminate_backends(url: str) -> None:
    """Postgres ends every connection to the database (as `DROP DATABASE ... WITH (FORCE)`
    or an administrator does): the replication stream, the catalog and snapshot ones."""
    sql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
             " WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip


async def test_a_source_stopped_as_its_lag_query_returns_stops(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stop of a source whose replication lag query (`ManagedSource._watch_lag`) comes
    back, after Postgres terminated its connections, in the very loop pass in which the stop
    cancels the source's tasks. `asyncio.wait_for` (Python 3.11) returned the query's
    outcome and dropped the cancellation; the watcher went on polling every second and the
    stop waited for it for ever: a clean-clone CI hung 300 s in this file's neighbour's
    teardown (the test database dropped under the engine, then the engine stopped)."""
    url = make_db()
    make_items(url, ["a"])
    engine = await engines().start()
    src = await engine.add("lagged", url)
    sid = src["source_id"]
    await engine.wait_state(sid, "active")
    source = engine.manager.running[sid]
    stopping: list[asyncio.Task[None]] = []
    lag_query = source.refresh_lag

    async def lag_query_then_stop() -> int | None:
        await asyncio.to_thread(_terminate_backends, url)
        try:
            return await lag_query()
        finally:
            # Its first step runs before the watcher hears that the query is done.
            if not stopping:
                stopping.append(asyncio.ensure_future(source.stop()))

    monkeypatch.setattr(source, "refresh_lag", lag_query_then_stop)
    await wait_until_async(lambda: stopping, timeout=30, message="the lag query")
    done, _ = await asyncio.wait(stopping, timeout=STOP_WITHIN)
    if not done:  # let the fixture's engine stop finish: cancel the watcher once more
        for task in source._tasks:
            task.cancel()
        await asyncio.wait(stopping, timeout=STOP_WITHIN)
    assert done, f"the source did not stop within {STOP_WITHIN:g} s"
    stopping[0].result()


@pytest.mark.parametrize("how", ["pause", "delete"])
@pytest.mark.usefixtures("quick_cutoff")
async def test_a_source_paused_or_deleted_while_its_subset_queries_wait_on_a_lock_stops(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str], how: str
) -> None:
    """Subset queries each hold a thread while they wait in Postgres, here for a lock (they
    ran in the event loop's default executor, CPUs + 4 threads, until 1031361 gave each
    source one of its own). Pausing or deleting the source cuts their requests off, but the
    queries go on; its stop closed the subset pool (and a deletion removed the shape logs)
    in that same executor, behind them, and waited until the lock was released: both now
    run in a thread of their own. And the queries themselves are abandoned (socket shut,
    cancelled in Postgres) once their requests are cut off."""
    url = make_db()
    make_items(url, ["a", "b", "c"])
    engine = await engines().start()
    src = await engine.add("locked", url)
    sid, secret = src["source_id"], src["secret"]
    await engine.wait_state(sid, "active")
    await engine.sync(sid, secret, table="items")
    threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
    locker = psycopg.connect(url)
    subsets: list[asyncio.Task[Any]] = []
    try:
        locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        subsets = [
            asyncio.create_task(
                engine.get(sid, secret, table="items", offset="-1", subset__where=f"id > {i}")
            )
            for i in range(threads)
        ]
        # every pooled connection waits for the lock; the other threads for a connection
        pooled = min(threads, engine.manager.running[sid].snapshot_pool.max_size)
        await wait_until_async(
            lambda: _waiting_on_locks(url) >= pooled, timeout=30, message="queries waiting"
        )
        if how == "pause":
            stopping = asyncio.create_task(engine.api("POST", f"/api/sources/{sid}/pause"))
        else:
            stopping = asyncio.create_task(engine.api("DELETE", f"/api/sources/{sid}"))
        done, _ = await asyncio.wait({stopping}, timeout=STOP_WITHIN + 10)
        assert done, f"the {how} did not finish within {STOP_WITHIN + 10:g} s"
        status, body = stopping.result()
        assert status == 200, body
        assert body["paused" if how == "pause" else "deleted"] is True, body
        # Their queries are abandoned in Postgres too, the lock still held: they went on
        # waiting there (until --snapshot-timeout), each holding a thread Python's exit
        # waits for (test_subset_sigterm).
        await wait_until_async(
            lambda: _waiting_on_locks(url) == 0,
            timeout=30,
            message="the stopped source's subset queries ended in Postgres",
        )
    finally:
        locker.rollback()
        locker.close()
        if subsets:
            await asyncio.wait(subsets, timeout=60)


def _waiting_on_locks(url: str) -> int:
    rows = sql(url, "SELECT count(*) FROM pg_locks WHERE NOT granted")
    return int(rows[0][0])
