"""An interval literal giving a field twice ('1 day 1 day', '1 hour 02:00:00') is refused
when the clause is read, as Postgres's DecodeInterval refuses it; the engine added them up,
and the snapshot's failure blamed "the table's rows" (wherefuzz 11:00). Found beside it:
a number without a unit before other parts ('8 3 hours' is 8 days 3 hours in Postgres, the
engine read 3 h 8 s) and a time after a fraction of a day ('02:00:00 1.5 days' is 1 day 2 h
in Postgres, the engine 1 day 14 h): refused now. Differential: every pair of these parts,
Postgres's value or a refusal, and Postgres's refusals refused.

Real path: the engine's literal reading (`parse_interval`, what a where's interval literal
goes through) against Postgres's `::interval`, then one clause over HTTP.
"""

from __future__ import annotations

import itertools

import psycopg

from sync_engine.pg.values import parse_interval
from tests.sync_engine.engine_harness import Engine

PARTS = ["1 day", "2 days", "1 week", "3 hours", "02:00:00", "4 minutes", "5 seconds",
         "1.5 seconds", "6 ms", "7 us", "1 mon", "1 year", "1 decade", "8", "2.5",
         "1.5 days", "-1 day", "1 century"]  # fmt: skip


async def test_interval_fields_given_twice_are_refused_as_postgres_does(engine: Engine) -> None:
    checked = refused = agreed = 0
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        conn.execute("SET IntervalStyle = iso_8601")
        for a, b in itertools.product(PARTS, repeat=2):
            literal = f"{a} {b}"
            try:
                row = conn.execute("SELECT %s::interval::text", (literal,)).fetchone()
                assert row is not None
                postgres: str | None = row[0]
            except psycopg.errors.InvalidDatetimeFormat:
                postgres = None
            try:
                mine: object = parse_interval(literal)
            except ValueError:
                mine = None
            if postgres is None:
                assert mine is None, (literal, mine)
                refused += 1
            elif mine is not None:  # (or refused: a 400, never another value)
                assert mine == parse_interval(postgres), (literal, mine, postgres)
                agreed += 1
            checked += 1
    assert checked == len(PARTS) ** 2 and refused > 20 and agreed > 100, (refused, agreed)
    engine.sql("CREATE TABLE iv (id int PRIMARY KEY, v interval)")
    status, _h, body = await engine.get(table="iv", offset="-1", where="v = '1 day 1 day'")
    assert status == 400, body
    message = body["errors"]["where"][0]
    assert "At location" in message and "table's rows" not in message, message
