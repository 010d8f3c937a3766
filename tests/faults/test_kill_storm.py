"""The engine SIGKILLed while a storm of new shapes is being created and written to, with
small log chunks (so chunks are cut all the time), then restarted on the same data
directory.

Real path: the engine as a process on the shared test cluster, 150 clients asking for 150
new shapes at once while a writer commits; the engine is killed when about half of them
are live, with snapshots in flight, packs being written and chunks being cut. Clients
resume with their handle and offset (a 409 sends one back to -1); each must end equal to
`SELECT`, every change seen once, every body whole.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows
from tests.support.waiting import wait_until_async

ROWS = 150
WHERES = [f"id = {i}" for i in range(1, ROWS + 1)] + [None, "id % 3 = 0", "v > 2"]


@pytest.mark.timeout(240)
async def test_engine_killed_mid_storm_resumes_exactly(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO items SELECT g, 0 FROM generate_series(1, {ROWS}) g")
    args = ("--long-poll-timeout", "2", "--chunk-bytes", "2048")
    engine = EngineProcess(db_url, tmp_path / "data", *args)
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w) for w in WHERES]
    writer = Writer(db_url, rows=ROWS)
    stop_followers, stop_writer = asyncio.Event(), asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(lambda: writer.committed >= 20, timeout=30, message="writes")
            tasks = [asyncio.create_task(f.run(session, stop_followers)) for f in followers]
            await wait_until_async(
                lambda: sum(f.live for f in followers) >= len(followers) // 2,
                timeout=60,
                interval=0.005,
                message="half the shapes live",
            )
            engine.kill()
            target = writer.committed + 20
            await wait_until_async(
                lambda: writer.committed >= target, timeout=30, message="writes while down"
            )
            await asyncio.to_thread(engine.start)
            target = writer.committed + 50
            await wait_until_async(
                lambda: writer.committed >= target, timeout=60, message="writes after"
            )
            stop_writer.set()
            await writing
            expected = [expected_rows(db_url, w) for w in WHERES]

            def converged() -> bool:
                return all(f.rows == e for f, e in zip(followers, expected, strict=True))

            await wait_until_async(converged, timeout=90, message="every client equal to SELECT")
            stop_followers.set()
            await asyncio.gather(*tasks)
        bad = [
            (f.where, f.counts(), f.bad_bodies[:1]) for f in followers if any(f.counts().values())
        ]
        assert not bad, bad
        statuses = sum((f.statuses for f in followers), start=Counter())
        assert not [s for s in statuses if s >= 500 and s != 503], statuses
        print(
            f"\nstorm kill: {writer.committed} commits, statuses {dict(statuses)},"
            f" resets {sum(f.resets for f in followers)}"
        )
    finally:
        stop_writer.set()
        stop_followers.set()
        engine.stop()
