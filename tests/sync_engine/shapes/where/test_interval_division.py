"""interval / float8: Postgres's result to the microsecond, or its error.

The engine refused `iv / 2` with "operator does not exist: interval / integer", which
Postgres has (interval_div, also reached from integers and numerics, which convert to
float8). It now divides step for step as interval_div does: months and days divided and
truncated, their fractions carried down to days and seconds (rounded to microseconds),
out-of-range results an error. Each seeded row holds Postgres's own text of `iv / f`;
the clause `(iv / f)::text = expected` must match exactly where Postgres's does.
"""

from __future__ import annotations

import random
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

INTERVALS = ["1 mon", "1 mon 1 day 1 sec", "-1 year -2 mons", "1 day", "25 hours", "0",
             "00:00:00.000001", "-3 days 4 hours", "178000000 years", "2147483647 days",
             "-2147483648 mons", "1 mon -1 sec", "10 years 3 mons 5 days 07:08:09.123456"]  # fmt: skip
FACTORS = ["2", "3", "-3", "7", "0.3", "1e-7", "1e-20", "1e300", "Infinity", "-Infinity",
           "NaN", "0", "-0", "0.5", "30", "1.5", "1e-3"]  # fmt: skip
SEED = 20261205


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, dict[int, dict[str, Any]]]]:
    url = with_display_settings(db_url)
    rng = random.Random(SEED)
    pairs = [(i, f) for i in INTERVALS for f in FACTORS]
    for _ in range(150):
        months, days = rng.randint(-30, 30), rng.randint(-400, 400)
        micros = rng.randint(-(10**12), 10**12)
        pairs.append((f"{months} mons {days} days {micros} microseconds", repr(rng.uniform(-9, 9))))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, iv interval, f float8, expected text)")
        conn.execute(VERDICT_FUNCTION)
        rows = {}
        for rid, (iv, f) in enumerate(pairs):
            try:
                (expected,) = conn.execute(
                    "SELECT (%s::interval / %s::float8)::text", (iv, f)
                ).fetchone() or (None,)
            except psycopg.Error:
                expected = None
            conn.execute("INSERT INTO d VALUES (%s, %s, %s, %s)", (rid, iv, f, expected))
        for r in conn.execute("SELECT id, iv::text, f::text, expected FROM d"):
            rows[r[0]] = {"id": str(r[0]), "iv": r[1], "f": r[2], "expected": r[3]}
        yield conn, column_map(url), rows


def test_interval_divided_by_float8_equals_postgres(
    table: tuple[psycopg.Connection[Any], Any, dict[int, dict[str, Any]]],
) -> None:
    conn, columns, rows = table
    wrong = []
    for clause in ["(iv / f)::text = expected", "iv / f > iv", "(iv / f) IS NULL"]:
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT id, verdict(%s, id) FROM d", (where.sql,)))
        for rid, row in rows.items():
            pg = (verdicts[rid],)  # (all rows' verdicts in one round trip)
            if not agrees(engine_verdict(where, row), pg[0]):
                wrong.append((clause, row["iv"], row["f"], row["expected"], pg[0]))
    assert not wrong, wrong[:5]
    matched = parse_where("(iv / f)::text = expected", {}, columns)
    assert sum(engine_verdict(matched, r) == "true" for r in rows.values()) > len(rows) // 2


def test_integers_and_numerics_divide_as_float8_and_zero_is_an_error(
    table: tuple[psycopg.Connection[Any], Any, dict[int, dict[str, Any]]],
) -> None:
    conn, columns, _rows = table
    for clause in ["iv / 2 = iv / 2.0", "iv / '3' = iv / 3", "iv / 0.5 = iv * 2"]:
        where = parse_where(clause, {}, columns)
        assert where.matches({"id": "0", "iv": "P1M1DT1S", "f": "1", "expected": None})
        assert conn.execute(
            f"SELECT {where.sql} FROM (SELECT '1 mon 1 day 1 sec'::interval iv) r"
        ).fetchone() == (True,)
    with pytest.raises(WhereError, match="division by zero"):
        parse_where("interval '1 day' / 0 IS NULL", {}, columns)
