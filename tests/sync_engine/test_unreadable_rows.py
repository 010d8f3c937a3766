"""Rows the where evaluator cannot read exactly are filtered by Postgres, live, without a
refetch (real Postgres, logical replication).

A value Postgres holds but the engine cannot read as Postgres does (a text cast to date in a
form only Postgres reads, a date past year 9999 or BC) used to rotate the shape at each
change of such a row: its clients refetched, and with the row changing faster than a
snapshot is served (100k rows, the row updated 5 times a second) no client ever finished a
sync (81,409 409s and no complete sync in 20 s). Postgres is asked about those rows now,
for the values the change carries (`pg/row_where.py`), and the shape's changes wait for
the answer in commit order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from tests.sync_engine.engine_harness import Engine, apply

TEXT_WHERE = "t::date > '2000-01-01'"
DATE_WHERE = "d > '2020-01-01'"


def _expected(engine: Engine, where: str) -> dict[str, dict[str, Any]]:
    rows = engine.sql(f"SELECT id::text, v::text, t, d::text FROM items WHERE {where}")
    return {f'"public"."items"/"{i}"': {"id": i, "v": v, "t": t, "d": d} for i, v, t, d in rows}


async def _follow_until(
    engine: Engine, where: str, rows: dict[str, Any], handle: str, offset: str
) -> str:
    """Follow live until the rows are Postgres's `SELECT ... WHERE`; a 409 fails."""
    want = _expected(engine, where)
    for _ in range(50):
        if rows == want:
            return offset
        status, h, body = await engine.get(
            table="items", where=where, offset=offset, handle=handle, live="true"
        )
        assert status == 200, (status, body)  # a 409: the shape was rotated
        assert h["electric-handle"] == handle
        apply(rows, body)
        offset = h["electric-offset"]
    raise AssertionError(f"never converged: {rows} != {want}")


async def test_rows_only_postgres_reads_are_filtered_live_without_a_refetch(
    engine: Engine,
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text, d date)")
    engine.sql(
        "INSERT INTO items VALUES (1, 0, 'Jan 2 2024', '2021-01-01'),"
        " (2, 0, '2024-01-05', '10000-01-01'), (3, 0, 'Jan 2 1990', '0044-03-15 BC')"
    )
    shapes = {}
    for where in (TEXT_WHERE, DATE_WHERE):
        rows, handle, offset = await engine.sync(table="items", where=where)
        assert rows == _expected(engine, where)
        shapes[where] = (rows, handle, offset)

    steps = [
        "UPDATE items SET v = v + 1 WHERE id = 1",  # stays in (read by Postgres)
        "UPDATE items SET v = v + 1 WHERE id IN (2, 3)",  # d: one in, one out
        "UPDATE items SET t = 'Jan 2 1991' WHERE id = 1",  # leaves the text shape
        "UPDATE items SET t = 'Feb 3 2025', v = 7, d = '20000-02-02' WHERE id = 3",  # enters
        # one transaction: rows only Postgres reads between rows the engine reads
        "BEGIN; INSERT INTO items VALUES (4, 0, 'Mar 4 2026', '2022-02-02');"
        " UPDATE items SET v = 9 WHERE id = 2;"
        " INSERT INTO items VALUES (5, 0, 'Mar 4 1999', '1999-12-31 BC');"
        " INSERT INTO items VALUES (6, 0, '2026-03-04', '2023-03-03'); COMMIT",
        "DELETE FROM items WHERE id = 3",  # in both shapes, read by Postgres
        "UPDATE items SET t = 'Jan 2 2024', d = '2019-01-01' WHERE id = 1",
        "UPDATE items SET v = 10 WHERE id = 2",  # after it, in commit order
    ]
    for step in steps:
        engine.sql(step)
        for where in (TEXT_WHERE, DATE_WHERE):
            rows, handle, offset = shapes[where]
            offset = await _follow_until(engine, where, rows, handle, offset)
            shapes[where] = (rows, handle, offset)

    # A new client gets the same rows from the snapshot.
    for where in (TEXT_WHERE, DATE_WHERE):
        rows, handle, _ = await engine.sync(table="items", where=where)
        assert handle == shapes[where][1] and rows == _expected(engine, where)
    assert engine.source.replicator.holding == 0


async def test_a_client_finishes_its_sync_while_such_a_row_keeps_changing(
    engine: Engine,
) -> None:
    """The thrash: every change of the row rotated the shape, so a client syncing from -1
    was sent back to -1 before it was up to date, again and again."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text, d date)")
    engine.sql(
        "INSERT INTO items SELECT g, 0, '2024-01-05', '2021-01-01' FROM generate_series(1, 20000) g"
    )
    engine.sql("UPDATE items SET t = 'Jan 2 2024' WHERE id = 1")
    stop = asyncio.Event()

    def update() -> None:
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("UPDATE items SET v = v + 1 WHERE id = 1")
                time.sleep(0.02)  # (a pace, not a wait for anything)

    writer = asyncio.ensure_future(asyncio.to_thread(update))
    try:
        for _ in range(3):  # each a new client: from -1 to up to date, no 409
            rows, _, _ = await engine.sync(table="items", where=TEXT_WHERE)
            assert len(rows) == 20000
    finally:
        stop.set()
        await writer
    rows, handle, offset = await engine.sync(table="items", where=TEXT_WHERE)
    await _follow_until(engine, TEXT_WHERE, rows, handle, offset)


async def test_a_row_the_clause_fails_on_retires_the_shape_and_the_others_are_answered(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows asked about together (the engine cannot read their dates), one of them failing
    the clause in Postgres (division by zero): Postgres fails a snapshot meeting it, so the
    shape is retired (409, and a refetch is the snapshot's 400) rather than followed past a
    row Postgres cannot answer for (it did not match: live clients went on while a new
    client got a 400); once it is gone, the others are Postgres's answers."""
    where = "t::date > '2000-01-01' AND 10 / v > 0"
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text, d date)")
    engine.sql("INSERT INTO items VALUES (1, 1, 'Jan 2 2024', NULL), (2, 1, 'Jan 2 1990', NULL)")
    rows, handle, offset = await engine.sync(table="items", where=where)
    assert set(rows) == {'"public"."items"/"1"'}
    engine.sql(
        "INSERT INTO items VALUES (3, 0, 'Feb 3 2025', NULL), (4, 2, 'Feb 3 2025', NULL),"
        " (5, 2, 'Feb 3 1995', NULL)"
    )
    for _ in range(50):
        status, h, body = await engine.get(
            table="items", where=where, offset=offset, handle=handle, live="true"
        )
        if status == 409:
            break
        assert status == 200, (status, body)
        apply(rows, body)
        offset = h["electric-offset"]
    assert status == 409, (status, body)
    # The operator is told Postgres failed the clause, not that it "could not be asked"
    # about a value only it reads (which sent one looking for BC dates: attack).
    said = [r.getMessage() for r in caplog.records if "rotated" in r.getMessage()]
    assert any("Postgres could not evaluate its where clause on a row" in m for m in said), said
    assert not any("could not be asked" in m for m in said), said
    status, _h, body = await engine.get(table="items", where=where, offset="-1")
    assert status == 400 and "division by zero" in str(body), (status, body)
    engine.sql("DELETE FROM items WHERE id = 3")
    rows, handle, offset = await engine.sync(table="items", where=where)
    want = {
        f'"public"."items"/"{i}"': {"id": str(i), "v": v, "t": t, "d": None}
        for i, v, t in ((1, "1", "Jan 2 2024"), (4, "2", "Feb 3 2025"))
    }
    assert rows == want
