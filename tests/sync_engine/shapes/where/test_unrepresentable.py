"""Dates and timestamps outside years 1-9999: valid in Postgres, not in Python's datetime.

The engine cannot answer a clause that reads such a value, so it must not guess: `matches`
raises `UnrepresentableValue` (where Postgres would raise, e.g. division by zero, it is still
"no match"), and the replicator asks Postgres whether such a row matches, for the values its
change carries (`pg/row_where.py`; it used to rotate the shape): a client following live
ends with exactly `SELECT ... WHERE <clause>`, without a refetch.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import parse_where
from sync_engine.shapes.where.clause import ClauseFails
from tests.sync_engine.engine_harness import Engine, apply


def _col(name: str, type_name: str) -> ColumnInfo:
    return ColumnInfo(name, 1, 0, type_name, None, "b", -1, 0, False, None, False, None)


COLUMNS = {c.name: c for c in [_col("id", "int4"), _col("d", "date"), _col("ts", "timestamp"),
                               _col("tz", "timestamptz"), _col("n", "int4")]}  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "row"),
    [
        ("d > '2020-01-01'", {"d": "10000-01-01"}),
        ("d > '2020-01-01'", {"d": "0044-03-15 BC"}),
        ("ts > '2020-01-01'", {"ts": "10000-01-01 00:00:00"}),
        ("ts < '2020-01-01'", {"ts": "0044-03-15 12:00:00 BC"}),
        ("tz > '2020-01-01'", {"tz": "10000-01-01 00:00:00+00"}),
        ("tz < '2020-01-01'", {"tz": "0001-12-31 23:00:00+00 BC"}),
        ("d + 1 > '2020-01-01'", {"d": "9999-12-31"}),  # Postgres: 10000-01-01
        ("d - 1 < '2020-01-01'", {"d": "0001-01-01"}),  # Postgres: 0001-12-31 BC
        ("d + interval '1 mon' > '2020-01-01'", {"d": "9999-12-15"}),
        ("d::text::date > '2020-01-01'", {"d": "10000-01-01"}),
        # the interval's negation overflows: Postgres 15 gives the infinity back, 17 raises
        ("ts - interval '-178956970 years -8 mons' > '2020-01-01'", {"ts": "infinity"}),
        # an offset that puts a timestamptz past year 9999 in UTC (it failed: no match)
        (
            "'9999-12-31 23:00-12'::timestamptz - interval '1 us' * n < ts",
            {"n": "1", "ts": "2020-01-01"},
        ),
        ("('0001-01-01 00:30+01'::timestamptz + interval '1 us' * n)::text <> ''", {"n": "1"}),
        # days are added before the time, each step in range: Postgres fails (6190 BC on the
        # way; a row it is asked about matches nothing); the sum of the two was no change
        (
            "ts - interval '1 day -24 hours' * n > '2000-01-01'",
            {"n": "3000000", "ts": "2024-01-01 00:00:00"},
        ),
    ],
)
def test_unrepresentable_value_is_not_guessed(sql: str, row: dict[str, str]) -> None:
    with pytest.raises(UnrepresentableValue):
        parse_where(sql, {}, COLUMNS).matches(row)


@pytest.mark.parametrize(
    ("sql", "row", "expected"),
    [
        ("1 / n > 0 AND n > 0", {"n": "0"}, False),  # (Postgres stops at n > 0, cheaper)
        ("d > '2020-01-01'", {"d": "infinity"}, True),
        ("d > '2020-01-01'", {"d": "-infinity"}, False),
        ("ts > '2020-01-01'", {"ts": "infinity"}, True),
        ("tz < '2020-01-01'", {"tz": "-infinity"}, True),
        ("d > '2020-01-01'", {"d": "9999-12-31"}, True),
        ("id > 0", {"id": "1", "d": "10000-01-01"}, True),  # d is not read
        ("d IS NULL OR d > '2020-01-01'", {"d": None}, True),
    ],
)
def test_representable_or_failing_rows_still_answer(
    sql: str, row: dict[str, str | None], expected: bool
) -> None:
    assert parse_where(sql, {}, COLUMNS).matches(row) is expected


def test_a_row_the_clause_fails_on_is_postgres_to_fail() -> None:
    """(finite: out of range in every version): Postgres fails a snapshot meeting the row,
    so the engine does not answer either (`ClauseFails`: test_failing_rows.py)."""
    with pytest.raises(ClauseFails):
        parse_where("ts - interval '-178956970 years -8 mons' > '2020-01-01'", {}, COLUMNS).matches(
            {"ts": "2024-01-01"}
        )


def test_out_of_range_literal_is_refused() -> None:
    with pytest.raises(ValueError, match="outside years 1-9999"):
        parse_where("d > '10000-01-01'", {}, COLUMNS)


# --- real path: engine + Postgres + replication -----------------------------------------------

WHERE = "d > '2020-01-01'"


def _expected(engine: Engine, where: str) -> dict[str, dict[str, Any]]:
    rows = engine.sql(f"SELECT id::text, d::text, title FROM events WHERE {where}")
    return {f'"public"."events"/"{i}"': {"id": i, "d": d, "title": t} for i, d, t in rows}


async def _follow_until(
    engine: Engine, where: str, rows: dict[str, Any], handle: str, offset: str, want: Any
) -> tuple[dict[str, Any], str, str, int]:
    """Follow live like the client (409: drop rows, refetch from -1) until `rows == want`."""
    refetches = 0
    for _ in range(50):
        if rows == want:
            return rows, handle, offset, refetches
        status, h, body = await engine.get(
            table="events", where=where, offset=offset, handle=handle, live="true"
        )
        if status == 409:
            refetches += 1
            rows, handle, offset = await engine.sync(table="events", where=where)
            continue
        assert status == 200, body
        apply(rows, body)
        offset = h["electric-offset"]
    raise AssertionError(f"never converged: {rows} != {want}")


async def test_live_rows_outside_python_dates_are_filtered_by_postgres(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.sql("CREATE TABLE events (id int PRIMARY KEY, d date, title text)")
    engine.sql("INSERT INTO events VALUES (1, '2021-06-01', 'a'), (2, '2019-01-01', 'b')")
    rows, handle, offset = await engine.sync(table="events", where=WHERE)
    assert rows == _expected(engine, WHERE) and len(rows) == 1
    other, o_handle, o_offset = await engine.sync(table="events", where="id > 0")

    caplog.set_level(logging.WARNING, logger="sync_engine.replication.replicator")
    engine.sql(
        "INSERT INTO events VALUES (3, '10000-01-01', 'future'), (4, '0044-03-15 BC', 'ides'),"
        " (5, '2022-01-01', 'c')"
    )
    want = _expected(engine, WHERE)
    assert set(want) == {'"public"."events"/"1"', '"public"."events"/"3"', '"public"."events"/"5"'}
    rows, handle, offset, refetches = await _follow_until(engine, WHERE, rows, handle, offset, want)
    assert refetches == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == []

    # A shape whose clause does not read `d` is not rotated: it gets the rows live.
    other, o_handle, o_offset, o_refetches = await _follow_until(
        engine, "id > 0", other, o_handle, o_offset, _expected(engine, "id > 0")
    )
    assert o_refetches == 0

    # The shape keeps following; changes to such rows are filtered by Postgres too.
    engine.sql("UPDATE events SET d = '2019-06-01' WHERE id = 3")  # leaves the shape
    engine.sql("UPDATE events SET title = 'x' WHERE id = 5")
    rows, handle, offset, refetches = await _follow_until(
        engine, WHERE, rows, handle, offset, _expected(engine, WHERE)
    )
    assert refetches == 0
    engine.sql("UPDATE events SET d = '20000-02-02' WHERE id = 1")  # stays in, unrepresentable
    engine.sql("INSERT INTO events VALUES (6, '2023-01-01', 'd')")
    rows, handle, offset, refetches = await _follow_until(
        engine, WHERE, rows, handle, offset, _expected(engine, WHERE)
    )
    assert refetches == 0
    assert rows == _expected(engine, WHERE)
