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
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows, follow_all, until_equal

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
