"""A replication slot dropped or invalidated under a running engine: the changes it held are
gone, so no shape may go on as if nothing happened. Every shape is retired (its clients
get a 409 and refetch), a new slot is made, and the clients end equal to `SELECT`.

Before, a dropped slot was logged once ("restart the engine") and every shape kept
answering up-to-date without the changes committed since: silently stale, for good. An
invalidated slot (Postgres removed WAL it still needed, `max_slot_wal_keep_size`) was
reported as a `wal_level` problem, with the same result.

Real path: the engine as a process on a private Postgres cluster, a writer, followers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import (
    Follower,
    Writer,
    expected_rows,
    follow_once,
    status_of_old_handle,
)
from tests.support.waiting import wait_until, wait_until_async

WHERES = [None, "id % 2 = 0"]
SLOT = "shapegate_slot_default"


@asynccontextmanager
async def _followed(
    cluster: FaultCluster, engine: EngineProcess
) -> AsyncIterator[tuple[list[Follower], Writer]]:
    """Followers of two shapes, live, and a writer committing; on exit the writer stops
    and the followers must end equal to `SELECT`, having refetched once."""
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w) for w in WHERES]
    writer = Writer(cluster.url)
    stop_followers, stop_writer = asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(f.run(session, stop_followers)) for f in followers]
        writing = asyncio.create_task(writer.run(stop_writer))
        try:
            await wait_until_async(
                lambda: all(f.live for f in followers) and writer.committed >= 20,
                timeout=30,
                message="followers live, writes going",
            )
            yield followers, writer
            await wait_until_async(
                lambda: all(f.resets for f in followers), timeout=30, message="a 409 each"
            )
            target = writer.committed + 20
            await wait_until_async(
                lambda: writer.committed >= target, timeout=30, message="writes after"
            )
            stop_writer.set()
            await writing
            expected = [expected_rows(cluster.url, w) for w in WHERES]
            await wait_until_async(
                lambda: all(f.rows == e for f, e in zip(followers, expected, strict=True)),
                timeout=60,
                message="followers equal to SELECT",
            )
        finally:
            stop_writer.set()
            stop_followers.set()
            await asyncio.gather(writing, *tasks, return_exceptions=True)
    for f in followers:
        f.assert_clean()


def _drop_slot(cluster: FaultCluster) -> Callable[[], bool]:
    def attempt() -> bool:
        cluster.query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE slot_name = %s AND active_pid IS NOT NULL",
            (SLOT,),
        )
        try:
            cluster.query("SELECT pg_drop_replication_slot(%s)", (SLOT,))
        except Exception:  # the engine reconnected first: again
            return False
        return True

    return attempt


@pytest.mark.timeout(120)
async def test_a_dropped_slot_retires_every_shape_and_is_made_again(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    try:
        async with _followed(cluster, engine):
            await asyncio.to_thread(wait_until, _drop_slot(cluster), message="slot dropped")
        assert cluster.query("SELECT count(*) FROM pg_replication_slots") == [(1,)]
        assert "is missing (dropped)" in engine.log_tail(100_000)
    finally:
        engine.stop()


@pytest.mark.timeout(120)
async def test_an_invalidated_slot_retires_every_shape_and_is_made_again(
    tmp_path: Path,
) -> None:
    cluster = FaultCluster(max_slot_wal_keep_size="1MB")
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    try:
        cluster.start_with_items()
        async with _followed(cluster, engine):
            assert engine.proc is not None
            engine.proc.send_signal(signal.SIGSTOP)  # the slot falls behind
            try:
                for _ in range(4):  # WAL far past max_slot_wal_keep_size, then a checkpoint
                    cluster.query(
                        "INSERT INTO items VALUES (-1, 0); DELETE FROM items"
                        " WHERE id = -1; SELECT pg_switch_wal()"
                    )
                cluster.query("CHECKPOINT")
                assert cluster.query(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
                ) == [("lost",)]
            finally:
                engine.proc.send_signal(signal.SIGCONT)
        assert cluster.query("SELECT wal_status FROM pg_replication_slots") != [("lost",)]
        assert "is unusable (invalidated" in engine.log_tail(100_000)
    finally:
        engine.stop()
        cluster.stop()


@pytest.mark.timeout(120)
async def test_a_slot_dropped_while_the_engine_was_down_retires_its_shapes(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """The shapes on disk miss what was committed while no slot kept it: a restart retires
    them (the old handle gets a 409) and a refetch is exact."""
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    try:
        await asyncio.to_thread(engine.start)
        async with aiohttp.ClientSession() as session:
            first = await follow_once(session, engine.url)
            engine.kill()
            await asyncio.to_thread(wait_until, _drop_slot(cluster), message="slot dropped")
            cluster.query("UPDATE items SET v = v + 1 WHERE id = 3")
            await asyncio.to_thread(engine.start)
            assert await status_of_old_handle(session, first) == 409
            again = await follow_once(session, engine.url)
        assert again.handle != first.handle
        assert again.rows == expected_rows(cluster.url, None)
    finally:
        engine.stop()


@pytest.mark.timeout(120)
async def test_a_dropped_publication_retires_every_shape_and_is_made_again(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """Without its publication the slot cannot decode, and made again empty it would publish
    none of the loaded shapes' tables: the shapes would stay silently stale. As Electric
    does, a publication made again means a new slot and every shape retired."""
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    try:
        async with _followed(cluster, engine):
            cluster.query("DROP PUBLICATION shapegate_pub_default")
        assert cluster.query("SELECT count(*) FROM pg_publication") == [(1,)]
        assert "its publication shapegate_pub_default was dropped" in engine.log_tail(100_000)
    finally:
        engine.stop()


@pytest.mark.timeout(120)
async def test_a_slot_invalidated_while_the_engine_was_down_retires_its_shapes(
    tmp_path: Path,
) -> None:
    cluster = FaultCluster(max_slot_wal_keep_size="1MB")
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    try:
        cluster.start_with_items()
        await asyncio.to_thread(engine.start)
        async with aiohttp.ClientSession() as session:
            first = await follow_once(session, engine.url)
            engine.kill()
            for _ in range(4):
                cluster.query("UPDATE items SET v = v + 1 WHERE id = 3; SELECT pg_switch_wal()")
            cluster.query("CHECKPOINT")
            assert cluster.query("SELECT wal_status FROM pg_replication_slots") == [("lost",)]
            await asyncio.to_thread(engine.start)
            assert await status_of_old_handle(session, first) == 409
            again = await follow_once(session, engine.url)
        assert again.rows == expected_rows(cluster.url, None)
        assert cluster.query("SELECT wal_status FROM pg_replication_slots") != [("lost",)]
    finally:
        engine.stop()
        cluster.stop()
