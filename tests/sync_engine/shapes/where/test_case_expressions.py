"""CASE expressions in a where clause, compared with Postgres row by row.

`CASE WHEN ... THEN ... ELSE ... END` and `CASE x WHEN v THEN ...` were a 400 "CASE
expressions are not supported". Postgres runs the conditions in order and only the chosen
result (`CASE WHEN i = 0 THEN 0 ELSE 10 / i END` fails no row); the result type is
select_common_type's of the ELSE and the results (an integer and a numeric give numeric,
untyped literals text); `CASE x WHEN v` compares with `x = v` (an untyped x as text), under
x's collation; the CASE's collation is its results'. Its planner simplifies the conditions
in order: an arm with a constant false or NULL condition is dropped without its result being
simplified, a constant true one ends the CASE, so a constant that fails there fails nothing
(`CASE WHEN true THEN 1 ELSE 1 / 0 END`), while one it does simplify fails the clause
before any row, as do the errors of its parse (types that cannot be matched, a condition
that is no boolean), which come first. Found by /work/wherefuzz/casefz.py (random CASEs over
11 types: 0 differences in its runs after these rules).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import WhereError, check_where_constructs, parse_where
from sync_engine.shapes.where.clause import ClauseFails
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import (
    refused_as_postgres_refuses,
    table_in_own_database,
    text_rows,
)

TABLE = """
CREATE TABLE c (id int PRIMARY KEY, i int, n numeric, t text, u text COLLATE "C",
                b bool, d date, ia int[]);
INSERT INTO c VALUES
  (1, 0, 1.5, 'a', 'a', true, '2024-01-01', '{1,2}'),
  (2, 1, NULL, 'B', 'B', false, NULL, '{}'),
  (3, 2, 0, 'b', 'b', NULL, '2024-03-31', NULL),
  (4, NULL, -2.25, NULL, '_', true, 'infinity', '{NULL,3}'),
  (5, 5, 'NaN', 'é', NULL, false, '2024-02-01', '{5}'),
  (6, -1, 10, '', 'Z', NULL, NULL, '{1}'),
  (7, 2147483647, 2, 'ab', 'ab', true, '2023-12-31', '{2}')
