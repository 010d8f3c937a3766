"""A silent Postgres: its processes stopped (SIGSTOP), then continued, or its network link
cut (packets dropped in a network namespace), then restored. Nothing answers and nothing
is closed: a connection's packets (new connections too) get no reply.

Requests must not hang: meanwhile a new shape gets a 503 with a JSON body and Retry-After,
so does an existing shape's first request (`-1`: its table cannot be checked to be still
the same one, and an unchecked log may be a dropped table's), and the replication stream,
silent, is found lost (the engine asks for a keepalive and none comes) and reconnected;
after SIGCONT the engine goes on by itself and its followers end equal to `SELECT`,
nothing lost or repeated.

Before: the catalog query of a request (a new shape's table lookup; an existing shape's
"is the table still there" at offset -1) waited for Postgres as long as it was stopped,
holding the catalog connection's lock, so every such request hung; the replication stream
waited forever on its quiet socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest

from tests.faults.cluster import FaultCluster, PartitionedCluster
from tests.support.databases import create_database, drop_database
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN

WHERES = [None, "id % 2 = 0"]
#: Long enough for the engine's own bounds (a catalog query and the probe of a new
#: connection: 1 s here, 5 s by default; the stream: 2 s here); a request still waiting then
#: is hung (it would wait as long as Postgres is stopped).
ANSWER_WITHIN = 30
WALSENDER = "SELECT active_pid FROM pg_replication_slots WHERE active_pid IS NOT NULL"
#: The engine's bounds, short (the defaults, 5 s and 2 s, only made this file slow): the
#: behaviour is the same, a request is answered 503 once they run out.
SHORT_BOUNDS = ("--catalog-timeout", "1", "--probe-timeout", "1", "--snapshot-quiet", "0.5")


@dataclass
class Silenced:
    """A database of its own (an `items (id, v)` table of 20 rows) on a cluster shared by
    this file's tests (starting one per test cost ~3 s each): `url` is the database's."""

    cluster: FaultCluster
    url: str


def _database(cluster: FaultCluster) -> Iterator[Silenced]:
    dbname, url = create_database(cluster.url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
            conn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g")
        yield Silenced(cluster, url)
    finally:
        drop_database(cluster.url, dbname)


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[FaultCluster]:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    made = FaultCluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def shared_partitioned() -> Iterator[PartitionedCluster]:
    """As `partitioned` (tests/faults/conftest.py), for this file's tests."""
    if PGBIN is None or os.geteuid() != 0:
        pytest.skip("needs root and PostgreSQL server binaries (a network namespace)")
    made = PartitionedCluster(wal_sender_timeout="'5s'")
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def silenced(shared_cluster: FaultCluster) -> Iterator[Silenced]:
    yield from _database(shared_cluster)


@pytest.fixture
def partitioned_db(shared_partitioned: PartitionedCluster) -> Iterator[Silenced]:
    yield from _database(shared_partitioned)


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, bytes, str]:
    async with session.get(
        url + "/v1/shape", params=params, timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN)
    ) as r:
        return r.status, await r.read(), r.headers.get("retry-after", "")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("what", ["postgres", "walsender", "partition"])
