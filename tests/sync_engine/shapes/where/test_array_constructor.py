"""`ARRAY[a, b]` of arrays: Postgres's multidimensional rules, row by row.

Postgres builds `ARRAY[x, y]` of array values as one array of one more dimension only when
every item has the same dimensions; a NULL or empty item counts as empty; all empty is the
empty array `{}` (not `{NULL,NULL}`); an empty item beside a non-empty one, or items of
different lengths, fail ("multidimensional arrays must have array expressions with matching
dimensions"). The engine had built a tuple of whatever the items were: `ARRAY[dda, dda] <>
dda` held on rows whose `dda` was `{}` (Postgres: `{}` = `{}`), `x <> ALL(ARRAY[iva, iva])`
was NULL where `iva` was NULL (Postgres: ALL of `{}`, true) and ragged arrays matched `@>`,
`&&` and ANY where Postgres fails the row (found by the Electric-list sweep, seeds 1-20 of
test_known_functions.py's grammar).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import (
    VERDICT_FUNCTION,
    agrees,
    column_map,
    engine_verdict,
)

ROWS = [None, "{}", "{1}", "{1,2}", "{NULL,2}", "{{1,2},{3,4}}", "{{1}}"]
CLAUSES = [
    "ARRAY[ia, ia] <> ia", "ARRAY[ia, ia] = '{}'", "ARRAY[ia, NULL] = '{}'",
    "5 <> ALL(ARRAY[ia, ia])", "1 = ANY(ARRAY[ia, '{1,2}'])", "ARRAY[ia, '{1,2}'] @> '{1}'",
    "ARRAY[ia, '{}'::int4[]] && '{1}'", "array_ndims(ARRAY[ia, ia]) = 2",
    "array_ndims(ARRAY[ia, ia]) IS NULL", "ARRAY[ARRAY[ia], ARRAY[ia]] = '{}'",
    "(ARRAY[ia, ia])[1] IS NULL", "ARRAY[ia, ia]::text = '{{1,2},{1,2}}'",
    "ARRAY[ia, ia] = '{{{1,2},{3,4}},{{1,2},{3,4}}}'", "ARRAY[ia, ia || 3] IS NOT NULL",
    "ARRAY[ia, ia, ia, ia, ia] && '{2}'",
]  # fmt: skip


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, ia int4[])")
        conn.execute(VERDICT_FUNCTION)
        for i, a in enumerate(ROWS):
            conn.execute("INSERT INTO d VALUES (%s, %s::int4[])", (i, a))
        yield conn, column_map(url)


def test_array_of_arrays_gives_postgres_verdict(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    conn, columns = table
    wrong = []
    for clause in CLAUSES:
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT id, verdict(%s, id) FROM d", (where.sql,)))
        for rid, text in enumerate(ROWS):
            pg = (verdicts[rid],)  # (all rows' verdicts in one round trip)
            got = engine_verdict(where, {"id": str(rid), "ia": text})
            if not agrees(got, pg[0]):
                wrong.append((clause, text, pg[0], got))
    assert not wrong, wrong


def test_constant_ragged_array_is_refused(table: tuple[psycopg.Connection[Any], Any]) -> None:
    """Postgres's planner builds a constant ARRAY[...] before reading a row: a ragged one
    fails every query, so the engine refuses it."""
    _conn, columns = table
    for clause in ["ARRAY['{1}'::int4[], '{1,2}'] = '{}'", "ARRAY['{1}'::int4[], '{}'] && ia"]:
        with pytest.raises(WhereError, match="matching dimensions"):
            parse_where(clause, {}, columns)


#: Several subscripts at once: one per dimension for an element (NULL with more or fewer),
#: and if any is a slice all are (`ia[1:2][1]` is `ia[1:2][1:1]`), each cutting its own
#: dimension. The engine cut the first dimension once per slice subscript (`ia[1:2][2:2]`
#: of {{1,2},{3,4}} was {} where Postgres has {{2},{4}}) and refused `ia[2][1]`.
SUBSCRIPTS = [
    "ia[1][1] IS NULL", "ia[2][1] = 3", "ia[1][2] = 2", "ia[1:2][1] = '{{1},{3}}'",
    "ia[1:2][2:2] = '{{2},{4}}'", "ia[1:2][1:1] = '{}'", "ia[2:][:1] = '{{3}}'",
    "ia[1] IS NULL", "ia[1][2][1] IS NULL", "ia[1:1][2] = '{{1,2}}'", "ia[0:5][0:5] = ia",
    "ia[NULL:1][1] IS NULL", "(ARRAY[ia, ia])[2][1] = ia[1]", "(ARRAY[ia, ia])[1:1][2:3] IS NULL",
    # a subscript is converted to integer as by its cast (`ia[1.5]` is `ia[2]`: it was "cannot
    # convert numeric to integer"), and not evaluated at all for a NULL array (the engine
    # failed the NULL row on an out-of-range subscript; Postgres gives NULL)
    "ia[1.5] = 2", "ia[id::numeric / 2] IS NULL", "ia[1.5:2.5] = '{2}'",
    "ia[(id - 1)::float8 * 1e10] IS NULL", "ia[(id - 1) * 2147483647 * 2] IS NULL",
    # (ARRAY[] with a cast is an empty array of that type: it was "cannot determine type")
    "ia = ARRAY[]::int4[]", "ia IS DISTINCT FROM ARRAY[]::int4[]", "ia && ARRAY[]::int4[]",
]  # fmt: skip


def test_several_subscripts_give_postgres_verdict(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    conn, columns = table
    wrong = []
    for clause in SUBSCRIPTS:
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT id, verdict(%s, id) FROM d", (where.sql,)))
        for rid, text in enumerate(ROWS):
            pg = (verdicts[rid],)  # (all rows' verdicts in one round trip)
            if not agrees(engine_verdict(where, {"id": str(rid), "ia": text}), pg[0]):
                wrong.append((clause, text, pg[0]))
    assert not wrong, wrong
