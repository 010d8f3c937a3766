"""What is on disk damaged under a running engine, or while it was down: never served.

A shape with an initial snapshot of several chunk files and a log of several chunks, synced
live by a follower; then one of its files is damaged: deleted, cut to 0 bytes or in its
middle, a byte flipped, a digit changed (the JSON still parses), replaced by the same file of
another shape, or made unreadable (chmod 000, to an engine without root's override). Either
while the engine runs, or while it is down (SIGKILLed once the slot is confirmed past
everything, so that nothing cut can be replayed). More changes follow.

What must hold: the live follower, a fresh follower from `-1` and the real npm client each
end with exactly `SELECT`'s rows, every change once (a 409 that sends a client back to `-1`
is fine; a body with wrong, missing or repeated rows is not), no error but 503 and 409, the
engine still running, and the other shape (whose file may have been copied) unharmed.

Real path: the engine as a process (without CAP_DAC_OVERRIDE), a private Postgres cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import NO_DAC_OVERRIDE, EngineProcess
from tests.support.follower import Follower, expected_rows, until_equal
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN

ROOT = Path(__file__).resolve().parents[2]
NPM_FOLLOW = Path(__file__).with_name("npm_follow.mjs")
CONFIRMED = (
    "SELECT (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint"
    " FROM pg_replication_slots WHERE slot_name = %s"
)
_names = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[FaultCluster]:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    made = FaultCluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()


class Db:
    """A database of its own in the module's cluster: a test's tables and its engine's slot."""

    def __init__(self, pg: FaultCluster) -> None:
        self.name = f"damage{next(_names)}_{os.getpid()}"
        pg.query(f"CREATE DATABASE {self.name}")
        self.url = pg.url.rsplit("/", 1)[0] + "/" + self.name

    def drop(self, pg: FaultCluster) -> None:
        """Drop the database and its engine's slot (a cluster has 10 slots)."""
        pg.query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = %s",
            (self.name,),
        )
        pg.query(f"DROP DATABASE {self.name} WITH (FORCE)")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.encode(), params)
            return cur.fetchall() if cur.description else []

    def write(self, table: str, first: int, count: int) -> None:
        """`count` transactions: an insert of id `first`.. and an increment of `v`."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for i in range(first, first + count):
                with conn.transaction():
                    conn.execute(f"INSERT INTO {table} VALUES (%s, 0)".encode(), (i,))
                    conn.execute(
                        f"UPDATE {table} SET v = v + 1 WHERE id = %s".encode(), (i % 50 + 1,)
                    )


class NpmClient:
    """The real npm client following a table (`npm_follow.mjs`): its view and its errors."""

    def __init__(self, url: str, table: str, where: str | None = None, sse: bool = False) -> None:
        self.rows: dict[str, dict[str, Any]] | None = None
        self.errors: list[str] = []
        self._args = ("node", str(NPM_FOLLOW), url, table, where or "-", "sse" if sse else "")
        self._proc: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self._args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
            limit=1 << 26,  # (a line is every row: more than the 64 KiB default)
        )  # fmt: skip
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            try:
                said = json.loads(line)
            except ValueError:
                self.errors.append(line.decode(errors="replace"))
                continue
            if "rows" in said:
                self.rows = said["rows"]
            else:
                self.errors.append(said.get("error", ""))

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s; its output read to the end (bounded: a teardown
        waiting on a process or pipe with no limit held a CI run until its time limit)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await asyncio.wait_for(self._proc.wait(), 10)
        if self._reading is not None:
            await asyncio.wait_for(self._reading, 10)


def _npm_view(rows: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, str]] | None:
    if rows is None:
        return None
    return {k: {c: str(v) for c, v in r.items()} for k, r in rows.items()}


def _live(follower: Follower) -> Callable[[], bool]:
    return lambda: follower.live


def _files(data: Path, handle: str) -> dict[str, list[Path]]:
    own = sorted(data.rglob(f"{handle}.*"))
    packs = [p for p in sorted(data.rglob("*.pack")) if handle.encode() in p.read_bytes()]
    return {
        "log": [p for p in own if p.name.endswith(".log")],
        "snapshot": [p for p in own if p.name.endswith(".json")],
        "pack": packs,
    }


def _damage(victim: Path, how: str, twin: Path) -> None:
    size = victim.stat().st_size
    if how == "delete":
        victim.unlink()
    elif how == "delete them all":  # (as a log of one chunk file deleted)
        for chunk in victim.parent.glob(victim.name.split(".", 1)[0] + ".log.*"):
            chunk.unlink()
    elif how == "truncate to 0":
        os.truncate(victim, 0)
    elif how == "truncate mid":
        os.truncate(victim, size // 2)
    elif how == "flip a byte":
        with open(victim, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x20]))
    elif how == "change a digit":
        data = bytearray(victim.read_bytes())
        at = next(m.start() for m in re.finditer(rb"[0-8]", data) if m.start() >= size // 2)
        data[at] += 1
        with open(victim, "r+b") as f:
            f.write(data)
    elif how == "another shape's":
        shutil.copyfile(twin, victim)
    elif how == "chmod 000":
        victim.chmod(0)
    else:
        raise AssertionError(how)


HOWS = [
    "delete",
    "delete them all",
    "truncate to 0",
    "truncate mid",
    "flip a byte",
    "change a digit",
    "another shape's",
    "chmod 000",
]
#: (how, which file, when): when the engine is `running`, or down (`restart`), or running
#: again after a restart and a client's sync from -1 (`after a restart`: every chunk read,
#: checked and since sent from its file as it is). The suite runs these (the four that
#: failed before their fix, and one of each other kind); SHAPEGATE_DAMAGE_MATRIX=1 runs
#: every combination (66; all passed on 2026-12-05, 7.5 min on a loaded machine).
CASES = [
    ("delete them all", "log", "restart"),
    ("another shape's", "log", "restart"),
    ("change a digit", "snapshot", "after a restart"),
    ("chmod 000", "pack", "restart"),
    ("truncate mid", "log", "running"),
    ("flip a byte", "log", "restart"),
    ("chmod 000", "log", "running"),
    ("another shape's", "snapshot", "after a restart"),
    ("flip a byte", "pack", "running"),
]
if os.environ.get("SHAPEGATE_DAMAGE_MATRIX"):
    CASES = [
        (how, target, when)
        for how in HOWS
        for target in ("log", "snapshot", "pack")
        for when in ("running", "restart", "after a restart")
        if how != "delete them all" or target == "log"
    ]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("how", "target", "when"), CASES)
async def test_damaged_files_are_never_served(
    pg: FaultCluster, tmp_path: Path, when: str, target: str, how: str
) -> None:
    if how == "chmod 000" and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run the engine without CAP_DAC_OVERRIDE")
    db = Db(pg)
    for table in ("d", "o"):
        db.query(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
        db.query(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 100) g")
    data = tmp_path / "data"
    data.mkdir()
    # (--replication-timeout 3: after 1.5 s of silence the engine asks Postgres for a
    # keepalive and confirms its WAL end: `restart` finds the slot confirmed within seconds,
    # not at the next 10 s status update)
    engine = EngineProcess(
        db.url, data, "--long-poll-timeout", "1", "--chunk-bytes", "1500",
        "--replication-stream-id", db.name, "--replication-timeout", "3",
        wrapper=NO_DAC_OVERRIDE if shutil.which("setpriv") else (),
    )  # fmt: skip
    await asyncio.to_thread(engine.start)
    npm = NpmClient(engine.url, "d")
    try:
        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            follower, other = Follower(engine.url, table="d"), Follower(engine.url, table="o")
            tasks = []
            for f in (follower, other):  # one after the other: a pack each
                tasks.append(asyncio.create_task(f.run(session, stop)))
                await wait_until_async(_live(f), timeout=30, message="live")
            await asyncio.gather(*(asyncio.to_thread(db.write, t, 1000, 30) for t in "do"))
            await until_equal(
                [follower, other],
                [expected_rows(db.url, None, table="d"), expected_rows(db.url, None, table="o")],
                30,
            )
            assert follower.handle and other.handle
            mine, theirs = _files(data, follower.handle), _files(data, other.handle)
            assert len(mine["log"]) >= 2 and len(mine["snapshot"]) >= 2, mine
            victim, twin = mine[target][0], theirs[target][0]
            if when == "restart":

                def confirmed() -> bool:
                    (flushed, current), *_ = db.query(CONFIRMED, (f"shapegate_slot_{db.name}",))
                    assert isinstance(flushed, int) and isinstance(current, int)
                    return flushed >= current

                pg.query("SELECT pg_switch_wal()")
                await wait_until_async(confirmed, timeout=60, message="slot confirmed")
                engine.kill()
                _damage(victim, how, twin)
                await asyncio.to_thread(engine.start)
            elif when == "after a restart":
                engine.kill()
                await asyncio.to_thread(engine.start)
                warm, warmed = Follower(engine.url, table="d"), asyncio.Event()
                warming = asyncio.create_task(warm.run(session, warmed))
                await wait_until_async(_live(warm), timeout=30, message="read from -1")
                warmed.set()
                await warming
                _damage(victim, how, twin)
            else:
                _damage(victim, how, twin)
            await npm.start()
            await asyncio.gather(*(asyncio.to_thread(db.write, t, 2000, 20) for t in "do"))
            fresh = Follower(engine.url, table="d")
            tasks.append(asyncio.create_task(fresh.run(session, stop)))
            expected = expected_rows(db.url, None, table="d")
            await until_equal(
                [follower, fresh, other],
                [expected, expected, expected_rows(db.url, None, table="o")],
                30,
            )
            await wait_until_async(
                lambda: _npm_view(npm.rows) == expected,
                timeout=30,
                message=f"the npm client's view (errors {npm.errors[-3:]})",
            )
            stop.set()
            await asyncio.gather(*tasks)
        for f in (follower, fresh, other):
            f.assert_clean()
        assert not npm.errors, npm.errors
        assert engine.proc is not None and engine.proc.poll() is None
    finally:
        await npm.stop()
        engine.stop()
        db.drop(pg)
