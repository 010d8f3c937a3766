"""What Postgres's planner never simplifies fails nothing: the arguments of an AND after a
constant false, of an OR after a constant true, of COALESCE after a constant not NULL.

eval_const_expressions simplifies an AND's arguments in order and stops at the first constant
false (simplify_and_arguments; an OR at a constant true; COALESCE at a constant not NULL):
the arguments after it are parsed (types, names and literals checked) but their constants
never evaluated, so `false AND 2147483647 + 1 > 0` is false on every row where the engine
refused it with a 400 "integer out of range" (a leftover of the round-2 differential fuzz; the COALESCE case found
by /work/where-fuzz/fuzz5.py). A failing constant before the deciding one, or one Postgres's
parse checks, is still its error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.engine_harness import Engine, apply
from tests.sync_engine.shapes.where.columns import table_in_own_database

TABLE = """
CREATE TABLE u (id int PRIMARY KEY, i4 int4, t text);
INSERT INTO u VALUES (1, 1, 'a'), (2, -5, NULL), (3, NULL, 'b')
"""

ANSWERED = [
    "false AND 2147483647 + 1 > 0", "i4 > 0 AND false AND 1 / 0 = 1", "true OR 1 / 0 = 1",
    "i4 = 1 OR true OR 1 / 0 = 1", "NOT true AND 1 / 0 = 1", "(1 = 2) AND 1 / 0 = 1",
    "false AND 2147483648::int4 = 1", "false AND (99999::numeric)::int2 = i4",
    "false AND i4 + 1 / 0 > 0", "false AND i4 IN (1, 1 / 0)",
    "false AND '2024-01-01'::date + 2147483647 > '2024-01-01'",
    "(false AND 1 / 0 = 1) OR i4 > 0", "i4 > 0 OR (true OR -2147483648 / -1 = 0)",
    "coalesce(true, 1 / 0 = 1)", "coalesce(NULL, 2 IS NULL, 99999::int2 = 1)",
    "coalesce(i4, 1, 2147483647 + 1) > 0", "NOT coalesce(1 = 2, (1e308::float8 * 10) > 0)",
]  # fmt: skip

STILL_FAILS = [
    ("2147483647 + 1 > 0 AND false", "integer out of range"),
    ("1 / 0 = 1 OR true", "division"),
    ("(false AND i4 = 1) OR 1 / 0 = 1", "division"),
    ("NULL AND 1 / 0 = 1", "division"),
    ("false AND 'abc'::int4 = 1", 'invalid input syntax for type integer: "abc"'),
    ("false AND i4 = 'abc'", 'invalid input syntax for type integer: "abc"'),
    ("false AND 1 / 0", "argument of AND must be type boolean"),
    ("true OR 1 / 0", "argument of OR must be type boolean"),
    ("coalesce(i4, 2147483647 + 1, 1) > 0", "integer out of range"),
    ("coalesce(NULL, 1 / 0 = 1, true)", "division"),
    ("coalesce(true, 'x'::int4 = 1)", 'invalid input syntax for type integer: "x"'),
]


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with table_in_own_database(pg_server_url, TABLE, "u") as found:
        yield found


@pytest.mark.parametrize("clause", ANSWERED)
def test_a_constant_postgres_never_simplifies_fails_nothing(
    table: tuple[psycopg.Connection[Any], Any], clause: str
) -> None:
    conn, columns = table
    expected = {r[0] for r in conn.execute(f"SELECT id FROM u WHERE {clause}")}
    where = parse_where(clause, {}, columns)  # a 400 "out of range" / "division by zero"
    rows = conn.execute("SELECT id, i4::text, t FROM u").fetchall()
    got = {rid for rid, i4, t in rows if where.matches({"id": str(rid), "i4": i4, "t": t})}
    assert got == expected, clause


@pytest.mark.parametrize(("clause", "message"), STILL_FAILS)
def test_a_constant_postgres_simplifies_or_parses_still_fails(
    table: tuple[psycopg.Connection[Any], Any], clause: str, message: str
) -> None:
    conn, columns = table
    with pytest.raises(psycopg.Error):
        conn.execute(f"SELECT id FROM u WHERE {clause}")
    with pytest.raises(WhereError, match=message):
        parse_where(clause, {}, columns)


async def test_live_rows_equal_the_snapshot_past_an_unsimplified_constant(engine: Engine) -> None:
    engine.sql("CREATE TABLE u (id int PRIMARY KEY, i4 int4)")
    engine.sql("INSERT INTO u VALUES (1, 1), (2, -1)")
    where = "i4 > 0 OR (false AND 2147483647 + 1 > 0)"
    rows, handle, offset = await engine.sync(table="u", where=where)
    assert {r["id"] for r in rows.values()} == {"1"}
    engine.sql("INSERT INTO u VALUES (3, 3), (4, -4)")
    engine.sql("UPDATE u SET i4 = -1 WHERE id = 1")
    engine.sql("UPDATE u SET i4 = 2 WHERE id = 2")
    for _ in range(50):
        status, h, body = await engine.get(
            table="u", where=where, offset=offset, handle=handle, live="true"
        )
        assert status == 200, body
        apply(rows, body)
        offset = h["electric-offset"]
        if {r["id"] for r in rows.values()} == {"2", "3"}:
            break
    snapshot = {str(r[0]) for r in engine.sql(f"SELECT id FROM u WHERE {where}")}
    assert {r["id"] for r in rows.values()} == snapshot == {"2", "3"}
