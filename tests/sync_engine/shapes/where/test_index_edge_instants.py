"""A live row whose key the shape router cannot parse still reaches the shapes it matches.

The router files a shape with `tz = '9999-12-31 23:59:59-12'` under that instant and looks a
change's value up by parsing it; a timestamptz past year 9999 (or before year 1) in UTC is
a value Postgres holds and Python's datetime cannot (`UnrepresentableValue`), and the row
was skipped: `'10000-01-01 11:59:59+00'` is the same instant, Postgres's where matches it,
and neither the live client nor a new one ever got it (wherefuzz 10:55). Now every shape of
that column is asked, and its where asks Postgres about such a row.

Real path: the in-process engine over HTTP, real Postgres writes, live long-polls.
"""

from __future__ import annotations

import pytest

from tests.sync_engine.engine_harness import Engine

CASES = [
    ("tz = '9999-12-31 23:59:59-12'", "10000-01-01 11:59:59+00"),
    ("tz IN ('0001-01-01 00:00:00+05', '2020-01-01 00:00:00+00')", "0001-01-01 00:00:00+05"),
]


@pytest.mark.parametrize(("where", "value"), CASES, ids=["past-9999", "before-1"])
async def test_a_row_at_an_instant_python_cannot_hold_reaches_its_shape(
    engine: Engine, where: str, value: str
) -> None:
    engine.sql("CREATE TABLE ev (id int PRIMARY KEY, tz timestamptz)")
    engine.sql("INSERT INTO ev VALUES (1, '2000-01-01 00:00:00+00')")
    rows, handle, offset = await engine.sync(table="ev", where=where)
    assert rows == {}
    engine.sql("INSERT INTO ev VALUES (2, %s)", (value,))
    assert engine.sql(f"SELECT id FROM ev WHERE {where}") == [(2,)]
    await engine.follow_live(rows, handle, offset, "2", table="ev", where=where)
    assert [r["id"] for r in rows.values()] == ["2"]
    fresh, _, _ = await engine.sync(table="ev", where=where)
    assert [r["id"] for r in fresh.values()] == ["2"]
