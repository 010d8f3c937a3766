"""A new shape of a table another transaction holds (a migration's ALTER TABLE, a VACUUM
FULL, a long transaction that read it): its publish needs the table's lock
(`pg.publication.add_table`), and must never wait queued ahead of the application's queries
(`pg.publication.LockWatch`)."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest

from sync_engine import tables
from tests.sync_engine.engine_harness import Engine

#: Seconds the request may take here: beyond the lock wait, below the publish's 30 s.
HOLD = 20.0
#: Seconds the long transaction holds its lock in the measure below.
LONG = 9.0
#: A statement of the application's slower than this counts as blocked, all of it.
BLOCKED = 0.05


async def test_a_first_shape_of_a_locked_table_is_a_clear_503(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration holding the table (ACCESS EXCLUSIVE): its first shape's publish waited
    for the lock the whole publish's 30 s, then answered 503 'Database is not answering'
    (database_unreachable), a false alarm for an operator (proxy 22:54). Now a 503 that
    says the table is locked, once the publish's lock wait ran out (`PUBLISH_LOCK_WAIT`,
    2 s here), and the shape once it ends."""
    monkeypatch.setattr(tables, "PUBLISH_LOCK_WAIT", 2.0)
    engine.sql("CREATE TABLE locked (id int PRIMARY KEY)")
    engine.sql("INSERT INTO locked VALUES (1)")
    holder = await psycopg.AsyncConnection.connect(engine.db_url)
    try:
        await holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        async with asyncio.timeout(HOLD):
            status, headers, body = await engine.get(table="locked", offset="-1")
        assert status == 503, body
        assert body["code"] == "table_locked" and "locked" in body["message"], body
        assert headers["retry-after"]
    finally:
        await holder.rollback()
        await holder.close()
    rows, _, _ = await engine.sync(table="locked")
    assert list(rows) == ['"public"."locked"/"1"']


@pytest.mark.timeout(120)
async def test_a_first_shape_never_blocks_the_application(engine: Engine) -> None:
    """A long transaction has read the table (ACCESS SHARE, for `LONG` s) while the
    application writes it, and a client asks for the table's first shape (retrying its 503s
    as Electric's client does). The shape's `ALTER TABLE ... REPLICA IDENTITY FULL` needs
    the table alone: its lock request, queued behind the long transaction, held every write
    of the application behind it. Before: queued 2 s per try (`lock_timeout`), then a 503
    and the client's retry a second later: the writes were blocked 5.8 s of 9. Now the
    engine asks for the lock only when no long transaction holds one in its way, 100 ms at
    most per try: the writes are never blocked, and the shape comes once the transaction
    ends."""
    engine.sql("CREATE TABLE busy (id serial PRIMARY KEY, v int NOT NULL)")
    engine.sql("INSERT INTO busy (v) VALUES (0)")
    holding, stop = threading.Event(), threading.Event()
    blocked: list[float] = []
    writes = 0

    def hold() -> None:
        with psycopg.connect(engine.db_url) as conn:
            conn.execute("SELECT count(*) FROM busy")  # (ACCESS SHARE, kept to the commit)
            holding.set()
            time.sleep(LONG)
            conn.commit()

    def write() -> None:
        nonlocal writes
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            while not stop.is_set():
                began = time.monotonic()
                conn.execute("INSERT INTO busy (v) VALUES (1)")
                took = time.monotonic() - began
                writes += 1
                if took > BLOCKED:
                    blocked.append(took)
                time.sleep(0.01)

    holder = asyncio.create_task(asyncio.to_thread(hold))
    writer = asyncio.create_task(asyncio.to_thread(write))
    try:
        await asyncio.to_thread(holding.wait, 10)
        started = time.monotonic()
        statuses: list[int] = []

        async def first_shape(**where: str) -> None:
            while True:
                status, headers, body = await engine.get(table="busy", offset="-1", **where)
                statuses.append(status)
                if status == 200:
                    return
                assert status == 503 and body["code"] == "table_locked", body
                assert time.monotonic() - started < 3 * LONG, statuses
                await asyncio.sleep(float(headers["retry-after"]))

        # (three first shapes of the table at once: they share one publish)
        await asyncio.gather(first_shape(), first_shape(where="v > 0"), first_shape(where="v = 0"))
        took = time.monotonic() - started
        await holder
    finally:
        stop.set()
        await writer
    print(
        f"first shape after {took:.1f} s ({statuses}); the application's writes blocked"
        f" {sum(blocked):.2f} s of {LONG:.0f} ({len(blocked)} of {writes} slower than"
        f" {BLOCKED * 1000:.0f} ms)"
    )
    assert took >= LONG - 1, took  # (published once the long transaction ended)
    assert sum(blocked) < 0.5, blocked
    rows, _, _ = await engine.sync(table="busy")
    assert len(rows) == engine.sql("SELECT count(*) FROM busy")[0][0]
