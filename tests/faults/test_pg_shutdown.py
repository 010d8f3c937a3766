"""Postgres stopped or restarted cleanly (`pg_ctl -m fast`, what `systemctl restart` does)
while the engine streams from it: the shutdown is not held up by the engine, and nothing is
lost or doubled.

A stopping walsender exits only once the client has confirmed the WAL end it sent (the end
of the last record it decoded), asking for replies meanwhile; until it has, Postgres refuses
every new connection, of every app. The engine used to answer with the last commit it had
acked: whenever WAL had been written since (in another database, say, as on any busy
server) the two played a ping-pong of thousands of keepalives until the engine's next idle
read confirmed the WAL end, about a second later. It now confirms a keepalive's WAL end at
once when everything it read is durable and nothing is held back.

The walsender logs each keepalive it sends at DEBUG2: their count during the shutdown is
what the test checks (load does not change it: a few, against thousands), not a timing.

Real path: the engine as a process, a private Postgres cluster, clients over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import psycopg
import pytest

from sync_engine.replication.stream import ReplicationStream
from sync_engine.snapshot.scheduler import SnapshotScheduler
from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN

KEEPALIVE = "sending replication keepalive"
#: Keepalives a stopping walsender may send an engine that has everything durable (one asks
#: for the reply that ends it; a few more if WAL moves meanwhile). The old code: thousands.
FEW = 20
#: Bound on a clean stop with the engine connected (about 0.1 s; the old code's ping-pong
#: about a second, a stuck walsender wal_sender_timeout, 60 s), loose for a loaded CI.
QUICK = 15.0
COLUMNS = ("id", "v")


def _other_db(cluster: FaultCluster) -> str:
    """A second database on the cluster, with a table another app writes to."""
    cluster.query("CREATE DATABASE other")
    url = cluster.url.rsplit("/", 1)[0] + "/other"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
    return url


def _keepalives(cluster: FaultCluster) -> int:
    return (cluster.dir / "server.log").read_text(errors="replace").count(KEEPALIVE)


async def _until_rows(cluster: FaultCluster, followers: list[Follower]) -> None:
    await until_equal(
        followers, [expected_rows(cluster.url, f.where, COLUMNS) for f in followers], 60
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["stop", "restart"])
async def test_a_clean_stop_is_not_held_up_and_a_restart_loses_nothing(
    cluster: FaultCluster, tmp_path: Path, how: str
) -> None:
    other = _other_db(cluster)
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "1")
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url), Follower(engine.url, "id % 2 = 0")]
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, followers, stop)
            cluster.query("UPDATE items SET v = v + 1 WHERE id <= 4")
            cluster.query("INSERT INTO items VALUES (21, 0), (22, 0)")
            await _until_rows(cluster, followers)
            cluster.query("ALTER SYSTEM SET log_min_messages = debug2")
            cluster.query("SELECT pg_reload_conf()")
            # Changes just before the stop: the engine's own (served), then another app's
            # WAL, which the engine's slot reads past without being sent anything.
            cluster.query("UPDATE items SET v = v + 1 WHERE id IN (5, 6)")
            await _until_rows(cluster, followers)
            with psycopg.connect(other, autocommit=True) as conn:
                conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
            before = _keepalives(cluster)
            started = time.monotonic()
            if how == "restart":
                await asyncio.to_thread(cluster.restart)
            else:
                await asyncio.to_thread(cluster.stop_server, "fast")
            took = time.monotonic() - started
            sent = _keepalives(cluster) - before
            print(f"pg_ctl {how}: {took:.2f} s, {sent} keepalives")
            assert took < QUICK, f"pg_ctl {how} took {took:.1f} s"
            assert sent <= FEW, f"the stopping walsender sent {sent} keepalives in {took:.2f} s"
            if how == "stop":
                await asyncio.to_thread(cluster.start)
            cluster.query("ALTER SYSTEM RESET log_min_messages")
            cluster.query("SELECT pg_reload_conf()")
            # Changes after the restart: everything before and after, each exactly once.
            cluster.query("UPDATE items SET v = v + 1 WHERE id IN (1, 2, 5, 8)")
            cluster.query("INSERT INTO items VALUES (23, 0), (24, 0)")
            cluster.query("DELETE FROM items WHERE id = 21")
            await _until_rows(cluster, followers)
            stop.set()
            await asyncio.gather(*tasks)
        for follower in followers:
            follower.assert_clean()
    finally:
        stop.set()
        engine.stop()


@pytest.mark.timeout(180)
async def test_a_fast_stop_while_a_large_transaction_is_appended_loses_nothing(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """The walsender sends the whole transaction before it stops and the engine confirms
    it only once durable: after the restart the clients have every row, once, and the
    changes made after it."""
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "1")
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, "id % 50 = 0"), Follower(engine.url, "id <= 20")]
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, followers, stop)
            # One transaction: 60k inserts, then an update of the rows the second shape has.
            cluster.query(
                "WITH u AS (UPDATE items SET v = v + 1 WHERE id <= 20)"
                " INSERT INTO items SELECT g, 0 FROM generate_series(1000, 60999) g"
            )
            started = time.monotonic()
            await asyncio.to_thread(cluster.stop_server, "fast")
            took = time.monotonic() - started
            await asyncio.to_thread(cluster.start)
            cluster.query("UPDATE items SET v = v + 1 WHERE id IN (3, 1050)")
            cluster.query("INSERT INTO items VALUES (61000, 0)")
            await _until_rows(cluster, followers)
            stop.set()
            await asyncio.gather(*tasks)
        for follower in followers:
            follower.assert_clean()
        assert took < 60, f"pg_ctl stop took {took:.1f} s"
    finally:
        stop.set()
        engine.stop()


def _lock_waiters(cluster: FaultCluster, table: str) -> int:
    """Backends waiting for a lock on `table`."""
    rows = cluster.query(
        "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted", (table,)
    )
    return int(str(rows[0][0]))


@pytest.mark.timeout(180)
async def test_a_fast_stop_with_a_new_shapes_snapshot_held_is_not_held_up(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """A new shape's snapshot is held (its query waits for a lock another session holds)
    while a transaction on its table commits: the transaction is parked on the shape, and
    the slot cannot be confirmed past it until the snapshot says whether it holds it. A
    fast stop terminates the snapshot's backend and refuses new connections: the stop must
    finish (the walsender waits for the engine to confirm everything it sent), and after
    the start every client's rows are exact. (The snapshot fails, its one retry is refused,
    the shape is retired and the slot confirmed: about 1 s, the old code too. What held a
    stop up was a storm of new shapes: the next test.)"""
    cluster.query("CREATE TABLE parts (id int PRIMARY KEY, v int NOT NULL) PARTITION BY RANGE (id)")
    cluster.query("CREATE TABLE p1 PARTITION OF parts FOR VALUES FROM (1) TO (1000)")
    cluster.query("CREATE TABLE p2 PARTITION OF parts FOR VALUES FROM (1000) TO (2000)")
    cluster.query("INSERT INTO parts SELECT g, 0 FROM generate_series(1, 10) g")
    cluster.query("INSERT INTO parts SELECT g, 0 FROM generate_series(1000, 1005) g")
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "1")
    await asyncio.to_thread(engine.start)
    first = Follower(engine.url, table="parts")
    held = Follower(engine.url, "v >= 0", table="parts")
    followers = [first, held]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    locker = psycopg.connect(cluster.url, autocommit=True)
    try:
        async with aiohttp.ClientSession() as session:
            tasks += await follow_all(session, [first], stop)
            # The second shape's snapshot waits for a partition another session locked.
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE p2 IN ACCESS EXCLUSIVE MODE")
            tasks.append(asyncio.create_task(held.run(session, stop)))
            await wait_until_async(
                lambda: _lock_waiters(cluster, "p2") > 0, message="the snapshot waits"
            )
            cluster.query("UPDATE parts SET v = v + 1 WHERE id IN (1, 2)")  # (partition p1)
            # (its SELECT would wait for the lock too: the rows it changed, as they are now)
            await wait_until_async(
                lambda: all(first.rows[f'"public"."parts"/"{i}"']["v"] == "1" for i in (1, 2)),
                timeout=60,
                message="the update served to the first shape's client",
            )
            started = time.monotonic()
            # (fails if Postgres has not stopped in `QUICK`: a walsender waiting for the
            # engine's confirmation waits for ever)
            await asyncio.to_thread(cluster.stop_server, "fast", QUICK)
            print(f"pg_ctl stop: {time.monotonic() - started:.2f} s")
            with contextlib.suppress(psycopg.Error):
                locker.close()
            await asyncio.to_thread(cluster.start)
            cluster.query("UPDATE parts SET v = v + 1 WHERE id IN (2, 3, 1001)")
            cluster.query("INSERT INTO parts VALUES (11, 0), (1006, 0)")
            await until_equal(
                followers,
                [expected_rows(cluster.url, f.where, COLUMNS, "parts") for f in followers],
                60,
            )
            stop.set()
            await asyncio.gather(*tasks)
        for follower in followers:
            follower.assert_clean()
    finally:
        stop.set()
        with contextlib.suppress(psycopg.Error):
            locker.close()
        engine.stop()


def _refuses_as_stopping(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        return "shutting down" in str(exc)
    return False


@pytest.mark.timeout(120)
async def test_a_storm_of_new_shapes_does_not_keep_a_waiting_one_from_failing(
    cluster: FaultCluster,
) -> None:
    """While Postgres is stopping (it refuses new connections: 57P03), a new shape's submit
    started another connection attempt as soon as one had failed, and the waiting shapes
    were failed only once every attempt had failed with none started meanwhile: a storm of
    new shapes kept the first one waiting for as long as it went on. A shape parks the
    transactions the stream delivers meanwhile, and the slot is not confirmed past them:
    the stopping walsender, which waits for the engine to confirm everything it sent, held
    the stop up with it (chaos, load 16: `pg_ctl stop -m fast` waited its 60 s). Now no
    attempt is started while a round of them is failing; its end fails every shape
    waiting.

    Real path: a Postgres held in its fast shutdown by a walsender whose client never
    answers (as the engine's did), the scheduler's connections refused by it."""
    cluster.query("CREATE PUBLICATION held_pub FOR ALL TABLES")
    cluster.query("SELECT pg_create_logical_replication_slot('held', 'pgoutput')")
    stream = ReplicationStream(cluster.url, "held", "held_pub")
    await stream.start()  # (never read: the stopping walsender waits for its answer)
    scheduler: SnapshotScheduler | None = None
    try:
        cluster.query("INSERT INTO items VALUES (100, 0)")
        assert PGBIN is not None
        cluster._run(str(PGBIN / "pg_ctl"), "-D", str(cluster.dir / "data"), "-m", "fast",
                     "-W", "stop")  # fmt: skip
        await wait_until_async(
            lambda: asyncio.to_thread(_refuses_as_stopping, cluster.url),
            message="Postgres refusing connections while it stops",
        )
        # (the attempts are counted by their log lines: one each)
        attempts = 0

        class _Count(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                nonlocal attempts
                attempts += "could not open a snapshot connection" in record.getMessage()

        counter = _Count(logging.DEBUG)
        scheduler_logger = logging.getLogger("sync_engine.snapshot.scheduler")
        scheduler_logger.addHandler(counter)
        level = scheduler_logger.level
        scheduler_logger.setLevel(logging.DEBUG)
        failed: dict[int, int] = {}  # id(shape): connection attempts made before it failed

        def on_failed(shape: object, exc: BaseException) -> None:
            failed.setdefault(id(shape), attempts)

        try:
            scheduler = SnapshotScheduler(
                cluster.url,
                max_connections=8,
                chunk_bytes=1 << 20,
                fsync=False,
                make_job=lambda shape: pytest.fail("no connection: no job"),
                on_failed=on_failed,
            )
            first = SimpleNamespace(rotated=False)
            scheduler.submit(first)  # type: ignore[arg-type]
            storm = 0
            while id(first) not in failed and storm < 2500:  # (a new shape every 2 ms, 5 s)
                storm += 1
                scheduler.submit(SimpleNamespace(rotated=False))  # type: ignore[arg-type]
                await asyncio.sleep(0.002)
        finally:
            scheduler_logger.removeHandler(counter)
            scheduler_logger.setLevel(level)
        print(f"the first shape: failed after {failed.get(id(first))} attempts, {storm} new shapes")
        # Failed when the first round of attempts (one per connection) had failed.
        assert failed.get(id(first)) == 8, (failed.get(id(first)), storm)
    finally:
        if scheduler is not None:
            await scheduler.close()
        await stream.close()
