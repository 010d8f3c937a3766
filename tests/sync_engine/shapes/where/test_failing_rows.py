"""A row the where clause fails on (division by zero, overflow, a bad cast), arriving live.

Postgres answers a snapshot meeting such a row with an error (the engine: a 400). The engine
used to drop the row from live changes silently: clients already following the shape went
on as if nothing happened while a new client got a 400, two answers for one shape. Now where
Postgres's scan would certainly fail on the row (every top-level conjunct true or failing),
`Where.matches` raises `ClauseFails`, Postgres is asked about the row, fails too, and the
shape is retired: its clients get 409, refetch, and get the 400 a new client gets, until
the row changes. Where a conjunct is false or NULL Postgres may stop there first (it orders
conjuncts by cost), and the row simply does not match, as in Postgres's answer then.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import parse_where
from sync_engine.shapes.where.clause import ClauseFails
from tests.sync_engine.engine_harness import Engine, apply
from tests.sync_engine.shapes.where.columns import column_map

#: (clause, Postgres fails a scan meeting the row v = 0)
CASES = [
    ("10 / v > 1", True),
    ("10 / v > 1 OR v = 0", True),  # (OR goes left to right: the division first)
    ("t = 'x' AND 10 / v > 1", True),  # (every other conjunct true: it is reached)
    ("NOT (v::int2 + 32767::int2 > 0) AND v = 0", False),  # (no failure here)
    ("v <> 0 AND 10 / v > 1", False),  # (false first)
    ("10 / v > 1 AND v <> 0", False),  # (Postgres orders the cheaper `v <> 0` first)
    ("10 / v > 1 AND t IS NULL", False),
    # Postgres's planner pulls a factor common to every arm of an OR out as a conjunct of
    # its own, and pushes NOT down (De Morgan): `v <> 0` is then a top-level conjunct,
    # cheaper, false first (the engine said these fail)
    ("(10 / v > 1 AND v <> 0) OR (t = 'x' AND v <> 0)", False),
    ("NOT (10 / v > 1 OR v = 0)", False),
    ("NOT (NOT (10 / v > 1) AND t = 'x')", True),
    ("(10 / v > 1) OR (v = 5 AND t = 'x')", True),
    # NOT IN of columns is an AND of `<>`s, BETWEEN an AND: a NULL one, folded before any
    # row, stops the scan (seed 3147 of the long fuzz)
    ("CAST(t AS int4) NOT IN (v, NULL, v)", False),
    ("CAST(t AS int4) BETWEEN v AND NULL", False),
    ("CAST(t AS int4) NOT IN (v, v)", True),
    ("10 / v NOT BETWEEN 1 AND 2", True),
    # two constants the planner made, equal though written otherwise: a common factor
    # (seed 4033 of the long fuzz)
    ("(10 / v > 1 AND NULL::bool) OR (t = 'x' AND 1 = NULL::int4)", False),
    # an arm made only of common factors: the OR is those factors, the division never
    # evaluated, and the row matches (the engine failed on it; seed 5008 of the long fuzz)
    ("(10 / v > 1 AND t = 'x') OR t = 'x'", False),
    ("(10 / v > 1 AND t = 'x') OR (1 = 1 AND t = 'x')", False),
    ("t = 'x' AND ((t = 'x' AND 10 / v > 1) OR (t = 'x'))", False),
    # in a WHERE, an OR arm that is a constant NULL (or an AND holding one) is dropped: the
    # OR is its other arm, whose conjuncts run in cost order (seed 5071 of the long fuzz)
    ("(10 / v > 1 AND v <> 0) OR (NULL AND t = 'x')", False),
    ("(10 / v > 1 AND v <> 0) OR (1 IN (2, NULL, 3))", False),
    ("(10 / v > 1 AND t = 'x') OR (NULL AND t = 'y')", True),
    # a constant Postgres leaves to run per row (timestamptz beside timestamp reads the
    # TimeZone) is an argument of its AND: that arm is not the common factor alone, the OR
    # stays, its division evaluated first (seed 6004 of the long fuzz)
    (
        "(10 / v > 1 AND t = 'x') OR ('2024-01-01 00:00+00'::timestamptz"
        " > '2000-01-01'::timestamp AND t = 'x')",
        True,
    ),
    # NOT pushed down (De Morgan): `1 NOT IN (64, NULL, v)` is `1 <> ALL('{64,NULL}')` (a
    # NULL constant) AND `1 <> v`, so its arm is false before any row (seed 7007)
    ("(10 / v > 1 AND 1 NOT IN (64, NULL, v)) OR (t = 'x' AND 0 NOT IN (1, NULL, v))", False),
]


@pytest.mark.parametrize(("clause", "fails"), CASES)
def test_clause_fails_exactly_where_postgres_fails(db_url: str, clause: str, fails: bool) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, v int, t text)")
        conn.execute("INSERT INTO d VALUES (1, 0, 'x')")
        where = parse_where(clause, {}, column_map(db_url))
        row = {"id": "1", "v": "0", "t": "x"}
        if fails:
            with pytest.raises(psycopg.DataError):
                conn.execute(f"SELECT id FROM d WHERE {where.sql}")
            with pytest.raises(ClauseFails):
                where.matches(row)
        else:
            got = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
            assert where.matches(row) is (got == {1})


async def _get_live(engine: Engine, where: str, handle: str, offset: str) -> tuple[int, Any]:
    status, h, body = await engine.get(
        table="items", where=where, offset=offset, handle=handle, live="true"
    )
    return status, (h, body)


async def test_a_live_row_the_clause_fails_on_retires_the_shape(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v int)")
    engine.sql("INSERT INTO items VALUES (1, 2), (2, 20)")
    where, guarded = "10 / v > 1", "v <> 0 AND 10 / v > 1"
    rows, handle, offset = await engine.sync(table="items", where=where)
    g_rows, g_handle, g_offset = await engine.sync(table="items", where=guarded)
    assert {r["id"] for r in rows.values()} == {"1"} == {r["id"] for r in g_rows.values()}

    engine.sql("INSERT INTO items VALUES (3, 0)")  # 10 / 0: Postgres fails the snapshot
    engine.sql("INSERT INTO items VALUES (4, 1)")
    statuses = []
    for _ in range(20):
        status, (h, body) = await _get_live(engine, where, handle, offset)
        statuses.append(status)
        if status != 200:
            break
        apply(rows, body)
        offset = h["electric-offset"]
    assert statuses[-1] == 409, statuses  # retired: the client refetches
    status, _h, body = await engine.get(table="items", where=where, offset="-1")
    assert status == 400, body  # as a new client is told
    assert "division by zero" in str(body), body

    # the guarded shape goes on: Postgres stops at `v <> 0` on that row
    await engine.follow_live(g_rows, g_handle, g_offset, "4", table="items", where=guarded)
    assert {r["id"] for r in g_rows.values()} == {"1", "4"}

    engine.sql("DELETE FROM items WHERE id = 3")  # the row gone, the shape is served again
    rows, handle, offset = await engine.sync(table="items", where=where)
    assert {r["id"] for r in rows.values()} == {"1", "4"}


#: Conjuncts an index scan drops unevaluated, as implied by its index condition (an OR with
#: an arm it implies, `x < ALL('{}')`), which a sequential scan evaluates (seed 9005 of the
#: long fuzz): Postgres's answer depends on its plan.
PLAN_DEPENDENT = [
    ("id = 1 AND (10 / v > 1 OR id > 0)", [1]),
    ("id = 1 AND (10 / v > 1 OR t = 'y' OR id IS NOT NULL)", [1]),
    ("id = 1 AND 10 / v < ALL('{}')", [1]),
    # a bitmap OR of index scans (id = 5, id = 7) returns no row to evaluate the OR on
    # (seed 9573 of the long fuzz)
    ("(t = 'y' AND id = 5) OR (10 / v > 1 AND id = 7)", []),
]


def test_conjuncts_an_index_scan_drops_are_never_said_to_fail(db_url: str) -> None:
    """Where the row fails only in a conjunct an index scan would drop, the engine does not
    retire the shape (a refetch would be answered, by the index scan, and retired again on
    the row's next change) and does not serve the row (a sequential scan fails on it)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, v int, t text)")
        conn.execute("INSERT INTO d VALUES (1, 0, 'x')")
        columns = column_map(db_url)
        for clause, by_index in PLAN_DEPENDENT:
            where = parse_where(clause, {}, columns)
            assert where.matches({"id": "1", "v": "0", "t": "x"}) is False, clause
            conn.execute("SET enable_seqscan = off")
            got = [r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")]
            assert got == by_index, clause
            conn.execute("SET enable_seqscan = on; SET enable_indexscan = off")
            conn.execute("SET enable_bitmapscan = off")
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(f"SELECT id FROM d WHERE {where.sql}")
            conn.execute("RESET ALL")
        # (with no possible index condition beside it, every plan evaluates the conjunct)
        with pytest.raises(ClauseFails):
            parse_where("10 / v < ALL('{}')", {}, columns).matches({"id": "1", "v": "0"})
