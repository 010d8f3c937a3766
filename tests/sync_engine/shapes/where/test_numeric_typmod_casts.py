"""Casts to numeric(p, s), numeric(p) and decimal(p, s), and arrays of them.

`amount::numeric(10,2) = 12.35` was a 400 "casting to numeric(10,2) is not supported".
Postgres's cast (the typmod coercion numeric(numeric, int4), apply_typmod) rounds half away
from zero to the scale (a negative scale rounds to tens, hundreds...), keeps NaN, and fails
with "numeric field overflow" on an infinity or a value with more than p - s digits before
the point once rounded (0.001 fits numeric(3,5), 0.01 does not). Every expression below is
compared with Postgres on every row: its text where Postgres gives one, a failing row where
Postgres fails on it. A constant that overflows fails the clause before any row, in
Postgres's words, as do a precision or scale numerictypmodin refuses.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, check_where_constructs, parse_where
from tests.sync_engine.shapes.where.columns import (
    VERDICT_FUNCTION,
    agrees,
    column_map,
    engine_verdict,
    refused_as_postgres_refuses,
    text_rows,
)

TABLE = """
CREATE TABLE d (id int PRIMARY KEY, n numeric, i int8, f float8, f4 float4, t text,
                na numeric[]);
INSERT INTO d VALUES
  (1, 1.005, 12345, 2.5, 1.5, '1.234', '{1.005,NULL,2.5}'),
  (2, -1.005, -5, -2.675, 0.125, ' 5.5 ', '{{1.5,2.5},{3.5,-0.5}}'),
  (3, 99.995, 99, 1e300, 'NaN', 'abc', '{99.995}'),
  (4, 99.994999, 100, 'NaN', 'Infinity', 'NaN', '{NaN,Infinity}'),
  (5, -12350, 0, 'Infinity', NULL, '-0.005', '{}'),
  (6, 0.0099999, NULL, NULL, 0.1, NULL, NULL),
  (7, 0.001, 9223372036854775807, 0.125, -2.5, '1e3', '{0.001,0.01}'),
  (8, 'NaN', 7, -0.0, 3.14159, '-0', '{-0.004}'),
  (9, 'Infinity', 1, 1.005, 1e-5, '99.995', '{1.5}'),
  (10, -0.004, 2, 3.14159, 2.5, '0.5', '{2.5,-2.5}'),
  (11, NULL, 5, 0.5, 0.5, '12350', '{NULL}'),
  (12, 123456789012345678901234567890.5, 3, 1e-5, 1, '-1.5', '{1e-20}'),
  (13, 1e-20, 4, -1.5, -1, '0.0099999', '{12345.678}'),
  (14, 0.5, -1, 12345.678, 0, '1.', '{5e-1001}')
