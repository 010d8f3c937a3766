"""Interval literals: the value Postgres reads, or a WhereError.

Postgres's interval input cascades fractions of a unit by rules of its own ('1.5 us' is
1 microsecond, '1.0000005 years' is 1 year, '0.1 years' 1 month) and reads a bare number
before a clock as days ('1 1:00' is a day and an hour); the engine read '1 1:00' as an hour
and a second, so `iv = '1 1:00'` matched other rows live than in the snapshot. Now the
forms the engine reads exactly are accepted (whole numbers with units, fractional seconds,
a clock, '@' / 'ago', a lone number, ISO 8601 with whole fields) and the rest refused.
Each accepted literal here, written or random, must give Postgres's own interval.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.session import with_display_settings
from sync_engine.pg.types import INTERVAL
from sync_engine.shapes.where import WhereError, parse_where
from sync_engine.shapes.where.text import text_output

COLUMNS = {"iv": ColumnInfo("iv", 1, 0, "interval", None, "b", -1, 0, False, None, False, None)}

#: Read otherwise by the engine before: must now be refused or equal to Postgres's value.
MISREAD = ["1 1:00", "-1 1:00:00.5", "10 -1:00", "1.5 us", "-1.5 us", "1.0000005 sec",
           "1.0000005 years ago", "-1 mon 0.1 years 2 weeks", "1.0000005 millennium",
           "1 s 1.0000005 century", "0.5 minute -1.5 us", "1.0000005 decade 12 s"]  # fmt: skip
UNITS = ["year", "years", "mon", "mons", "month", "day", "days", "hour", "hours", "min",
         "minute", "sec", "second", "seconds", "week", "decade", "century", "millennium",
         "ms", "millisecond", "us", "microsecond", "y", "d", "h", "m", "s", "hrs", "w"]  # fmt: skip


def _random_literals(n: int) -> list[str]:
    rng = random.Random(17)

    def number() -> str:
        return rng.choice(["", "-", "+"]) + rng.choice(
            ["0", "1", "7", "12", "24", "59", "60", "100", "86400", "2147483647", "2562047788"]
        )

    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 3)):
            c = rng.random()
            if c < 0.6:
                parts.append(f"{number()}{rng.choice([' ', ''])}{rng.choice(UNITS)}")
            elif c < 0.8:
                parts.append(f"{number()}.{rng.randint(0, 999999):06d} s"[: rng.randint(5, 14)])
            else:
                clock = f"{rng.randint(0, 200)}:{rng.randint(0, 59):02d}"
                parts.append(rng.choice(["", "-"]) + clock + rng.choice(["", ":07", ":07.25"]))
        text = " ".join(parts)
        if rng.random() < 0.1:
            text = "@ " + text
        if rng.random() < 0.1:
            text += " ago"
        if rng.random() < 0.1:
            text = text.upper()
        out.append(text)
    for _ in range(n // 4):
        fields = "".join(f"{rng.choice(['', '-'])}{rng.randint(0, 9999)}{u}" for u in "YMD"
                         if rng.random() < 0.5)  # fmt: skip
        clock = "".join(f"{rng.choice(['', '-'])}{rng.randint(0, 9999)}{u}" for u in "HMS"
                        if rng.random() < 0.5)  # fmt: skip
        out.append("P" + fields + ("T" + clock if clock else ""))
    return out


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(with_display_settings(db_url), autocommit=True) as c:
        yield c


def _postgres(conn: psycopg.Connection[Any], text: str) -> str | None:
    try:
        row = conn.execute("SELECT %s::interval::text", (text,)).fetchone()
    except psycopg.Error:
        return None  # Postgres refuses it: a snapshot fails with a 400, no live guess
    assert row is not None
    return str(row[0])


def test_interval_literals_are_postgres_values_or_refused(
    conn: psycopg.Connection[Any],
) -> None:
    out = text_output(INTERVAL)
    assert out is not None
    wrong, accepted = [], 0
    for text in MISREAD + _random_literals(600):
        literal = "'" + text.replace("'", "''") + "'"
        try:
            where = parse_where(f"iv = {literal}::interval", {}, COLUMNS)
        except WhereError:
            continue  # refused: no guess
        expected = _postgres(conn, text)
        if expected is None:
            continue
        accepted += 1
        # the engine's value, printed: the row holding Postgres's own text matches it
        if not where.matches({"iv": expected}):
            wrong.append((text, expected))
    assert not wrong, wrong[:10]
    assert accepted >= 300, accepted


def test_misread_literals_are_refused() -> None:
    for text in MISREAD:
        with pytest.raises(WhereError, match="interval literal"):
            parse_where(f"iv = '{text}'", {}, COLUMNS)
    parse_where("iv = '1 day 12:00' OR iv > '-1.5 seconds' OR iv < 'P1Y2M'", {}, COLUMNS)
