"""Two writers racing on the same few rows while the engine is SIGKILLed and restarted, and
Postgres restarted (fast, immediate).

The writers move rows in and out of the shapes' where clauses, delete and insert a key
again in one transaction, change primary keys, and collide (unique violations, deadlocks:
rolled back). Clients follow five shapes over HTTP, resuming with their handle and offset
across each restart (two more live over SSE), and the real npm client two (one over SSE). Each must end equal
to `SELECT`, every insert new, every update and delete finding its row, every body whole.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, Literal

import aiohttp
import psycopg
import pytest

from tests.faults.cluster import FaultCluster, StopMode
from tests.faults.test_damaged_files import NpmClient, _npm_view
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async

KEYS = 40
COLUMNS = ("id", "v", "g")
WHERES = [None, "g = 0", "g IN (1, 2)", "v % 3 = 0", "id < 20 AND g <> 3"]
#: What happens under the writers, in turn: the engine SIGKILLed (and started again after
#: a few writes), Postgres stopped (fast: a clean shutdown; immediate: as a crash, the slot
#: back to its last checkpointed position) and started again.
FAULTS: list[Literal["kill"] | StopMode] = ["kill", "fast", "kill", "immediate", "kill"]
NPM_CLIENTS = [(None, False), ("g IN (1, 2)", True)]
SSE_WHERES = [None, "v % 3 = 0"]


async def _race(db_url: str, seed: int, stop: asyncio.Event, counts: list[int]) -> None:
    """Random small transactions on keys 1..KEYS until stopped; failed ones roll back. While
    Postgres restarts it connects again (`counts[2]`: connections lost)."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                db_url, autocommit=True, connect_timeout=5
            ) as conn:
                await _race_on(conn, rng, stop, counts)
        except psycopg.OperationalError:
            counts[2] += 1
            await asyncio.sleep(0.1)


async def _race_on(
    conn: psycopg.AsyncConnection[Any], rng: random.Random, stop: asyncio.Event, counts: list[int]
) -> None:
    while not stop.is_set():
        k, k2 = rng.randint(1, KEYS), rng.randint(1, KEYS)
        try:
            async with conn.transaction():
                for _ in range(rng.randint(1, 3)):
                    op = rng.random()
                    if op < 0.3:  # in or out of the where clauses
                        await conn.execute(
                            "UPDATE items SET g = %s WHERE id = %s", (rng.randint(0, 3), k)
                        )
                    elif op < 0.5:
                        await conn.execute("UPDATE items SET v = v + 1 WHERE id = %s", (k,))
                    elif op < 0.65:  # the same key deleted and made again
                        await conn.execute("DELETE FROM items WHERE id = %s", (k,))
                        await conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s)",
                            (k, rng.randint(0, 9), rng.randint(0, 3)),
                        )
                    elif op < 0.8:  # a primary key change
                        await conn.execute("UPDATE items SET id = %s WHERE id = %s", (k2, k))
                    elif op < 0.9:
                        await conn.execute("DELETE FROM items WHERE id = %s", (k,))
                    else:
                        await conn.execute(
                            "INSERT INTO items VALUES (%s, 0, %s) ON CONFLICT (id) DO"
                            " UPDATE SET v = items.v + 1, g = EXCLUDED.g",
                            (k, rng.randint(0, 3)),
                        )
            counts[0] += 1
        except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
            counts[1] += 1
        await asyncio.sleep(0.002)


async def _committed(counts: list[int], more: int, what: str) -> None:
    target = counts[0] + more
    await wait_until_async(lambda: counts[0] >= target, timeout=60, message=what)


@pytest.mark.timeout(180)
async def test_racing_writers_across_engine_kills(cluster: FaultCluster, tmp_path: Path) -> None:
    cluster.query("ALTER TABLE items ADD COLUMN g int NOT NULL DEFAULT 0")
    cluster.query(
        f"INSERT INTO items SELECT g, g % 5, g % 4 FROM generate_series(21, {KEYS}) g".replace(
            "%", "%%"
        )
    )
    args = ("--long-poll-timeout", "2", "--chunk-bytes", "4096")
    engine = EngineProcess(cluster.url, tmp_path / "data", *args)
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w, increments=False) for w in WHERES]
    # and over SSE, resumed from each up-to-date's global_last_seen_lsn as the npm client does
    followers += [Follower(engine.url, w, increments=False, sse=True) for w in SSE_WHERES]
    # the real npm client, live over long-polls and over SSE
    npms = [NpmClient(engine.url, "items", w, sse=sse) for w, sse in NPM_CLIENTS]
    stop_followers, stop_writers = asyncio.Event(), asyncio.Event()
    counts = [0, 0, 0]  # committed, rolled back, connections lost
    try:
        for npm in npms:
            await npm.start()
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, followers, stop_followers)
            writers = [
                asyncio.create_task(_race(cluster.url, seed, stop_writers, counts))
                for seed in (1, 2)
            ]
            for fault in FAULTS:
                await _committed(counts, 100, f"races before {fault}")
                if fault == "kill":
                    engine.kill()
                    await _committed(counts, 50, "races while down")
                    await asyncio.to_thread(engine.start)
                else:  # Postgres restarted under the engine, its writers and clients
                    await asyncio.to_thread(cluster.stop_server, fault)
                    await asyncio.to_thread(cluster.start)
            await _committed(counts, 100, "races after")
            stop_writers.set()
            await asyncio.gather(*writers)
            expected = [expected_rows(cluster.url, f.where, COLUMNS) for f in followers]
            await until_equal(followers, expected, timeout=60)
            for npm, (where, sse) in zip(npms, NPM_CLIENTS, strict=True):
                want = expected_rows(cluster.url, where, COLUMNS)
                want = {k: {c: str(v) for c, v in row.items()} for k, row in want.items()}

                def sees(npm: NpmClient = npm, want: dict[str, dict[str, Any]] = want) -> bool:
                    return _npm_view(npm.rows) == want

                await wait_until_async(
                    sees,
                    timeout=60,
                    message=f"the npm client's view of {where!r} (sse {sse}, {npm.errors[-3:]})",
                )
            stop_followers.set()
            await asyncio.gather(*tasks)
        for f in followers:
            f.assert_clean()
        print(
            f"\nracing: {counts[0]} committed, {counts[1]} rolled back, {counts[2]} connections"
            f" lost, resets {[f.resets for f in followers]}"
        )
    finally:
        for npm in npms:
            await npm.stop()
        stop_writers.set()
        stop_followers.set()
        engine.stop()