"""

TYPES = ["numeric(5,2)", "numeric(3,0)", "numeric(3)", "numeric(3,5)", "numeric(5,-2)",
         "decimal(4,1)", "numeric(1,0)", "numeric(38,10)", "numeric(2,2)", "numeric(1,-3)",
         "numeric(1000,1000)", "numeric(10, 4)"]  # fmt: skip
SOURCES = ["n", "i", "f", "f4", "t", "n * 10", "-n", "i::numeric / 7", "f + 0.5", "abs(n)",
           "n / 3"]  # fmt: skip
ARRAYS = ["na", "ARRAY[n, 1.25]", "ARRAY[f, f4]", "'{1.005,2.5}'", "ARRAY[t]"]

EXPRESSIONS = (
    [f"({s})::{t}" for s in SOURCES for t in TYPES]
    + [f"({a})::{t}[]" for a in ARRAYS for t in TYPES[:6]]
    + [
        "n::numeric(5,2) + f::numeric(3,1)", "(n::numeric(10,4))::numeric(5,2)",
        "n::numeric(3,0) * 2", "CAST(n AS decimal(6,3))", "n::numeric(5,2)::text",
        "'1.2345'::numeric(5,2)", "1.2345::numeric(5,2) + n", "(na::numeric(4,1)[])[1]",
    ]
)  # fmt: skip

VALUE_FUNCTION = (
    "CREATE FUNCTION value_text(e text, rid int) RETURNS text AS $$ "
    "DECLARE res text; BEGIN "
    "EXECUTE 'SELECT (' || e || ')::text FROM d WHERE id = $1' INTO res USING rid; "
    "RETURN coalesce(res, '<null>'); "
    "EXCEPTION WHEN others THEN RETURN '<error>'; END $$ LANGUAGE plpgsql"
)

REFUSED = [
    ("n::numeric(0) = 1", "NUMERIC precision 0 must be between 1 and 1000"),
    ("n::numeric(1001) = 1", "NUMERIC precision 1001 must be between 1 and 1000"),
    ("n::numeric(5,1001) = 1", "NUMERIC scale 1001 must be between -1000 and 1000"),
    ("n::numeric(5,-1001) = 1", "NUMERIC scale -1001 must be between -1000 and 1000"),
    ("n::numeric(1,2,3) = 1", "invalid NUMERIC type modifier"),
    # constants Postgres's planner folds: the clause fails before any row
    ("n > 1000::numeric(2,0)", "numeric field overflow"),
    ("n = ANY(ARRAY[n, 1.5]::numeric(1000,1000)[])", "numeric field overflow"),
    ("n = 'Infinity'::numeric(5,2)", "numeric field overflow"),
]


@pytest.fixture
def table(db_url: str) -> Any:
    url = with_display_settings(db_url)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(TABLE)
    conn.execute(VALUE_FUNCTION)
    names = ["id", "n", "i", "f", "f4", "t", "na"]
    rows = {int(r["id"]): r for r in text_rows(conn, "d", names)}
    yield conn, column_map(url), rows
    conn.close()


def test_numeric_typmod_casts_give_postgres_s_values(table: Any) -> None:
    conn, columns, rows = table
    compared = failing = 0
    for expression in EXPRESSIONS:
        check_where_constructs(f"({expression}) IS NULL")  # (the proxy's check takes it)
        try:
            parse_where(f"({expression}) IS NULL", {}, columns)
        except WhereError as e:  # a constant that overflows: Postgres's plan fails too
            assert "numeric field overflow" in str(e), (expression, e)
            with pytest.raises(psycopg.Error, match="numeric field overflow"):
                with conn.transaction():
                    conn.execute(f"EXPLAIN SELECT ({expression}) FROM d")
            compared += len(rows)
            continue
        for rid, row in rows.items():
            pg = conn.execute("SELECT value_text(%s, %s)", (expression, rid)).fetchone()[0]
            if pg in ("<null>", "<error>"):
                where = parse_where(f"({expression}) IS NULL", {}, columns)
                want = "true" if pg == "<null>" else "error"
            else:
                where = parse_where(f"({expression})::text = $1", {"1": pg}, columns)
                want = "true"
            got = engine_verdict(where, row)
            assert got == want, (expression, rid, pg, got)
            compared += 1
            failing += pg == "<error>"
    assert compared == len(EXPRESSIONS) * len(rows)
    assert failing > 50, failing  # (overflows are exercised)


def test_numeric_typmod_clauses_select_postgres_s_rows(table: Any) -> None:
    conn, columns, rows = table
    clauses = [
        "n::numeric(5,2) = 1.01", "n::numeric(5,2) = -1.01", "f::numeric(3,0) = 3",
        "f::numeric(3,0) = -3", "n::numeric(3,5) > 0",
        "t::numeric(4,1) IN (5.5, 1.2)", "i::numeric(5,-2) = 12300", "n::decimal(3,1) = 0.0",
        "$1::numeric(4,2) = n::numeric(4,2)", "1.234::numeric(3,2) < n",
        "n::numeric(6,2)::text LIKE '%.00'", "ARRAY[n]::numeric(5,1)[] && '{1.0,100.0}'",
    ]  # fmt: skip
    conn.execute(VERDICT_FUNCTION)
    for clause in clauses:
        where = parse_where(clause, {"1": "99.99"} if "$1" in clause else {}, columns)
        matched = 0
        for rid, row in rows.items():
            pg = conn.execute("SELECT verdict(%s, %s)", (where.sql, rid)).fetchone()[0]
            got = engine_verdict(where, row)
            assert agrees(got, pg), (clause, where.sql, rid, got, pg)
            matched += pg == "true"
        assert matched, clause  # (not a trivial answer)


def test_refused_in_postgres_s_words(table: Any) -> None:
    conn, columns, _rows = table
    for clause, message in REFUSED:
        refused_as_postgres_refuses(conn, columns, "d", clause, message)
    # (a modifier that is no integer constant stays refused)
    with pytest.raises(WhereError, match="is not supported"):
        parse_where("n::numeric('5') = 1", {}, columns)
