"""Refusals in Postgres's own words, checked against Postgres's EXPLAIN of the clause.

Found by /work/wherefuzz/casefz.py comparing the engine's refusal with Postgres's error:
- a constant division by zero the planner folds was refused in Python's words ("integer
  division or modulo by zero"; decimal's: a list of signals) where Postgres says "division
  by zero" for every type;
- every boolean test was named "IS TRUE" ("argument of IS TRUE must be type boolean") where
  Postgres names the test written (IS NOT FALSE, IS UNKNOWN...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import table_in_own_database

TABLE = "CREATE TABLE w (id int PRIMARY KEY, i int, n numeric, f float8, t text, iv interval)"

CLAUSES = [
    "i = 1 / 0", "i = 1 % 0", "n = 1.0 / 0", "n = 1.5 % 0", "f = 1::float8 / 0",
    "iv = interval '1 day' / 0", "i = -2147483648 / 0", "t IS TRUE", "t IS NOT TRUE",
    "t IS FALSE", "t IS NOT FALSE", "i IS UNKNOWN", "n IS NOT UNKNOWN",
]  # fmt: skip


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with table_in_own_database(pg_server_url, TABLE, "w") as found:
        yield found


def test_refusals_say_what_postgres_says(table: Any) -> None:
    conn, columns = table
    for clause in CLAUSES:
        with pytest.raises(psycopg.Error) as pg:
            with conn.transaction():
                conn.execute(f"EXPLAIN SELECT 1 FROM w WHERE {clause}")
        words = pg.value.diag.message_primary or ""
        with pytest.raises(WhereError, match=re.escape(words) + "$"):
            parse_where(clause, {}, columns)
