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
