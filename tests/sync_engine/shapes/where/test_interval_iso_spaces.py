"""An ISO 8601 interval literal with a space before or after (`' P1D'`) is refused when the
clause is read, as Postgres refuses it (its ISO reader takes the text as given); the
engine read it, and the snapshot's failure blamed "the table's rows" (wherefuzz 11:00).

Real path: the in-process engine over HTTP; Postgres's own answer for each literal.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.sync_engine.engine_harness import Engine

LITERALS = [" P1D", "P1D ", "\\tP1DT2H", "P1D", "P1DT2H", " 1 day "]


@pytest.mark.parametrize("literal", LITERALS)
async def test_an_interval_literal_is_taken_or_refused_as_postgres_does(
    engine: Engine, literal: str
) -> None:
    literal = literal.replace("\\t", "\t")
    engine.sql("CREATE TABLE iv (id int PRIMARY KEY, v interval)")
    engine.sql("INSERT INTO iv VALUES (1, '1 day'), (2, '2 days'), (3, '1 day 02:00:00')")
    try:
        engine.sql("SELECT %s::interval", (literal,))
        taken = True
    except psycopg.errors.InvalidDatetimeFormat:
        taken = False
    where = f"v = '{literal}'"
    status, _h, body = await engine.get(table="iv", offset="-1", where=where)
    if taken:
        assert status == 200, body
        got = sorted(m["value"]["id"] for m in body if "value" in m)
        assert got == sorted(str(r[0]) for r in engine.sql(f"SELECT id FROM iv WHERE {where}"))
    else:
        assert status == 400, body
        message = body["errors"]["where"][0]
        assert "At location" in message and "table's rows" not in message, message
