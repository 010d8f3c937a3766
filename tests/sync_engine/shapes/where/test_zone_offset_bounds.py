"""A zone offset Postgres refuses in a literal (`+16`, past its 15:59:59) is refused when the
clause is read, naming the literal, as Postgres refuses it when it reads the query. The
engine read it (Python's offsets go to 23:59), and the snapshot's failure was a 400
blaming "the table's rows" (wherefuzz 11:00). Offsets Postgres takes still agree.

Real path: the in-process engine over HTTP; Postgres's own answer for each literal.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.sync_engine.engine_harness import Engine

LITERALS = [
    ("2024-01-01 00:00:00+16", False),
    ("2024-01-01 00:00:00-16:00", False),
    ("2024-01-01 00:00:00+15:60", False),
    ("2024-01-01 00:00:00+15:59", True),
    ("2024-01-01 00:00:00-15:59:59", True),
    ("2024-01-01 00:00:00+05:30", True),
    # digits run together are hours and minutes, never seconds (DecodeTimezone): `+155959`
    # is 1559 hours and 59 minutes (it was a 500: found, then not read; review 11:39)
    ("2024-01-01 00:00:00+155959", False),
    ("2024-01-01 00:00:00+15:5959", False),
    ("2024-01-01 00:00:00-15:59:5959", False),
    ("2024-01-01 00:00:00+053000", False),
    ("2024-01-01 00:00:00+99999999999999999999", False),
    ("2024-01-01 00:00:00+1559", True),
    ("2024-01-01 00:00:00-0530", True),
    ("2024-01-01 00:00:00+123", True),
    ("2024-01-01 00:00:00+000030", True),
    ("2024-01-01 00:00:00+0001530", True),
    ("2024-01-01 00:00:00+1:5:7", True),
]


@pytest.mark.parametrize(("literal", "postgres_takes_it"), LITERALS)
async def test_a_zone_offset_is_taken_or_refused_as_postgres_does(
    engine: Engine, literal: str, postgres_takes_it: bool
) -> None:
    engine.sql("CREATE TABLE ev (id int PRIMARY KEY, tz timestamptz)")
    engine.sql("INSERT INTO ev VALUES (1, '2024-01-01 00:00:00+00'), (2, '2023-12-31 00:00:00+00')")
    try:
        engine.sql("SELECT %s::timestamptz", (literal,))
        taken = True
    except psycopg.errors.InvalidTimeZoneDisplacementValue:
        taken = False
    assert taken == postgres_takes_it
    where = f"tz >= '{literal}'"
    status, _h, body = await engine.get(table="ev", offset="-1", where=where)
    if taken:
        assert status == 200, body
        got = sorted(m["value"]["id"] for m in body if "value" in m)
        assert got == sorted(str(r[0]) for r in engine.sql(f"SELECT id FROM ev WHERE {where}"))
    else:
        assert status == 400, body
        message = body["errors"]["where"][0]
        assert f'"{literal}"' in message and "At location" in message, message
        assert "table's rows" not in message, message


TIMES = [
    "12:00:00+155959",
    "12:00:00+15:5959",
    "12:00:00+16",
    "12:00:00+1559",
    "12:00:00-05:30:15",
    "2024-01-01 12:00:00+155959",
]


@pytest.mark.parametrize("literal", TIMES)
async def test_a_zone_offset_in_a_time_literal_is_taken_or_refused_as_postgres_does(
    engine: Engine, literal: str
) -> None:
    """time input reads (and drops) an offset, and refuses one past the bounds, as
    timestamptz input does (`+155959` was a 500 here too)."""
    engine.sql("CREATE TABLE tt (id int PRIMARY KEY, tm time)")
    engine.sql("INSERT INTO tt VALUES (1, '11:00'), (2, '12:00'), (3, '13:00')")
    try:
        engine.sql("SELECT %s::time", (literal,))
        taken = True
    except psycopg.errors.InvalidTimeZoneDisplacementValue:
        taken = False
    where = f"tm >= '{literal}'"
    status, _h, body = await engine.get(table="tt", offset="-1", where=where)
    if taken:
        assert status == 200, body
        got = sorted(m["value"]["id"] for m in body if "value" in m)
        assert got == sorted(str(r[0]) for r in engine.sql(f"SELECT id FROM tt WHERE {where}"))
    else:
        assert status == 400, body
        message = body["errors"]["where"][0]
        assert f'"{literal}"' in message and "At location" in message, message