"""

AGREE = [
    # searched form, ELSE or not, NULL conditions
    "(CASE WHEN i > 1 THEN 'big' WHEN i = 0 THEN 'zero' ELSE 'other' END) = 'big'",
    "(CASE WHEN i > 1 THEN 'big' WHEN i = 0 THEN 'zero' END) IS NULL",
    "(CASE WHEN b THEN i ELSE -i END) > 0", "(CASE WHEN b IS NULL THEN 1 END) = 1",
    "CASE WHEN b THEN t = 'a' ELSE i > 1 END", "NOT (CASE WHEN b THEN true END)",
    "(CASE WHEN NULL THEN 1 ELSE 2 END) = 2", "(CASE WHEN t < 'b' THEN 1 ELSE 0 END) = 1",
    # only the chosen result runs: no row fails
    "(CASE WHEN i = 0 THEN 0 ELSE 10 / i END) > 1",
    "(CASE WHEN i < 2147483647 THEN i + 1 ELSE 0 END) > 1",
    "(CASE WHEN i IS NULL OR i = 0 THEN NULL ELSE 5 / i END) IS NULL",
    # result types: integer and numeric give numeric; untyped literals text; '5' as an int
    "(CASE WHEN b THEN i ELSE n END) = 1.5", "(CASE WHEN b THEN 1 ELSE 1.5 END)::text = '1'",
    "(CASE WHEN b THEN 'x' END) || '!' = 'x!'", "(CASE WHEN b THEN '5' ELSE i END) = 5",
    "(CASE WHEN b THEN n ELSE 'NaN' END) = 'NaN'", "(CASE WHEN b THEN d END) > '2024-01-15'",
    "(CASE WHEN b THEN ia ELSE '{5}' END) @> '{5}'",
    # simple form: x = v, NULL never matches, an untyped x is text
    "(CASE i WHEN 1 THEN 'one' WHEN 2 THEN 'two' ELSE 'many' END) = 'two'",
    "(CASE i WHEN NULL THEN 'null' ELSE 'not' END) = 'not'",
    "(CASE t WHEN 'a' THEN 1 WHEN u THEN 2 END) = 2", "(CASE b WHEN true THEN i END) > 0",
    "(CASE 'a' WHEN t THEN 1 ELSE 0 END) = 1", "(CASE i % 3 WHEN 0 THEN n END) IS NOT NULL",
    "(CASE n WHEN 'NaN' THEN 1 WHEN 1.5 THEN 2 END) > 0",
    # constants the planner simplifies (or not)
    "(CASE WHEN true THEN 1 ELSE 1 / 0 END) = 1", "(CASE WHEN false THEN 1 / 0 ELSE i END) = 1",
    "(CASE WHEN 1 = 0 THEN 2147483647 + 1 WHEN b THEN 1 END) = 1",
    "(CASE WHEN NULL THEN 1 / 0 END) IS NULL", "(CASE WHEN b THEN 1 WHEN true THEN 2 ELSE 1 / 0 END) = 2",
    "(CASE 1 WHEN 2 THEN 1 / 0 ELSE 3 END) = 3", "i = 1 OR (CASE WHEN true THEN true END)",
    "(CASE WHEN false THEN 1 END) IS NULL AND i > 0",
    # collation: the results' (u is "C": 'B' < 'a'), not the conditions'
    "(CASE WHEN b THEN u ELSE 'b' END) < 'a'", "(CASE WHEN b THEN t ELSE 'b' END) < 'a'",
    "(CASE WHEN u < 'a' THEN t END) < 'a'", "(CASE WHEN b THEN u END) COLLATE \"C\" > 'a'",
    # nested, in IN / BETWEEN / LIKE / IS DISTINCT FROM
    "(CASE WHEN b THEN (CASE WHEN i > 0 THEN 'p' ELSE 'q' END) ELSE t END) IN ('p', 'b')",
    "(CASE WHEN i > 0 THEN i END) BETWEEN 1 AND 2", "(CASE WHEN b THEN t END) LIKE 'a%'",
    "(CASE WHEN i > 0 THEN i END) IS DISTINCT FROM 2",
    "(CASE WHEN b THEN t ELSE u END) NOT IN ('a', NULL)",
]  # fmt: skip

REFUSED = [
    ("(CASE WHEN b THEN 1 ELSE true END) = 1", "CASE types boolean and integer cannot be matched"),
    ("(CASE WHEN i THEN 1 END) = 1", "argument of CASE/WHEN must be type boolean, not type integer"),
    ("(CASE WHEN b THEN 1 ELSE 'x' END) = 1", 'invalid input syntax for type integer: "x"'),
    ("(CASE 'a' WHEN 1 THEN 1 END) = 1", "operator does not exist: text = integer"),
    # simplified constants that fail: before any row
    ("(CASE WHEN b THEN 1 / 0 ELSE 1 END) = 1", "division by zero"),
    ("(CASE WHEN b THEN 1 ELSE 2147483647 + 1 END) = 1", "integer out of range"),
    ("(CASE WHEN 1 / 0 = 1 THEN 1 END) = 1", "division by zero"),
    # parse errors come before a failing constant
    ("(CASE WHEN b THEN 1 / 0 ELSE d END) IS NULL", "CASE types date and integer cannot be matched"),
]  # fmt: skip


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with table_in_own_database(pg_server_url, TABLE, "c") as found:
        yield found


def test_case_expressions_select_postgres_s_rows(table: Any) -> None:
    conn, columns = table
    rows = text_rows(conn, "c", ["id", "i", "n", "t", "u", "b", "d", "ia"])
    answered = 0
    for clause in AGREE:
        if "COLLATE" not in clause:  # (the proxy's schema-free check takes it)
            check_where_constructs(clause)
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM c WHERE {where.sql}")}
        got = set()
        for row in rows:
            try:
                if where.matches(row):
                    got.add(int(row["id"]))
            except ClauseFails:  # (no row fails in Postgres's answer above)
                raise AssertionError((clause, row)) from None
        assert got == expected, (clause, where.sql, sorted(got ^ expected))
        answered += bool(expected)
    assert answered > len(AGREE) * 3 // 4, answered  # (not trivial answers)


def test_refused_in_postgres_s_words(table: Any) -> None:
    conn, columns = table
    for clause, message in REFUSED:
        refused_as_postgres_refuses(conn, columns, "c", clause, message)


async def test_live_rows_move_in_and_out_of_a_case_shape(engine: Engine) -> None:
    where = "(CASE WHEN kind = 'a' THEN 10 / qty ELSE qty END) > 2"
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, kind text, qty int)")
    engine.sql("INSERT INTO items VALUES (1, 'a', 2), (2, 'b', 3), (3, 'b', 0), (4, 'a', 5)")
    rows, handle, offset = await engine.sync(table="items", where=where)  # (3: 10 / 0 never runs)
    assert {r["id"] for r in rows.values()} == {"1", "2"}
    engine.sql("UPDATE items SET kind = 'b' WHERE id = 1")  # 2 > 2: out
    engine.sql("UPDATE items SET qty = 1 WHERE id = 3")  # 'b': 1: still out
    engine.sql("UPDATE items SET kind = 'a' WHERE id = 3")  # 'a': 10 / 1 = 10: in
    engine.sql("UPDATE items SET qty = 3 WHERE id = 4")  # 'a': 10 / 3 = 3: in
    engine.sql("INSERT INTO items VALUES (100, 'b', 100)")
    await engine.follow_live(rows, handle, offset, "100", table="items", where=where)
    expected = {str(r[0]) for r in engine.sql(f"SELECT id FROM items WHERE {where}")}
    assert {r["id"] for r in rows.values()} == expected == {"2", "3", "4", "100"}


def test_a_refused_part_of_a_case_is_named(table: Any) -> None:
    """attack 02:10: the refusal names what inside the CASE is refused, at its location."""
    _conn, columns = table
    for clause, words in [
        ("CASE WHEN pg_sleep(1) IS NULL THEN true END", "At location 10: unknown or unsupported"),
        ("CASE i WHEN pg_sleep(1) THEN true END", "At location 12: unknown or unsupported"),
        ("CASE WHEN true THEN now() > d END", "non-deterministic function now()"),
    ]:
        for check in (lambda c: parse_where(c, {}, columns), check_where_constructs):
            with pytest.raises(WhereError, match=re.escape(words)):
                check(clause)
