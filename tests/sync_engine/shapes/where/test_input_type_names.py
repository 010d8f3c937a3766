"""The engine's 400 for a literal a date/time type cannot read names the type as Postgres's
input function does: timestamp_in says "invalid input syntax for type timestamp", time_in
"... type time" (the engine said "timestamp without time zone", "time without time zone",
the types' full names, which no Postgres message uses here). Found by the round-3 fuzz of
policy claims through the real proxy (/work/where-fuzz: a claim "ﬁ" bound into
`ts = {{s}}`): every other type's words were already Postgres's.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.sync_engine.engine_harness import Engine

CLAUSES = [
    "ts = 'x'", "tm = 'x'", "ts = '+infinity'", "ts < 'ﬁ'", "t::timestamp = 'x'",
    "tm IN ('12:00', 'noon')", "tz = 'x'", "d = 'x'", "ts = $1",
]  # fmt: skip


async def test_invalid_date_time_input_is_postgres_s_message(engine: Engine) -> None:
    engine.sql(
        "CREATE TABLE dt (id int PRIMARY KEY, t text, ts timestamp, tm time, tz timestamptz, d date)"
    )
    for clause in CLAUSES:
        params = {"params[1]": "x"} if "$1" in clause else {}
        inlined = clause.replace("$1", "'x'")
        with pytest.raises(psycopg.errors.InvalidDatetimeFormat) as pg:
            engine.sql(f"SELECT id FROM dt WHERE {inlined}")
        status, _h, body = await engine.get(table="dt", offset="-1", where=clause, **params)
        assert status == 400, body
        (message,) = body["errors"]["where"]
        expected = str(pg.value).splitlines()[0]
        assert message.endswith(expected), (clause, message, expected)