async def test_a_silent_postgres_gets_answers_and_is_followed_again(
    request: pytest.FixtureRequest, tmp_path: Path, what: str
) -> None:
    """`postgres`: every process of the cluster stopped; `walsender`: only the one sending
    the engine's replication stream (new connections are answered: a new shape is made);
    `partition`: the cluster's network link cut (packets dropped, not even the kernel
    answers)."""
    db: Silenced = request.getfixturevalue("partitioned_db" if what == "partition" else "silenced")
    cluster = db.cluster
    engine = EngineProcess(
        db.url,
        tmp_path / "data",
        "--long-poll-timeout",
        "1",
        "--replication-timeout",
        "2",
        *SHORT_BOUNDS,
    )
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w) for w in WHERES]
    writer = Writer(db.url)
    stop_followers, stop_writer = asyncio.Event(), asyncio.Event()
    stopped: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, followers, stop_followers)
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(lambda: writer.committed >= 20, timeout=30, message="writes")
            if what == "partition":
                assert isinstance(cluster, PartitionedCluster)
                cluster.partition()
            elif what == "postgres":
                stopped = cluster.pids()
            else:
                stopped = [int(pid) for (pid,) in cluster.query(WALSENDER)]  # type: ignore[call-overload]
            cluster.signal(stopped, signal.SIGSTOP)

            new, existing = await asyncio.gather(
                _get(session, engine.url, table="items", where="id > 5", offset="-1"),
                _get(session, engine.url, table="items", offset="-1"),
            )
            status, body, retry_after = new
            if what != "walsender":
                assert status == 503 and retry_after, (status, body)
                assert isinstance(orjson.loads(body)["message"], str)
            else:
                assert status == 200, (status, body)
            if what != "walsender":  # (the still-there check went unanswered: never the log)
                status, body, retry_after = existing
                assert status == 503 and retry_after, existing
                assert orjson.loads(body)["code"] == "database_unreachable", existing
            else:
                assert existing[0] == 200, existing
            await wait_until_async(
                lambda: "the server stopped answering" in engine.log_tail(100_000),
                timeout=ANSWER_WITHIN,
                message="the silent replication stream found lost",
            )

            cluster.signal(stopped, signal.SIGCONT)
            if isinstance(cluster, PartitionedCluster):
                cluster.heal()
            target = writer.committed + 20
            await wait_until_async(
                lambda: writer.committed >= target, timeout=60, message="writes after"
            )
            stop_writer.set()
            await writing
            await until_equal(followers, [expected_rows(db.url, w) for w in WHERES], 60)
            stop_followers.set()
            await asyncio.gather(*tasks)
            # and a new shape is made again
            fresh = Follower(engine.url, "id > 5")
            stop = asyncio.Event()
            task = asyncio.create_task(fresh.run(session, stop))
            await wait_until_async(lambda: fresh.live, timeout=30, message="a new shape")
            stop.set()
            await task
        assert fresh.rows == expected_rows(db.url, "id > 5")
        for f in followers:
            f.assert_clean()
    finally:
        cluster.signal(stopped, signal.SIGCONT)
        stop_writer.set()
        stop_followers.set()
        engine.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("what", ["postgres", "partition"])
async def test_a_new_shape_of_a_table_just_looked_up_gets_a_503_not_a_hang(
    request: pytest.FixtureRequest, tmp_path: Path, what: str
) -> None:
    """A new shape of a table whose lookup the engine still trusts (`LOOKUP_TTL`) asks
    Postgres nothing before its snapshot, which an idle snapshot connection sends into
    the silence. Its request must still be answered (a 503 with a JSON body and
    Retry-After), and the same shape served once Postgres answers again.

    A subset request of a shape there is (its table lookup cached too) must be answered
    likewise.

    Before: the request waited for chunk 0 for 60 s (`SNAPSHOT_WAIT`): longer than any
    client waits (here `ANSWER_WITHIN`); the subset's query waited as long as Postgres was
    stopped (in a worker thread: a few of them stalled every file read and write the engine
    does in threads)."""
    db: Silenced = request.getfixturevalue("partitioned_db" if what == "partition" else "silenced")
    cluster = db.cluster
    engine = EngineProcess(db.url, tmp_path / "data", "--long-poll-timeout", "1", *SHORT_BOUNDS)
    await asyncio.to_thread(engine.start)
    stopped: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            # the table published, looked up again (publishing forgets the lookup), and
            # the snapshot connections opened and idle
            for where in ("id > 10", "id > 15"):
                async with session.get(
                    engine.url + "/v1/shape",
                    params={"table": "items", "where": where, "offset": "-1"},
                ) as r:
                    assert r.status == 200, await r.read()
                    at = {"handle": r.headers["electric-handle"], "offset": "0_inf"}
            # (and a subset query ran: the pool holds an idle connection). The requests
            # below come within the lookup's LOOKUP_TTL: they ask the catalog nothing.
            status, body, _ = await _get(
                session, engine.url, table="items", where="id > 15", subset__where="id > 17", **at
            )
            assert status == 200, (status, body)
            if isinstance(cluster, PartitionedCluster):
                cluster.partition()
            else:
                stopped = cluster.pids()
                cluster.signal(stopped, signal.SIGSTOP)
            new_shape, subset = await asyncio.gather(
                _get(session, engine.url, table="items", where="id > 5", offset="-1"),
                # a subset of a shape there is: its query too goes into the silence
                _get(
                    session, engine.url, table="items", where="id > 15",
                    subset__where="id > 16", **at
                ),
            )  # fmt: skip
            for status, body, retry_after in (new_shape, subset):
                assert status == 503 and retry_after, (status, body)
                answer = orjson.loads(body)
                assert answer["code"] == "database_unreachable", answer
                assert isinstance(answer["message"], str), answer

            cluster.signal(stopped, signal.SIGCONT)
            if isinstance(cluster, PartitionedCluster):
                cluster.heal()
            follower = Follower(engine.url, "id > 5")
            stop = asyncio.Event()
            task = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, timeout=60, message="the new shape")
            stop.set()
            await task
        assert follower.rows == expected_rows(db.url, "id > 5")
        follower.assert_clean()
    finally:
        cluster.signal(stopped, signal.SIGCONT)
        engine.stop()


