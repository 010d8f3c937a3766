"""A big transaction (a bulk insert, a backfill) is written while the engine goes on answering,
and Postgres never drops the stream for it.

The engine used to write a transaction's changes to every shape's log in one synchronous call
at its Commit: for a million rows no HTTP request was answered for ~30 s (not even
/v1/health), and once that outlasted Postgres's `wal_sender_timeout` the walsender dropped the
stream, the engine read the transaction again from the start, and it could loop for ever, every
client stale. Here the walsender gives up after 1 s of silence and the transaction takes the
engine seconds to write: it must be written once, the engine answering requests meanwhile
(before any of it is visible). (A crash in the middle of it: tests/sync_engine/log/
test_files.py, the parts written are cut off on load and the slot sends it again.)

Real path: the engine as a process (fsync on), a private cluster (`impatient` in conftest).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async

ROWS = 25_000
#: Followed: every row goes to the first shape, half of them to the second.
WHERES = [None, "id % 2 = 0"]
#: Not followed (what a client reads costs the test more than what the engine writes):
#: every row goes to each of these too, ~190k entries in all to write.
MORE = ["id > 0", "id >= 0", "id > -1", "v >= 0", "v < 1", "v = 0"]
STARTED = "a part at a time"  # the engine's line when it begins writing a big transaction
DELIVERED = "changes delivered to"  # ... and when it has published it


async def _read_whole(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every message of a shape, read from the start until up to date."""
    out: list[dict[str, Any]] = []
    offset, handle = "-1", ""
    while True:
        async with session.get(f"{url}&offset={offset}&handle={handle}") as r:
            assert r.status == 200, r.status
            out += await r.json()
            offset, handle = r.headers["electric-offset"], r.headers["electric-handle"]
            if "electric-up-to-date" in r.headers:
                return out


async def _ok(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as r:
        await r.read()
        assert r.status == 200, (url, r.status)


@pytest.mark.timeout(120)
async def test_big_transaction_is_written_once_while_the_engine_answers(
    impatient: FaultCluster, tmp_path: Path
) -> None:
    db = impatient
    db.query("CREATE TABLE other (id int PRIMARY KEY, v int NOT NULL)")
    db.query("INSERT INTO other VALUES (1, 0)")
    # (Small chunks: a reader of a 10 MB chunk holds the event loop for a few 100 ms, which
    # a 1 s wal_sender_timeout does not forgive; not what this test is about.)
    args = ("--long-poll-timeout", "2", "--chunk-bytes", str(256 * 1024))
    engine = EngineProcess(db.url, tmp_path / "data", *args)
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w) for w in WHERES]
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, followers, stop)
            for where in MORE:
                await _ok(session, f"{engine.url}/v1/shape?table=items&offset=-1&where={where}")
            other = f"{engine.url}/v1/shape?table=other&offset=-1"
            await _ok(session, other)
            await asyncio.to_thread(
                db.query,
                f"INSERT INTO items SELECT g, 0 FROM generate_series(1000, {999 + ROWS}) g",
            )
            await wait_until_async(
                lambda: STARTED in engine.log_tail(100_000),
                timeout=30,
                message="the engine writing the big transaction",
            )
            # While it is being written, the engine answers: health, and another shape's
            # request. (Answered, then the transaction still unpublished: an ordering fact.)
            answered_during = False
            while not answered_during and DELIVERED not in engine.log_tail(100_000):
                await _ok(session, f"{engine.url}/v1/health")
                await _ok(session, other)
                answered_during = DELIVERED not in engine.log_tail(100_000)
            assert answered_during, "no answer until the big transaction was written"
            assert [len(f.rows) for f in followers] == [20, 10], "visible before it was written"
            expected = [expected_rows(db.url, w) for w in WHERES]
            await until_equal(followers, expected, timeout=60)
            stop.set()
            await asyncio.gather(*tasks)
            # Written in parts, it is still one transaction to a client: its last change
            # (only) says so.
            shape = f"{engine.url}/v1/shape?table=items&where=id % 2 = 0"
            messages = await _read_whole(session, shape)
            big = [m for m in messages if "key" in m and int(m["value"]["id"]) >= 1000]
            assert len(big) == ROWS // 2
            assert [i for i, m in enumerate(big) if m["headers"].get("last")] == [len(big) - 1]
        for f in followers:
            f.assert_clean()
        server_log = (db.dir / "server.log").read_text(errors="replace")
        assert "replication timeout" not in server_log, "Postgres dropped the stream"
        assert "stream lost" not in engine.log_tail(100_000)
    finally:
        stop.set()
        engine.stop()
