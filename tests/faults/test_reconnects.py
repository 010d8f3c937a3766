"""New shapes across a lost replication stream or a Postgres restart (chaos's findings).

- A shape made just before the stream is lost: the slot sends again from its confirmed
  position (confirmed with a status update, every 10 s), older than the shape's snapshot;
  what the snapshot holds must not be appended again. It was, once the shape had seen a
  transaction past its snapshot with no entry for it (the `past_xmax` shortcut).
- The first new shape of a table after an engine restart, right after a Postgres restart:
  the catalog connection is dead, and publishing the table failed as a 400 (the client's
  stream stops for good) instead of taking a new connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async


@pytest.mark.timeout(120)
async def test_a_replay_after_a_lost_stream_is_not_appended_twice(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    await asyncio.to_thread(engine.start)
    everything = Follower(engine.url, increments=False)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, [everything], stop)
            cluster.query("INSERT INTO items VALUES (100, 70)")  # T1
            await wait_until_async(lambda: '"public"."items"/"100"' in everything.rows)
            late = Follower(engine.url, "v > 50", increments=False)
            tasks += await follow_all(session, [late], stop)  # its snapshot holds T1
            assert '"public"."items"/"100"' in late.rows
            cluster.query("UPDATE items SET v = 2 WHERE id = 1")  # T2: past it, not in it
            await wait_until_async(lambda: everything.rows['"public"."items"/"1"']["v"] == "2")
            cluster.query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE active_pid IS NOT NULL"
            )
            cluster.query("UPDATE items SET v = 3 WHERE id = 2")
            await until_equal(
                [everything, late],
                [expected_rows(cluster.url, None), expected_rows(cluster.url, "v > 50")],
                30,
            )
            stop.set()
            await asyncio.gather(*tasks)
        everything.assert_clean()
        late.assert_clean()
    finally:
        stop.set()
        engine.stop()


@pytest.mark.timeout(120)
async def test_a_new_shape_after_a_postgres_restart_is_not_a_400(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    try:
        async with aiohttp.ClientSession() as session:

            async def get(**params: str) -> tuple[int, str]:
                async with session.get(
                    engine.url + "/v1/shape", params={"table": "items", "offset": "-1", **params}
                ) as r:
                    return r.status, await r.text()

            await asyncio.to_thread(engine.start)
            assert (await get())[0] == 200
            engine.stop()
            await asyncio.to_thread(engine.start)  # the table is to be published again
            assert (await get())[0] == 200  # (its lookup is cached for a moment)
            await asyncio.to_thread(cluster.restart)  # the catalog connection dies
            status, body = await get(where="v > 1")
            assert status in (200, 503), body
    finally:
        engine.stop()


@pytest.mark.timeout(120)
async def test_a_replayed_truncate_does_not_rotate_the_shapes_made_after_it(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """The slot sends a TRUNCATE again after a lost stream (confirmed only with the next
    status update); it used to rotate the shapes made after it too, whose snapshots hold
    it: every client of the table refetched again, once per reconnect."""
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    await asyncio.to_thread(engine.start)
    follower = Follower(engine.url, increments=False)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, [follower], stop)
            first = follower.handle
            cluster.query("TRUNCATE items")
            cluster.query("INSERT INTO items VALUES (1, 5)")
            await wait_until_async(
                lambda: follower.resets == 1 and follower.live and follower.handle != first,
                message="refetched after the TRUNCATE",
            )
            cluster.query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE active_pid IS NOT NULL"
            )
            cluster.query("INSERT INTO items VALUES (2, 6)")
            await until_equal([follower], [expected_rows(cluster.url, None)], 30)
            stop.set()
            await asyncio.gather(*tasks)
        assert follower.resets == 1, follower.statuses
        follower.assert_clean()
    finally:
        stop.set()
        engine.stop()


@pytest.mark.timeout(180)
async def test_changes_of_an_unreadable_row_are_filtered_by_postgres_across_replays(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """A change to a row whose value the where clause reads but the engine cannot read
    exactly (here a text cast to date in a form only Postgres reads) is filtered by Postgres
    (`pg/row_where.py`); its shape used to be rotated, its clients refetching. The slot sends
    that change again after a lost stream and after an engine crash (it is confirmed only
    with a later status update, and not while it waits for Postgres's answer): the replay
    is neither lost nor applied twice, and nobody refetches."""
    cluster.query("ALTER TABLE items ADD COLUMN t text")
    cluster.query("UPDATE items SET t = '2024-01-0' || (id %% 9 + 1) WHERE id <= 10")
    where = "t::date > '2000-01-01'"
    columns = ("id", "v", "t")
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    await asyncio.to_thread(engine.start)
    follower = Follower(engine.url, where, increments=False)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, [follower], stop)
            first = follower.handle
            # a form of date only Postgres reads: it enters the shape
            cluster.query("UPDATE items SET t = 'Jan 2 2024' WHERE id = 15")
            (change_end,), *_ = cluster.query("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
            await until_equal([follower], [expected_rows(cluster.url, where, columns)], 30)
            assert '"public"."items"/"15"' in follower.rows

            # the stream lost: the slot sends the change again
            cluster.query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE active_pid IS NOT NULL"
            )
            cluster.query("UPDATE items SET t = 'Jan 2 1990' WHERE id = 16")  # stays out
            cluster.query("UPDATE items SET v = v + 1, t = 'Jan 3 2024' WHERE id = 15")
            cluster.query("INSERT INTO items VALUES (100, 0, '2024-02-01')")
            await until_equal([follower], [expected_rows(cluster.url, where, columns)], 30)
            # and the engine crashed: sent again on restart, if not confirmed yet
            (confirmed,), *_ = cluster.query(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots"
            )
            replayed = (
                isinstance(confirmed, int)
                and isinstance(change_end, int)
                and confirmed < change_end
            )
            engine.kill()
            await asyncio.to_thread(engine.start)
            cluster.query("UPDATE items SET t = 'Feb 1 1999' WHERE id = 15")  # leaves it
            cluster.query("INSERT INTO items VALUES (101, 0, '2024-02-02')")
            await until_equal([follower], [expected_rows(cluster.url, where, columns)], 30)
            stop.set()
            await asyncio.gather(*tasks)
        assert follower.resets == 0, (follower.statuses, replayed)
        assert follower.handle == first
        follower.assert_clean()
    finally:
        stop.set()
        engine.stop()