@pytest.mark.timeout(120)
async def test_a_snapshot_that_postgres_is_slow_to_start_is_waited_for(
    silenced: Silenced, tmp_path: Path
) -> None:
    """Postgres alive but slow: a new shape's snapshot query waits for a lock held by
    another transaction (here for 3 s: past the engine's check for a silent database,
    `--snapshot-quiet` 0.5 s + the probe's 2 s, and its every 0.5 s after). The request
    waits for it and gets the rows, not a 503."""
    url = silenced.url
    engine = EngineProcess(
        url,
        tmp_path / "data",
        "--long-poll-timeout",
        "1",
        "--probe-timeout",
        "2",
        "--snapshot-quiet",
        "0.5",
    )
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            first = await _get(session, engine.url, table="items", offset="-1")
            assert first[0] == 200, first
            with psycopg.connect(url) as locker:
                locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
                asking = asyncio.create_task(
                    _get(session, engine.url, table="items", where="id > 5", offset="-1")
                )
                await asyncio.sleep(3)
                assert not asking.done(), asking.result()
                locker.commit()
            status, body, _ = await asking
            assert status == 200, (status, body)
            rows = {m["value"]["id"]: m["value"]["v"] for m in orjson.loads(body) if "key" in m}
            assert rows == {str(i): "0" for i in range(6, 21)}
    finally:
        engine.stop()


@pytest.mark.timeout(180)
async def test_first_requests_of_a_shape_wait_once_for_a_silent_postgres(
    silenced: Silenced, tmp_path: Path
) -> None:
    """A `-1` for an existing shape waits for a still-there check begun after it arrived
    (`Tables.still_there`). Here the table is dropped and made again under its name (the
    engine is told nothing: Postgres streams no DROP), then Postgres goes silent: the check
    runs out of time (the default `--catalog-timeout`, 5 s) and the request gets a 503
    `database_unreachable` with Retry-After, never the dropped table's log. Before, the
    old log was served after the timeout, as up to date, with the dropped table's rows.

    Once a check went unanswered each later request waits half a second for its own
    (10 in a row in well under the 50 s that 10 timeouts take) until one is answered; once
    Postgres answers, the check is back and the new table's rows are served."""
    url = silenced.url
    cluster = silenced.cluster
    engine = EngineProcess(url, tmp_path / "data", "--probe-timeout", "1")
    await asyncio.to_thread(engine.start)
    stopped: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            first = await _get(session, engine.url, table="items", offset="-1")
            assert first[0] == 200, first
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP TABLE items")
                conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
                conn.execute("INSERT INTO items VALUES (1000, 1)")
            stopped = cluster.pids()
            cluster.signal(stopped, signal.SIGSTOP)

            def unreachable(answer: tuple[int, bytes, str]) -> None:
                status, body, retry_after = answer
                assert status == 503 and retry_after, answer
                assert orjson.loads(body)["code"] == "database_unreachable", answer

            unreachable(await _get(session, engine.url, table="items", offset="-1"))
            async with asyncio.timeout(25):  # (half of what 10 timeouts take)
                for _ in range(10):
                    unreachable(await _get(session, engine.url, table="items", offset="-1"))
            cluster.signal(stopped, signal.SIGCONT)

            async def new_rows_served() -> bool:
                status, body, _ = await _get(session, engine.url, table="items", offset="-1")
                assert status in (200, 503), (status, body)
                if status != 200:
                    return False
                rows = {m["value"]["id"] for m in orjson.loads(body) if "key" in m}
                assert rows == {"1000"}, rows  # (never the dropped table's)
                return True

            await wait_until_async(new_rows_served, timeout=30, message="the check back")
    finally:
        cluster.signal(stopped, signal.SIGCONT)
        engine.stop()
