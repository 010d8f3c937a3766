"""A shape's file cut short (or deleted) while the engine was down (a torn write the disk
lost, a restore from a partial copy): found on restart, and no client is served around the
hole.

The engine (small chunks: a snapshot of several chunk files, a log of several) serves a
shape a follower has synced live; the engine is SIGKILLed once the slot is confirmed past
everything (the cut changes will not be sent again), one file is cut to half its size, and
the engine started again. The follower resumes from its handle and offset, and a fresh one
starts from `-1`: each must end equal to `SELECT` with every change once (a 409 that sends
it back to `-1` is fine; a body without the cut changes is not), every body whole.

Real path: the engine as a process, a private Postgres cluster (one for the module, a
database per case), a writer.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from sync_engine.log.framing import HEADER_SIZE, scan, seed_of
from tests.faults.cluster import FaultCluster
from tests.faults.test_damaged_files import Db, pg  # noqa: F401 (pg: a fixture)
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows, until_equal
from tests.support.waiting import wait_until_async

CONFIRMED = (
    "SELECT (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint"
    " FROM pg_replication_slots WHERE database = current_database()"
)


def _seed(chunk: Path) -> int:
    return seed_of(chunk.name.split(".", 1)[0])  # (its shape's handle)


def _victim(data: Path, which: str) -> Path:
    shapes = sorted(data.rglob("*.log.*.log")), sorted(data.rglob("*.snapshot.*.json"))
    logs, snapshot_chunks = shapes
    packs = sorted(data.rglob("*.pack"))
    found = {
        "last log chunk": logs[-1:],
        "last log chunk, whole records": logs[-1:],
        "last log chunk, deleted": logs[-1:],
        "first log chunk": logs[:1],
        "snapshot chunk": snapshot_chunks[:1],
        "pack": packs[-1:],
    }[which]
    assert found, (which, sorted(p.name for p in data.rglob("*")))
    assert which == "pack" or len(logs) > 2, [p.name for p in logs]
    return found[0]


def _cut_at(victim: Path, which: str) -> int:
    """Where to cut: a log chunk at the start of its middle record (whole records lost,
    nothing torn) or inside it (`last log chunk`: a torn record); others in half."""
    size = victim.stat().st_size
    if "log" not in which:
        return size // 2
    records = scan(victim.read_bytes(), _seed(victim)).records
    assert len(records) > 2, records
    start = records[len(records) // 2][0]
    return start + HEADER_SIZE + 5 if which == "last log chunk" else start


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "which",
    [
        "last log chunk",
        "last log chunk, whole records",
        "last log chunk, deleted",
        "first log chunk",
        "snapshot chunk",
        "pack",
    ],
)
async def test_a_file_cut_short_while_the_engine_was_down_is_never_served_around(
    pg: FaultCluster,  # noqa: F811 (one cluster for the module, a database per case)
    tmp_path: Path,
    which: str,
) -> None:
    db = Db(pg)
    db.query("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
    db.query("INSERT INTO items SELECT g, 0 FROM generate_series(1, 200) g")
    data = tmp_path / "data"
    # (a short replication timeout: the engine asks Postgres for a keepalive after 1.5 s of
    # silence, whose WAL end it confirms: the slot is confirmed past everything within
    # seconds, not at the next 10 s status update)
    args = ("--long-poll-timeout", "1", "--chunk-bytes", "1500", "--replication-timeout", "3")
    engine = EngineProcess(db.url, data, *args)
    await asyncio.to_thread(engine.start)
    writer = Writer(db.url)
    follower = Follower(engine.url)
    try:
        async with aiohttp.ClientSession() as session:
            stop, stop_writer = asyncio.Event(), asyncio.Event()
            following = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, timeout=30, message="live")
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(lambda: writer.committed >= 80, timeout=60, message="writes")
            stop_writer.set()
            await writing
            # a last log chunk of three records or more (to cut one in its middle)
            for _ in range(20):
                logs = sorted(data.rglob("*.log.*.log"))
                if len(scan(logs[-1].read_bytes(), _seed(logs[-1])).records) >= 3:
                    break
                db.query("UPDATE items SET v = v + 1 WHERE id = 1")
                await asyncio.sleep(0.3)
            await until_equal([follower], [expected_rows(db.url, None)], 30)

            def confirmed() -> bool:
                (flushed, current), *_ = db.query(CONFIRMED)
                return (
                    isinstance(flushed, int) and isinstance(current, int) and (flushed >= current)
                )

            db.query("SELECT pg_switch_wal()")  # (WAL the slot can confirm past)
            await wait_until_async(confirmed, timeout=60, message="slot confirmed")
            stop.set()
            await following
            engine.kill()
            victim = _victim(data, which)
            if which.endswith("deleted"):
                victim.unlink()
            else:
                os.truncate(victim, _cut_at(victim, which))

            await asyncio.to_thread(engine.start)
            # more changes after the restart, as a live app would see
            writer.next_id += 1000
            stop_writer = asyncio.Event()
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(
                lambda: writer.committed >= 100, timeout=60, message="writes after"
            )
            stop_writer.set()
            await writing
            fresh = Follower(engine.url)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(f.run(session, stop)) for f in (follower, fresh)]
            expected = expected_rows(db.url, None)
            await until_equal([follower, fresh], [expected, expected], 60)
            stop.set()
            await asyncio.gather(*tasks)
        for f in (follower, fresh):
            f.assert_clean()
        # the damage was found: the follower was sent back to -1 (the slot is past it)
        assert follower.resets == 1, follower.statuses
    finally:
        engine.stop()
        db.drop(pg)
