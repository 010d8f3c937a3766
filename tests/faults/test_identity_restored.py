"""A shaped table whose REPLICA IDENTITY someone set back to DEFAULT gets FULL again at its
next new shape, so its clients settle.

The engine set FULL when it first published a table, never again: after a DBA's (or a
migration tool's) `ALTER TABLE items REPLICA IDENTITY DEFAULT`, every UPDATE came without
its old row and retired every shape of the table whose where reads other columns than the
key, the refetched shapes too, for as long as writes went on (a client never settled:
a 409 and a whole snapshot per row change). As Electric does when it configures a shape's
table, a new shape of a published table (a refetch makes one) sets FULL again.

Real path: the engine as a process, a follower that acts as the client does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower
from tests.support.waiting import wait_until_async


def _sql(db_url: str, statement: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(statement.encode())


def _identity(db_url: str) -> str:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(b"SELECT relreplident FROM pg_class WHERE relname = 'items'").fetchone()
    assert row is not None
    return str(row[0])


def _titles(db_url: str) -> dict[str, str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(b"SELECT id, title FROM items WHERE n > 50").fetchall()
    return {str(i): t for i, t in rows}


@pytest.mark.timeout(90)
async def test_a_refetched_shape_sets_replica_identity_full_again(
    db_url: str, tmp_path: Path
) -> None:
    _sql(db_url, "CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    _sql(db_url, "INSERT INTO items SELECT g, 't', g FROM generate_series(1, 100) g")
    engine = EngineProcess(db_url, tmp_path / "data", "--long-poll-timeout", "1")
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    follower = Follower(engine.url, "n > 50", increments=False)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(follower.run(session, stop))

            def view() -> dict[str, str]:
                return {r["id"]: r["title"] for r in follower.rows.values()}

            await wait_until_async(lambda: follower.live, timeout=20, message="first sync")
            assert _identity(db_url) == "f"
            _sql(db_url, "ALTER TABLE items REPLICA IDENTITY DEFAULT")
            for k in range(6):
                _sql(db_url, f"UPDATE items SET title = 'u{k}' WHERE id = 60")
                await wait_until_async(
                    lambda: follower.live and view() == _titles(db_url),
                    timeout=20,
                    message=f"update {k}",
                )
            # the first UPDATE without its old row retired the shape; its refetch set FULL
            # again, so the later ones came with their old row: no more refetches
            assert _identity(db_url) == "f"
            assert follower.resets == 1, follower.statuses
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        stop.set()
        await asyncio.to_thread(engine.stop)
