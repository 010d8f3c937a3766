"""Big writes that are not the stream loop's usual big transaction are written while the
engine goes on answering, and arrive whole, once; a storm of new shapes sets a table's
identity once.

- **One huge value.** A single 200 MB text value used to be decoded, encoded, checksummed
  and written to its shape's log in one synchronous call, copied five times on the way
  (engine memory +950 MB), and no request of any source was answered meanwhile (27 s under
  load, even /v1/health). A transaction with that many bytes of rows is now written as a
  big one, its record's body 1 MB at a time, the event loop running in between.
- **A big transaction parked behind a running snapshot** (`Replicator.release_pending`) and
  **one held for Postgres's answer** on a row the engine cannot read (`_settle_held`) were
  written in one synchronous call; now a part at a time too.
- **15 concurrent new shapes** of a table whose identity a DBA set back each took a turn on
  the catalog connection and logged "(it had been set back)".

Real path: one engine process (fsync on) and one private cluster for the module. What the
write tests watch is the new shape log file on disk: /v1/health answered while the file
held part of the write and not all of it, which a write in one call never shows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN

#: A value big enough to be written in many pieces (`files.PACE_BYTES`, 1 MB), small enough
#: to cost Postgres and the engine a second or two.
SIZE = 24 * 1000 * 1000
#: Rows of the big transactions (`assembler.BIG_TRANSACTION` is 5,000 changes).
ROWS = 20_000
SET_BACK = "it had been set back"
RECYCLED = "replication stream started again"

Setup = tuple[FaultCluster, EngineProcess]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    db = FaultCluster()
    engine = EngineProcess(db.url, tmp_path_factory.mktemp("big") / "data")
    try:
        db.start()
        db.query("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        db.query("INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g")
        db.query("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        db.query("CREATE TABLE dated (id int PRIMARY KEY, d date)")
        db.query("CREATE TABLE d (id int PRIMARY KEY, v int)")
        db.query("INSERT INTO d SELECT g, g FROM generate_series(1, 20) g")
        engine.start()
        yield db, engine
    finally:
        engine.stop()
        db.stop()


def _rss(engine: EngineProcess) -> int:
    """The engine's resident memory, in bytes."""
    assert engine.proc is not None
    status = Path(f"/proc/{engine.proc.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def _logs(engine: EngineProcess) -> dict[Path, int]:
    shapes = engine.data_dir / "sources" / "default" / "shapes"
    return {f: f.stat().st_size for f in shapes.glob("*.log.*.log")}


class _Watch:
    """/v1/health asked again and again, with the bytes of the shape log files made since
    the watch began before and after each answer."""

    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine
        self.old = set(_logs(engine))
        self.sizes: list[tuple[int, int]] = []
        #: Per answer: the bytes before it was asked, and when it came (wall clock, ns).
        self.answers: list[tuple[int, int]] = []

    def new_bytes(self) -> int:
        return sum(n for f, n in _logs(self.engine).items() if f not in self.old)

    async def ask(self, session: aiohttp.ClientSession) -> None:
        """Four at once (on four connections): any of them may be answered in a pause."""
        await asyncio.gather(*(self._ask(session) for _ in range(4)))

    async def _ask(self, session: aiohttp.ClientSession) -> None:
        before = self.new_bytes()
        async with session.get(f"{self.engine.url}/v1/health") as r:
            assert r.status == 200
        came = time.time_ns()
        self.sizes.append((before, self.new_bytes()))
        self.answers.append((before, came))

    def answered_mid_write(self) -> bool:
        """Some answer was asked once the write had begun and came before it ended: the
        file held part of it after the answer, or the answer came before the file's last
        change (its mtime, from a clock at or behind the real time). The write of a 24 MB
        value takes 10-100 ms, its 1 MB pieces each answered about at once (an in-engine
        trace: /v1/health handled at 1, 9 and 17 MB), but a loaded test process stats the
        file again late: by then the write had ended, which the mtime does not need."""
        whole = self.new_bytes()
        if any(0 < before and after < whole for before, after in self.sizes):
            return True
        new = [f for f in _logs(self.engine) if f not in self.old]
        ended = max((f.stat().st_mtime_ns for f in new), default=0)
        return any(0 < before and came < ended for before, came in self.answers)


async def _follow(session: aiohttp.ClientSession, url: str, count: int = 0) -> dict[str, Any]:
    """Every row of a shape, read from the start until up to date with `count` rows at
    least (each once, inserts)."""
    rows: dict[str, Any] = {}
    offset, handle, live = "-1", "", ""
    while True:
        async with session.get(f"{url}&offset={offset}&handle={handle}{live}") as r:
            assert r.status == 200, r.status
            for m in await r.json():
                if "key" in m:
                    assert m["headers"]["operation"] == "insert"
                    assert m["key"] not in rows, "a row twice"
                    rows[m["key"]] = m["value"]
            offset, handle = r.headers["electric-offset"], r.headers["electric-handle"]
            if "electric-up-to-date" in r.headers:
                if len(rows) >= count:
                    return rows
                live = "&live=true"


async def _ok(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as r:
        assert r.status == 200, (r.status, await r.text())


@pytest.mark.timeout(120)
async def test_a_huge_value_is_written_while_the_engine_answers(setup: Setup) -> None:
    db, engine = setup
    async with aiohttp.ClientSession() as session:
        url = f"{engine.url}/v1/shape?table=docs"
        await _ok(session, f"{url}&offset=-1")
        rss = _rss(engine)
        watch = _Watch(engine)
        insert = asyncio.create_task(
            asyncio.to_thread(db.query, f"INSERT INTO docs VALUES (1, repeat('x', {SIZE}))")
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while watch.new_bytes() < SIZE and loop.time() < deadline:
            await watch.ask(session)
        await insert
        assert watch.answered_mid_write(), (
            f"no answer while the value was being written: {watch.sizes[-20:]}"
        )
        rows = await _follow(session, url, 1)
    assert list(rows) == ['"public"."docs"/"1"']
    assert rows['"public"."docs"/"1"']["body"] == "x" * SIZE
    del rows
    # The memory it took is given back, also what libpq kept for the message (its input
    # buffer, for the life of the connection: the engine starts a new stream).
    try:
        await wait_until_async(lambda: RECYCLED in engine.log_tail(100_000), timeout=10)
    except AssertionError:
        pass  # (the RSS says what matters)
    assert _rss(engine) - rss < SIZE // 2, "memory kept after the value was written and read"
    assert "stream lost" not in engine.log_tail(100_000)


def _waiting(db: FaultCluster, mode: str) -> bool:
    """Whether some session waits for a `mode` lock on items."""
    rows = db.query(
        "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass"
        " AND mode = %s AND NOT granted",
        (mode,),
    )
    return bool(rows[0][0])


async def _until_written(engine: EngineProcess, watch: _Watch, session: Any, lines: int) -> None:
    """Ask until the engine says a held transaction was written (`lines` said so before),
    or its log has stopped growing (what an engine that writes it in one go shows)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while engine.log_tail(100_000).count(" delivered to shape ") <= lines:
        assert loop.time() < deadline, "the held transaction never written"
        await watch.ask(session)
        last = watch.sizes[-100:]
        if len(last) == 100 and last[0][0] and all(size == last[0] for size in last):
            return


@pytest.mark.timeout(120)
async def test_a_big_parked_transaction_is_written_while_the_engine_answers(setup: Setup) -> None:
    """The snapshot is held back by a lock queued behind the bulk insert's, so that the
    insert commits (and is parked) while it runs."""
    db, engine = setup
    writer = psycopg.connect(db.url)
    locker = psycopg.connect(db.url)
    try:
        async with aiohttp.ClientSession() as session:
            # (the table published first: a new shape of a published table goes straight
            # to its snapshot, which the lock holds back)
            await _ok(session, f"{engine.url}/v1/shape?table=items&offset=-1&where=id<0")
            read = engine.log_tail(100_000).count(" shapes in ")
            written = engine.log_tail(100_000).count(" delivered to shape ")
            writer.execute(
                f"INSERT INTO items SELECT g, 0 FROM generate_series(1000, {999 + ROWS}) g"
            )
            # Queued behind the insert's lock, this one holds back the snapshot's query (new
            # lock requests wait behind it) until after the insert commits.
            lock = asyncio.create_task(
                asyncio.to_thread(locker.execute, "LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            )
            await wait_until_async(lambda: _waiting(db, "AccessExclusiveLock"), timeout=30)
            url = f"{engine.url}/v1/shape?table=items"
            first = asyncio.create_task(session.get(f"{url}&offset=-1"))
            await wait_until_async(lambda: _waiting(db, "AccessShareLock"), timeout=30)
            await asyncio.to_thread(writer.commit)
            await lock
            await wait_until_async(
                lambda: engine.log_tail(100_000).count(" shapes in ") > read,
                timeout=30,
                message="the big transaction read (and parked)",
            )
            watch = _Watch(engine)
            await asyncio.to_thread(locker.rollback)  # the snapshot runs on, then ends
            await _until_written(engine, watch, session, written)
            (await first).close()
            assert watch.answered_mid_write(), "no answer while it was being written"
            rows = await _follow(session, url)
    finally:
        writer.close()
        locker.close()
    assert set(rows) == {
        f'"public"."items"/"{i}"' for i in [*range(1, 21), *range(1000, 1000 + ROWS)]
    }
    assert "stream lost" not in engine.log_tail(100_000)


@pytest.mark.timeout(120)
async def test_a_big_transaction_held_for_postgres_is_written_while_the_engine_answers(
    setup: Setup,
) -> None:
    """One row of it has a date the engine cannot read (BC): the whole transaction waits
    for Postgres's answer on it, then is written a part at a time."""
    db, engine = setup
    async with aiohttp.ClientSession() as session:
        url = f"{engine.url}/v1/shape?table=dated&where=d > '2000-01-01'"
        await _ok(session, f"{url}&offset=-1")
        written = engine.log_tail(100_000).count(" delivered to shape ")
        watch = _Watch(engine)
        await asyncio.to_thread(
            db.query,
            "INSERT INTO dated SELECT g, CASE WHEN g = 1 THEN '0044-03-15 BC'::date"
            f" ELSE '2001-01-01' END FROM generate_series(1, {ROWS}) g",
        )
        await _until_written(engine, watch, session, written)
        assert watch.answered_mid_write(), "no answer while it was being written"
        # (up to date, then live until every row came: on a loaded machine the log can look
        # still for 100 asks while Postgres is still answering on the BC date, and an
        # up-to-date answer then rightly holds none of the transaction yet)
        rows = await _follow(session, url, ROWS - 1)
    assert set(rows) == {f'"public"."dated"/"{i}"' for i in range(2, ROWS + 1)}
    assert "stream lost" not in engine.log_tail(100_000)


@pytest.mark.timeout(60)
async def test_a_storm_of_new_shapes_sets_the_identity_once(setup: Setup) -> None:
    db, engine = setup
    async with aiohttp.ClientSession() as session:
        await _ok(session, f"{engine.url}/v1/shape?table=d&offset=-1")  # (published: FULL)
        # A DBA sets it back: the next storm sets it again, once, and says so once.
        db.query("ALTER TABLE d REPLICA IDENTITY DEFAULT")
        await asyncio.sleep(2.5)  # (the engine's table descriptions are kept 2 s)
        await asyncio.gather(
            *(
                _ok(session, f"{engine.url}/v1/shape?table=d&offset=-1&where=v > {k}")
                for k in range(15)
            )
        )
    identity = db.query("SELECT relreplident::text FROM pg_class WHERE oid = 'd'::regclass")
    assert identity == [("f",)]
    assert engine.log_tail(100_000).count(SET_BACK) == 1
