"""Arrays whose lower bounds are not 1: Postgres's answer, or none.

Postgres prints such an array with its bounds (`[0:1]={1,2}`) and its `=`, subscripts,
slices and `||` depend on them: `'[0:1]={1,2}'::int4[] = '{1,2}'` is false and its `[1]` is
2. The engine's arrays keep no bounds (the decoration was dropped), so it called such rows
equal to `{1,2}` and read the wrong element. Now a row's array with bounds raises
UnrepresentableValue (the shape is rotated; its new snapshot is exact), and a literal with
bounds is refused with a WhereError.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import (
    VERDICT_FUNCTION,
    agrees,
    column_map,
    engine_verdict,
)

ARRAYS = ["{1,2}", "[0:1]={1,2}", "[2:3]={1,2}", "[-1:0]={2,1}", "{}", "{{1,2},{3,4}}",
          "[0:1][1:2]={{1,2},{3,4}}", "{NULL,1}"]  # fmt: skip
CLAUSES = [
    "ia = '{1,2}'", "ia <> '{1,2}'", "ia[1] = 1", "ia[1] = 2", "ia[0] IS NULL", "ia[1:1] = '{1}'",
    "ia @> '{1}'", "ia && '{2}'", "(ia || 3) = '{1,2,3}'", "array_ndims(ia) = 1",
    "ia IS NOT NULL", "ia::text = '{1,2}'", "1 = ANY(ia)", "t::int4[] = '{1,2}'",
]  # fmt: skip


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, dict[int, str]]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, ia int4[], t text)")
        conn.execute(VERDICT_FUNCTION)
        for i, a in enumerate(ARRAYS):
            conn.execute("INSERT INTO d VALUES (%s, %s::int4[], %s)", (i, a, a))
        texts = {int(r[0]): r[1] for r in conn.execute("SELECT id, ia::text FROM d")}

        yield conn, column_map(url), texts


def test_arrays_with_bounds_give_postgres_verdict_or_none(
    table: tuple[psycopg.Connection[Any], Any, dict[int, str]],
) -> None:
    conn, columns, texts = table
    assert texts[1] == "[0:1]={1,2}"  # Postgres's own output keeps the bounds
    wrong = []
    for clause in CLAUSES:
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT id, verdict(%s, id) FROM d", (where.sql,)))
        for rid, text in texts.items():
            pg = (verdicts[rid],)  # (all rows' verdicts in one round trip)
            row = {"id": str(rid), "ia": text, "t": text}
            try:
                got = engine_verdict(where, row)
            except UnrepresentableValue:
                assert text.startswith("["), (clause, text)
                continue
            if not agrees(got, pg[0]):
                wrong.append((clause, text, pg[0], got))
    assert not wrong, wrong


def test_array_literal_with_bounds_is_refused(
    table: tuple[psycopg.Connection[Any], Any, dict[int, str]],
) -> None:
    _conn, columns, _texts = table
    for clause in ["ia = '[0:1]={1,2}'", "'[0:1]={1,2}'::int4[] = '{1,2}'::int4[]"]:
        with pytest.raises(WhereError, match="explicit bounds"):
            parse_where(clause, {}, columns)
    with pytest.raises(WhereError, match="explicit bounds"):
        parse_where("ia = $1", {"1": "[0:1]={1,2}"}, columns)
