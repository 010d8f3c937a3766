"""A new primary key never lets a row overwrite another in a client, not even for the few
seconds before the periodic schema check.

`ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id, org_id)` changes how
rows are keyed without a row change in the WAL, and the Relation message pgoutput sends
next carries no primary key (with REPLICA IDENTITY FULL, which the engine sets, every
column is flagged as key). The engine used to stream the next rows under the old key until
its periodic check (`--schema-check-interval`, 10 s by default) saw the new key: a row new
under the new key, `(1, 2)` next to `(1, 1)`, came as `insert "public"."items"/"1"` and
replaced row (1, 1) in every client (4 rows in SELECT, 3 in clients). Now each Relation
message for a shaped table has its shapes compared with the catalog before the table's
next change: the shape is retired (409) and clients refetch under the new key.

The periodic check is pushed out of reach (`--schema-check-interval 3600`), so only the
in-stream check can save the clients: on the old code both cases below fail every time.
Cases: the DDL while the engine streams (a Relation message mid-session), and the DDL
while the engine is down (the first Relation message of the session after its restart).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower
from tests.support.waiting import wait_until_async


def _sql(db_url: str, *statements: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for s in statements:
            conn.execute(s.encode())


def _select(db_url: str) -> list[tuple[str, ...]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(b"SELECT id, org_id, title FROM items").fetchall()
    return sorted(tuple(str(x) for x in row) for row in rows)


def _view(rows: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(r[c]) for c in ("id", "org_id", "title")) for r in rows.values())


@pytest.mark.timeout(90)
async def test_a_row_new_under_a_new_primary_key_overwrites_nothing(
    db_url: str, tmp_path: Path
) -> None:
    _sql(
        db_url,
        "CREATE TABLE items (id int PRIMARY KEY, org_id int NOT NULL, title text NOT NULL)",
        "INSERT INTO items VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'c')",
    )
    engine = EngineProcess(
        db_url, tmp_path / "data", "--long-poll-timeout", "1", "--schema-check-interval", "3600"
    )
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, increments=False), Follower(engine.url, increments=False)]
    followers[1].sse = True
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(f.run(session, stop)) for f in followers]

            async def converged(what: str, marker: str) -> None:
                # (the marker row comes after the colliding one: once a client has it, the
                # colliding row reached it too, or its shape was retired before)
                def done() -> bool:
                    return all(
                        f.live and any(r["title"] == marker for r in f.rows.values())
                        for f in followers
                    )

                await wait_until_async(done, timeout=30, message=what)
                for f in followers:
                    assert _view(f.rows) == _select(db_url), (what, f.sse, f.statuses)
                    assert f.duplicated == f.lost == 0, (what, f.counts())

            _sql(db_url, "INSERT INTO items VALUES (4, 2, 'first')")
            await converged("first sync", "first")
            handle = followers[0].handle
            # 1. while the engine streams: a new key, a row new under it only, a marker
            _sql(
                db_url,
                "ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id, org_id)",
                "INSERT INTO items VALUES (1, 2, 'dup')",
                "INSERT INTO items VALUES (5, 1, 'm1')",
            )
            await converged("a new primary key while streaming", "m1")
            assert followers[0].handle != handle
            assert all(f.resets == 1 for f in followers), [f.statuses for f in followers]
            assert not [s for f in followers for s in f.statuses if s >= 500]
            # 2. while the engine is down: the first Relation message after the restart
            await asyncio.to_thread(engine.stop)
            _sql(
                db_url,
                "ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id, title)",
                "INSERT INTO items VALUES (2, 1, 'z')",  # (2, 1) is row 'b' under the old key
                "INSERT INTO items VALUES (6, 1, 'm2')",
            )
            await asyncio.to_thread(engine.start)
            await converged("a new primary key while the engine was down", "m2")
            assert all(f.resets == 2 for f in followers), [f.statuses for f in followers]
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        stop.set()
        await asyncio.to_thread(engine.stop)
