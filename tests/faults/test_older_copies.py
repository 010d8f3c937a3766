"""An older copy of a shape's log chunk, its xattrs with it, put in place of the newer one
while the engine is down: never served as if whole.

A restore mix-up (a partial `rsync -X` or `cp -a` of a backup) brings back an older,
self-consistent version of the file: its records and their checksums, and its
`user.shapegate.durable` size. All of that travels with the file, so the engine loaded it
as a whole log that merely ended earlier, and a fresh client got every row as it was at the
copy, and none of the changes since (chaos, MEDIUM: 364 of 1104 rows missing). Where each
log ended when made durable is now noted apart from its files (`log/ends.py`): the shape is
retired (the slot was confirmed past what was lost), and clients refetch.

Real path: the engine as a process, a private Postgres cluster, the real npm client.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.faults.cluster import FaultCluster, hold_slot, until_slot_found_held
from tests.faults.test_damaged_files import (
    CONFIRMED,
    Db,
    NpmClient,
    _files,
    _live,
    _npm_view,
    pg,  # noqa: F401 (the module's cluster)
)
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows, until_equal
from tests.support.waiting import wait_until, wait_until_async

#: What is put back of the backup: the chunk file; the whole shapes directory (a restore of
#: it, which brought back an older note of the log ends with it while that was kept there);
#: the chunk file, the note of the log ends deleted, or zeroed (chaos 17:00); the chunk file
#: and an older copy of the note with it, or the note and `log-ends-kept` both deleted, while
#: the saved replication position stays current (chaos 19:48).
HOWS = [
    "chunk", "shapes directory", "chunk, log-ends deleted", "chunk, log-ends zeroed",
    "chunk, log-ends older", "chunk, log-ends and log-ends-kept deleted",
]  # fmt: skip
FROM_START = {"table": "d", "offset": "-1"}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", HOWS)
async def test_an_older_copy_of_a_log_chunk_with_its_xattrs_is_not_served(
    pg: FaultCluster,  # noqa: F811
    tmp_path: Path,
    how: str,
) -> None:
    db, data, engine = _engine_on_table_d(pg, tmp_path)
    await asyncio.to_thread(engine.start)
    npm = NpmClient(engine.url, "d")
    old = tmp_path / "old"
    old.mkdir()

    def confirmed() -> bool:
        (flushed, current), *_ = db.query(CONFIRMED, (f"shapegate_slot_{db.name}",))
        assert isinstance(flushed, int) and isinstance(current, int)
        return flushed >= current

    try:
        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            follower = Follower(engine.url, table="d")
            tasks = [asyncio.create_task(follower.run(session, stop))]
            await wait_until_async(_live(follower), timeout=30, message="live")
            await asyncio.to_thread(db.write, "d", 1000, 20)
            await until_equal([follower], [expected_rows(db.url, None, table="d")], 30)
            assert follower.handle
            (chunk,) = _files(data, follower.handle)["log"]  # (one chunk: 10 MiB)
            # The backup: the shapes directory as it is now, xattrs and all.
            shapes = chunk.parent
            subprocess.run(["cp", "-a", str(shapes), str(old)], check=True)
            ends = shapes.parent / "log-ends"
            subprocess.run(["cp", "-a", str(ends), str(old)], check=True)
            copy = old / shapes.name / chunk.name
            durable = os.getxattr(copy, "user.shapegate.durable")  # (kept by the copy)
            assert int(durable) == copy.stat().st_size
            await asyncio.to_thread(db.write, "d", 2000, 20)
            await until_equal([follower], [expected_rows(db.url, None, table="d")], 30)
            assert chunk.stat().st_size > copy.stat().st_size
            # (taken now: the follower goes on, and moves to the new shape once this one is
            # retired, its handle with it)
            old_handle = follower.handle
            pg.query("SELECT pg_switch_wal()")
            await wait_until_async(confirmed, timeout=60, message="slot confirmed")
            engine.kill()
            if how == "shapes directory":  # the mix-up
                subprocess.run(["rm", "-rf", str(shapes)], check=True)
                subprocess.run(["cp", "-a", str(old / shapes.name), str(shapes)], check=True)
            else:
                subprocess.run(["cp", "-a", str(copy), str(chunk)], check=True)
            if how.endswith("older"):
                subprocess.run(["cp", "-a", str(old / ends.name), str(ends)], check=True)
            elif how.endswith("log-ends-kept deleted"):
                ends.unlink()
                (shapes.parent / "log-ends-kept").unlink()
            elif how.endswith("deleted"):
                ends.unlink()
            elif how.endswith("zeroed"):
                ends.write_bytes(b"\0" * ends.stat().st_size)
            await asyncio.to_thread(engine.start)
            # A sync of the old shape's log, from its snapshot's end to its up-to-date: a
            # 409 (retired), never a whole answer that lacks the last 20 transactions.
            assert await _sync_old(session, engine.url, old_handle) == 409
            await npm.start()
            await asyncio.to_thread(db.write, "d", 3000, 10)
            fresh = Follower(engine.url, table="d")
            tasks.append(asyncio.create_task(fresh.run(session, stop)))
            expected = expected_rows(db.url, None, table="d")
            await until_equal([follower, fresh], [expected, expected], 30)
            await wait_until_async(
                lambda: _npm_view(npm.rows) == expected,
                timeout=30,
                message=f"the npm client's view (errors {npm.errors[-3:]})",
            )
            stop.set()
            await asyncio.gather(*tasks)
        for f in (follower, fresh):
            f.assert_clean()
        assert follower.resets >= 1  # (its shape was retired: 409, refetched)
        assert not npm.errors, npm.errors
        said = "cannot be checked" if "log-ends" in how else "an older copy of a chunk file?"
        assert said in engine.log.read_text()
    finally:
        await npm.stop()
        engine.stop()
        db.drop(pg)


def _engine_on_table_d(cluster: FaultCluster, tmp_path: Path) -> tuple[Db, Path, EngineProcess]:
    """A database of its own with a table `d` of 100 rows, and an engine (not started) on it
    with its data dir under `tmp_path`."""
    db = Db(cluster)
    db.query("CREATE TABLE d (id int PRIMARY KEY, v int NOT NULL)")
    db.query("INSERT INTO d SELECT g, 0 FROM generate_series(1, 100) g")
    data = tmp_path / "data"
    data.mkdir()
    engine = EngineProcess(
        db.url, data, "--long-poll-timeout", "1", "--replication-stream-id", db.name,
        "--replication-timeout", "3",
    )  # fmt: skip
    return db, data, engine


async def _sync_old(session: aiohttp.ClientSession, url: str, handle: str) -> int:
    """Follow `handle`'s log from its snapshot's end until up to date: the status that ended
    it (409: retired; 200: an up-to-date, here refused: the log lost 20 transactions the
    slot is past).

    Not from -1, which names no shape (its handle is ignored, as Electric's): it gets the
    definition's shape as it is then, the new one once the follower's refetch made it, whose
    up-to-date is whole and right. Nor with the follower's handle read after the restart: the
    follower has moved to the new shape by then, or not, as the machine's load has it (ci4:
    a 200 up-to-date of the new shape, taken for the old one's)."""
    offset = "0_inf"
    while True:
        params = {"table": "d", "handle": handle, "offset": offset}
        async with session.get(f"{url}/v1/shape", params=params) as r:
            await r.read()
            if r.status == 503:
                await asyncio.sleep(0.2)
                continue
            if r.status != 200 or "electric-up-to-date" in r.headers:
                return r.status
            offset = r.headers["electric-offset"]


@pytest.mark.timeout(240)
async def test_a_start_ended_before_its_slot_check_leaves_the_cut_to_the_next(
    pg: FaultCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """chaos 19:37 (HIGH): the older chunk copy put back and log-ends deleted, the start that
    finds it is killed after its load and before the replicator asks the slot (here: the
    slot is held by another connection meanwhile, so that check cannot come). That load
    rewrote log-ends with no line for the shape it had found unverifiable, so the next start
    read a whole, readable file that vouched for the older log: every fresh client got a
    whole up-to-date missing the last 20 transactions, for good. The next start must find
    the cut again, and retire the shape (the slot is past what was lost)."""
    db, data, engine = _engine_on_table_d(pg, tmp_path)
    slot = f"shapegate_slot_{db.name}"
    await asyncio.to_thread(engine.start)
    old = tmp_path / "old"
    old.mkdir()
    holder: psycopg.Connection[Any] | None = None

    def confirmed() -> bool:
        (flushed, current), *_ = db.query(CONFIRMED, (slot,))
        assert isinstance(flushed, int) and isinstance(current, int)
        return flushed >= current

    def held() -> bool:
        return db.query(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ) == [(True,)]

    try:
        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            follower = Follower(engine.url, table="d")
            task = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(_live(follower), timeout=30, message="live")
            await asyncio.to_thread(db.write, "d", 1000, 20)
            await until_equal([follower], [expected_rows(db.url, None, table="d")], 30)
            assert follower.handle
            old_handle = follower.handle
            (chunk,) = _files(data, old_handle)["log"]
            subprocess.run(["cp", "-a", str(chunk), str(old)], check=True)
            await asyncio.to_thread(db.write, "d", 2000, 20)
            await until_equal([follower], [expected_rows(db.url, None, table="d")], 30)
            stop.set()
            await task
            pg.query("SELECT pg_switch_wal()")
            await wait_until_async(confirmed, timeout=60, message="slot confirmed")
            engine.kill()
            subprocess.run(["cp", "-a", str(old / chunk.name), str(chunk)], check=True)
            (chunk.parent.parent / "log-ends").unlink()

            # The first start: loads (the shape found unverifiable), then cannot stream.
            holder = hold_slot(db.url, slot, f"shapegate_pub_{db.name}")
            await asyncio.to_thread(wait_until, held, timeout=30, message="slot held")
            engine.spawn()
            await asyncio.to_thread(until_slot_found_held, engine)
            assert "cannot be checked" in engine.log_tail(100_000)
            # Nothing of the cut shape is served before the check decides its fate, not
            # even its snapshot (whole, but of a shape about to go): the stream's 503.
            async with session.get(f"{engine.url}/v1/shape", params=FROM_START) as r:
                await r.read()
                assert (r.status, r.headers.get("electric-handle")) == (503, None)
            engine.kill()  # (before the slot check: it never ran)
            holder.close()
            holder = None
            await asyncio.to_thread(wait_until, lambda: not held(), timeout=30, message="free")

            # The next start: the cut is found again, the shape retired.
            await asyncio.to_thread(engine.start)
            assert await _sync_old(session, engine.url, old_handle) == 409
            fresh = Follower(engine.url, table="d")
            stop = asyncio.Event()
            task = asyncio.create_task(fresh.run(session, stop))
            await until_equal([fresh], [expected_rows(db.url, None, table="d")], 30)
            stop.set()
            await task
        fresh.assert_clean()
    finally:
        if holder is not None:
            holder.close()
        engine.stop()
        db.drop(pg)
