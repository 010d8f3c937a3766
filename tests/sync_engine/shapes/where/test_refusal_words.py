"""Clauses Postgres answers, which the engine refuses: its 400 must not claim Postgres's
errors ("operator does not exist", "invalid input syntax"), which would tell a client the
clause is wrong where it is only beyond what the engine evaluates.

Found by the out-of-tree differential fuzz with `$n` parameters (/work/where-fuzz/fuzz3.py,
round 2): `ea < '{ok}'::mood[]` said "operator does not exist: mood[] < mood[]" (Postgres
orders enum arrays as it orders other arrays), and 'infinity+05:30' (a zone after the
special word, which Postgres reads and drops) was "invalid input syntax". And casts Postgres
has (an array's is its elements': `fa::numeric[]`, `ea::text[]`, `ia::bool[]`; pg_cast's
interval to time, jsonb to int4, "char" to int4) were "cannot cast type ..." (a scan of
every cast between the types the engine knows: 80 such claims).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import WhereError, parse_where
from sync_engine.shapes.where.errors import NOT_EVALUATED
from tests.sync_engine.shapes.where.columns import table_in_own_database

TABLE = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE r (id int PRIMARY KEY, ea mood[], d date, ts timestamp, tz timestamptz,
                fa float8[], ia int4[], tza timestamptz[], cha char(2)[], iv interval,
                ttz timetz, js jsonb, c1 "char");
INSERT INTO r VALUES (1, '{ok}', '2024-01-01', '2024-01-01', '2024-01-01', '{1.5}', '{1}',
                      '{2024-01-01}', '{1}', '1 day', '12:00+02', '1', 'a'),
                     (2, '{sad,happy}', 'infinity', '-infinity', 'infinity', NULL, NULL,
                      NULL, NULL, NULL, NULL, NULL, NULL)
"""

CLAUSES = [
    "ea < '{ok}'::mood[]", "ea >= ea", "ea > ARRAY['sad'::mood]",
    "tz = 'infinity+05:30'", "tz < '-infinity UTC'", "d = 'infinity+05'", "ts = '-infinity Z'",
    "tz IN ('infinity +02', '2024-01-01')",
    "fa::numeric[] IS NULL", "ea::text[] IS NULL", "ia::bool[] IS NULL", "fa::int4[] IS NULL",
    "tza::date[] IS NULL", "cha::int4[] IS NULL", "iv::time IS NULL", "ttz::time IS NULL",
    "js::int4 IS NULL", "c1::int4 IS NULL",
]  # fmt: skip


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with table_in_own_database(pg_server_url, TABLE, "r") as found:
        yield found


@pytest.mark.parametrize("clause", CLAUSES)
def test_refusal_does_not_claim_a_postgres_error(
    table: tuple[psycopg.Connection[Any], Any], clause: str
) -> None:
    conn, columns = table
    conn.execute(f"SELECT id FROM r WHERE {clause}").fetchall()  # Postgres answers
    with pytest.raises(WhereError) as info:
        parse_where(clause, {}, columns)
    message = str(info.value)
    assert "not supported" in message or NOT_EVALUATED in message, message
    assert "does not exist" not in message and "invalid input" not in message, message


@pytest.mark.parametrize(
    ("clause", "message"),
    [("d::int4 IS NULL", "cannot cast type date to integer"),
     ("ia::date[] IS NULL", "cannot cast type integer[] to date[]")],
)  # fmt: skip
def test_casts_postgres_lacks_are_still_its_words(
    table: tuple[psycopg.Connection[Any], Any], clause: str, message: str
) -> None:
    conn, columns = table
    with pytest.raises(psycopg.errors.CannotCoerce, match=message.replace("[", r"\[")):
        conn.execute(f"SELECT id FROM r WHERE {clause}")
    with pytest.raises(WhereError, match=message.replace("[", r"\[")):
        parse_where(clause, {}, columns)


def test_plus_infinity_is_still_postgres_15s_invalid_input(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    conn, columns = table
    with pytest.raises(psycopg.errors.InvalidDatetimeFormat):
        conn.execute("SELECT id FROM r WHERE tz = '+infinity'")
    with pytest.raises(WhereError, match="invalid input syntax for type timestamp"):
        parse_where("tz = '+infinity'", {}, columns)
