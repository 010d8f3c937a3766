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
