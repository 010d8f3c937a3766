"""Date, time and interval literals holding a space C's isspace() does not know.

Postgres's date and time input (ParseDateTime) skips ASCII spaces only: a no-break space
(U+00A0), an em space (U+2003) or \\x1c in '2024-01-01\\u00a0' is a character of no field,
and the literal is "invalid input syntax". The engine's readers took them for spaces
(str.strip(), \\s) and accepted the clause; the snapshot query then failed, a vague 400 (or
none on an empty table) where Postgres's own message was due at once. Found by the
out-of-tree differential fuzz (/work/where-fuzz, round 1: its words hold '1\\u00a0').
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import table_in_own_database

TABLE = """
CREATE TABLE u (id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, tm time,
                iv interval, da date[]);
INSERT INTO u VALUES (1, '2024-01-01', '2024-01-01', '2024-01-01', '12:00', '1 day', '{}')
"""

NBSP, EM = "\u00a0", "\u2003"
CLAUSES = [
    f"d = '2024-01-01{NBSP}'", f"d = '{NBSP}2024-01-01'", f"d = date '2024-01-01{EM}'",
    f"d = '2024-01-01 12:00{NBSP}'", "d = '2024-01-01\x1c'", f"ts = '{NBSP}2024-01-01'",
    f"ts = '2024-01-01{NBSP}12:00'", f"tz = 'infinity{EM}'",
    f"tz = '2024-01-01 00:00{NBSP}+02'", f"tm = '12:00{NBSP}'",
    f"tm = '2024-01-01 12:00{NBSP}'", f"iv = '1 day{NBSP}'", f"iv = '1{NBSP}day'",
    f"d IN ('2024-01-01', '2024-01-02{NBSP}')",
]  # fmt: skip


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with table_in_own_database(pg_server_url, TABLE, "u") as found:
        yield found


@pytest.mark.parametrize("clause", CLAUSES)
def test_refused_at_once_in_postgres_words(
    table: tuple[psycopg.Connection[Any], Any], clause: str
) -> None:
    conn, columns = table
    with pytest.raises(psycopg.errors.InvalidDatetimeFormat) as pg_info:
        conn.execute(f"SELECT id FROM u WHERE {clause}")
    postgres_says = str(pg_info.value).split("\n")[0]
    with pytest.raises(WhereError) as info:
        parse_where(clause, {}, columns)
    assert str(info.value).endswith(postgres_says), (str(info.value), postgres_says)


def test_ascii_spaces_are_still_read(table: tuple[psycopg.Connection[Any], Any]) -> None:
    conn, columns = table
    for clause in ["d = ' 2024-01-01\t'", "tm = '12:00 '", "iv = ' 1 day '"]:
        where = parse_where(clause, {}, columns)
        assert [r[0] for r in conn.execute(f"SELECT id FROM u WHERE {where.sql}")] == [1]
        row = {"id": "1", "d": "2024-01-01", "ts": "2024-01-01 00:00:00",
               "tz": "2024-01-01 00:00:00+00", "tm": "12:00:00", "iv": "P1D", "da": "{}"}  # fmt: skip
        assert where.matches(row), clause
