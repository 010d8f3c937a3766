"""A big transaction parked behind a shape's running snapshot is written while the engine
goes on answering, and arrives whole, once.

A transaction that commits while a new shape's snapshot runs is parked on the shape until
the snapshot's horizon is known (`Replicator.release_pending`), then appended. The stream
loop writes a big transaction a part at a time, the event loop running between parts, but
a parked one was written in one synchronous call when the snapshot ended: for a bulk insert
no request of any source was answered meanwhile. Now it is written a part at a time too, by
the task that writes held transactions (`_settle_held`), the shape's later transactions
behind it in order.

Real path: the engine as a process (fsync on), a private cluster. The snapshot is held back
by a lock queued behind the bulk insert's, so that the insert commits while it runs. What
the test watches is the shape's log file: /v1/health answered while the file held part of
the transaction and not all of it, which a write in one call never shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

ROWS = 20_000
PARKED = " shapes in "  # the big transaction read (and parked on the new shape)
WRITTEN = "delivered to shape"  # ... and written once the snapshot ended


def _log_bytes(data: Path) -> int:
    return sum(f.stat().st_size for f in data.rglob("*.log.*.log"))


def _waiting(db: FaultCluster, mode: str) -> bool:
    """Whether some session waits for a `mode` lock on items."""
    rows = db.query(
        "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass"
        " AND mode = %s AND NOT granted",
        (mode,),
    )
    return bool(rows[0][0])


async def _read_whole(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    offset, handle = "-1", ""
    while True:
        async with session.get(f"{url}&offset={offset}&handle={handle}") as r:
            assert r.status == 200, r.status
            for m in await r.json():
                if "key" in m:
                    assert m["headers"]["operation"] == "insert"
                    assert m["key"] not in rows, "a row twice"
                    rows[m["key"]] = m["value"]
            offset, handle = r.headers["electric-offset"], r.headers["electric-handle"]
            if "electric-up-to-date" in r.headers:
                return rows


@pytest.mark.timeout(120)
async def test_a_big_parked_transaction_is_written_while_the_engine_answers(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    db = cluster
    engine = EngineProcess(db.url, tmp_path / "data", "--long-poll-timeout", "2")
    await asyncio.to_thread(engine.start)
    writer = psycopg.connect(db.url)
    locker = psycopg.connect(db.url)
    try:
        async with aiohttp.ClientSession() as session:
            # (the table published first: a new shape of a published table goes straight
            # to its snapshot, which the lock below holds back)
            async with session.get(f"{engine.url}/v1/shape?table=items&offset=-1&where=id<0") as r:
                assert r.status == 200
        writer.execute(f"INSERT INTO items SELECT g, 0 FROM generate_series(1000, {999 + ROWS}) g")
        # Queued behind the insert's lock, this one holds back the snapshot's query (new
        # lock requests wait behind it) until after the insert commits.
        lock = asyncio.create_task(
            asyncio.to_thread(locker.execute, "LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        )
        await wait_until_async(lambda: _waiting(db, "AccessExclusiveLock"), timeout=30)
        async with aiohttp.ClientSession() as session:
            url = f"{engine.url}/v1/shape?table=items"
            first = asyncio.create_task(session.get(f"{url}&offset=-1"))
            await wait_until_async(lambda: _waiting(db, "AccessShareLock"), timeout=30)
            await asyncio.to_thread(writer.commit)
            await lock
            await wait_until_async(
                lambda: PARKED in engine.log_tail(100_000),
                timeout=30,
                message="the big transaction parked",
            )
            await asyncio.to_thread(locker.rollback)  # the snapshot runs on, then ends
            data = tmp_path / "data"
            # (log bytes before and after each answer; until written, or a second unchanged)
            sizes: list[tuple[int, int]] = []
            stable = 0
            while WRITTEN not in engine.log_tail(100_000) and stable < 200:
                before = _log_bytes(data)
                async with session.get(f"{engine.url}/v1/health") as r:
                    assert r.status == 200
                sizes.append((before, _log_bytes(data)))
                stable = stable + 1 if sizes[-1][1] and sizes[-1] == sizes[-2:][0] else 0
                await asyncio.sleep(0.005)
            (await first).close()
            whole = _log_bytes(data)
            assert any(0 < before and after < whole for before, after in sizes), (
                "no answer while the parked transaction was written"
            )
            rows = await _read_whole(session, url)
        expected = {f'"public"."items"/"{i}"' for i in [*range(1, 21), *range(1000, 1000 + ROWS)]}
        assert set(rows) == expected
        assert "stream lost" not in engine.log_tail(100_000)
    finally:
        writer.close()
        locker.close()
        engine.stop()
