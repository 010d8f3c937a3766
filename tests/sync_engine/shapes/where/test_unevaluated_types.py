"""Types the engine does not evaluate (ranges, composites, geometry, timetz, inet, ...).

Their values reach the engine as Postgres's text. It compared any two of them with `=` and
`<>` (and IN, IS DISTINCT FROM, NULLIF, ANY, array equality) as that text, which is
Postgres's answer only where the type's `=` is equality of the text: not for numrange
(`[1.0,2.0)` = `[1,2)`), a composite (its fields' `=`), point (`<>` within 1e-6), circle
(by area), box, line. Live rows of such shapes were kept or dropped against Postgres's
WHERE. Those comparisons are now 400s; the types whose `=` is their text's (timetz, inet,
macaddr, money, bit, ...) are still compared, differentially here. A refusal says what is
refused and why: `ttz < '12:00+02'` said "operator does not exist: timetz < unknown",
though Postgres orders timetz values.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import column_map

#: type -> values, every pair of them (and NULL) a row (a, b)
VALUES: dict[str, list[str]] = {
    "numrange": ["[1.0,2.0)", "[1,2)", "empty"],
    "pair": ["(1.0,x)", "(1,x)"],
    "point": ["(1,1)", "(1.0000000001,1)"],
    "circle": ["<(0,0),1>", "<(0,0),1.0000000001>"],
    "timetz": ["12:00+02", "10:00+00", "12:00:00+02"],
    "inet": ["10.0.0.1", "10.0.0.1/32", "10.0.0.1/24"],
    "macaddr": ["08:00:2b:01:02:03", "0800.2b01.0203"],
    "varbit": ["101", "1010"],
}
TEXT_EQUAL = {"timetz", "inet", "macaddr", "varbit"}
CLAUSES = ["a = b", "a <> b", "a IS DISTINCT FROM b", "a NOT IN (b)", "a = ANY(ARRAY[b])"]


@pytest.fixture
def conn(db_url: str) -> Any:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TYPE pair AS (n numeric, t text)")
        for typ, values in VALUES.items():
            conn.execute(f"CREATE TABLE t_{typ} (id int PRIMARY KEY, a {typ}, b {typ})")
            pairs = [(x, y) for x in [*values, None] for y in [*values, None]]
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO t_{typ} VALUES (%s, %s::text::{typ}, %s::text::{typ})",
                    [(i, x, y) for i, (x, y) in enumerate(pairs)],
                )
        yield url, conn


def test_equality_is_postgres_or_refused(conn: Any) -> None:
    url, pg = conn
    for typ in VALUES:
        columns = column_map(url, f"t_{typ}")
        rows = {
            r[0]: {"id": str(r[0]), "a": r[1], "b": r[2]}
            for r in pg.execute(f"SELECT id, a::text, b::text FROM t_{typ}")
        }
        for clause in CLAUSES:
            try:
                where = parse_where(clause, {}, columns)
            except WhereError as e:
                assert typ not in TEXT_EQUAL, (typ, clause, e)
                assert f"comparing {typ} values" in str(e) or "point = point" in str(e), e
                continue
            assert typ in TEXT_EQUAL, (typ, clause)
            expected = {r[0] for r in pg.execute(f"SELECT id FROM t_{typ} WHERE {where.sql}")}
            got = {i for i, row in rows.items() if where.matches(row)}
            assert got == expected, (typ, clause, sorted(got ^ expected))


def test_refusals_say_what_is_refused(conn: Any) -> None:
    url, pg = conn
    columns = column_map(url, "t_timetz")
    for clause, message in [
        ("a < '12:00+02'", "operator < on timetz values is not supported here: the engine does"
         " not evaluate timetz (it compares timetz values with = and <> only)"),
        ("a > b", "operator > on timetz values is valid in Postgres"),
        ("a = '12:00+02'", "a timetz literal is not supported here: the engine does not read"
         " timetz input"),
        # (Postgres has LIKE on bytea: it said "operator does not exist: bytea ~~ unknown")
        ("'\\x61'::bytea LIKE 'a%'", "LIKE on bytea is not supported here"),
    ]:  # fmt: skip
        with pytest.raises(WhereError, match=re.escape(message)):
            parse_where(clause, {}, columns)
        pg.execute(f"SELECT 1 FROM t_timetz WHERE {clause}")  # (Postgres has them)
    # a column's text is Postgres's, whatever its type (it was "cannot convert timetz")
    where = parse_where("concat(a, '|') = '12:00:00+02|'", {}, columns)
    assert where.matches({"id": "1", "a": "12:00:00+02", "b": None})
    assert pg.execute("SELECT concat('12:00+02'::timetz, '|')").fetchone() == ("12:00:00+02|",)
