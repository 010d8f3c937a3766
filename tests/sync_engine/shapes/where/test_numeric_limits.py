"""numeric at Postgres's limits: its answers, or its refusals, and never a 500.

Postgres holds numerics of up to 131072 digits before the decimal point and a scale of up
to 16383: input beyond overflows ("value overflows numeric format"), a product whose scale
would exceed it is rounded. The engine had:
- crashed (a 500) on an integer literal of more than 4300 digits (Python's int() limit)
  and on a literal whose exponent does not fit a Decimal (`1e999...9`);
- taken seconds to expand `'1e1000000000'` and then matched rows Postgres refuses;
- failed `/` (Python's int() again) on a numeric of more than 4300 digits, so a row
  Postgres matched did not match live;
- kept `'1e-10000' * '1e-10000'` exact where Postgres rounds it to 0;
- answered a 5000-digit integer parameter with Python's words, not Postgres's.
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

BIG = "9" * 5000
ROWS = [BIG, "-" + BIG, "7" * 4400 + "." + "3" * 20, "1e-10000", "-1e-16383", "1e131071", "2", None]
AGREE = [
    "n / 7 > 0", "n / n = 1", "n / 3 < n", "(n + 1) / (n - 1) > 0", "n % 7 = 2",
    "n * n > 0", "n * n = 0", "n * '1e-10000' = 0", "n * 1.5 > n", f"n = {BIG}",
    f"n / {BIG} = 1", f"n < {BIG}.5", "n::text LIKE '9%'", "n::float8 > 0", "n::int8 > 0",
    "-n < 0", "abs(n) = n",
]  # fmt: skip
REFUSED = [
    ("n = 1e131072", "value overflows numeric format"),
    ("n = '1e1000000000'", "value overflows numeric format"),
    ("n = '1e-16384'::numeric", "value overflows numeric format"),
    ("n = 1e" + "9" * 400, "value overflows numeric format"),
]


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, n numeric, i int4)")
        conn.execute(VERDICT_FUNCTION)
        for i, n in enumerate(ROWS):
            conn.execute("INSERT INTO d VALUES (%s, %s::numeric, 1)", (i, n))
        yield conn, column_map(url)


def test_numerics_of_many_digits_give_postgres_verdict(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    conn, columns = table
    texts = dict(conn.execute("SELECT id, n::text FROM d").fetchall())
    wrong = []
    for clause in AGREE:
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT id, verdict(%s, id) FROM d", (where.sql,)))
        for rid, text in texts.items():
            pg = (verdicts[rid],)  # (all rows' verdicts in one round trip)
            got = engine_verdict(where, {"id": str(rid), "n": text, "i": "1"})
            if not agrees(got, pg[0]):
                wrong.append((clause, (text or "")[:20], pg[0]))
    assert not wrong, wrong


def test_numerics_beyond_postgres_range_are_refused_in_its_words(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    conn, columns = table
    for clause, message in REFUSED:
        with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=message):
            conn.execute(f"SELECT 1 FROM d WHERE {clause}")
        with pytest.raises(WhereError, match=message):
            parse_where(clause, {}, columns)
    with pytest.raises(WhereError, match=f'value "{BIG}" is out of range for type integer'):
        parse_where("i = $1", {"1": BIG}, columns)
