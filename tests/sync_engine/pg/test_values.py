"""Value parsers (`sync_engine.pg.values`) against a real Postgres.

Literals the where compiler parses with Postgres's input rules must give the value Postgres
gives (read back through its own text output under the engine's display settings), and
input Postgres refuses must be refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest

from sync_engine.pg import values as pgv
from sync_engine.pg.types import TIMESTAMPTZ, PgType

SETTINGS = (
    "SET DateStyle='ISO, DMY'; SET TimeZone='UTC'; SET IntervalStyle='iso_8601';"
    " SET bytea_output='hex'; SET extra_float_digits=1"
)

INPUTS: list[tuple[str, str]] = [
    ("int4", " 42 "),
    ("int4", "-7"),
    ("int8", "9223372036854775807"),
    ("int2", "+12"),
    ("numeric", " 1.500 "),
    ("numeric", "1e3"),
    ("numeric", ".5"),
    ("numeric", "NaN"),
    ("float8", "1.5e-7"),
    ("float8", "-Infinity"),
    ("float8", "inf"),
    ("float4", "0.1"),
    ("bool", "yes"),
    ("bool", "OFF"),
    ("bool", "1"),
    ("bool", " t "),
    ("bool", "tr"),
    ("uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
    ("uuid", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}"),
    ("uuid", "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11"),
    ("date", "2024-02-29"),
    ("date", "31/01/2024"),
    ("date", "20240131"),
    ("date", "infinity"),
    ("timestamp", "2024-01-01 10:00:00+02"),
    ("timestamp", "2024-01-01T10:00:00.123456"),
    ("timestamp", "2024-01-01"),
    ("timestamptz", "2024-01-01 10:00:00+02"),
    ("timestamptz", "2024-01-01 10:00:00-05:30"),
    ("timestamptz", "2024-01-01T10:00:00Z"),
    ("timestamptz", "2024-01-01 10:00"),
    ("timestamptz", "-infinity"),
    ("time", "10:30"),
    ("time", "23:59:59.999"),
    ("interval", "1 day"),
    ("interval", "2 hours 30 minutes"),
    ("interval", "1 year 2 mons 3 days 04:05:06.5"),
    ("interval", "-1 day +02:00"),
    ("interval", "P1Y2M3DT4H5M6S"),
    ("interval", "PT-1.5S"),
    ("interval", "3 days ago"),
    ("interval", "1.5 days"),
    ("interval", "@ 1 week"),
    ("bytea", "\\x00ff10"),
    ("bytea", "ab\\000c\\\\"),
    ("int4[]", "{1,2,NULL}"),
    ("int4[]", "{{1,2},{3,4}}"),
    ("text[]", '{"a b","c\\"d",NULL,"NULL",e}'),
    ("text[]", "{}"),
    # Postgres trims only ASCII whitespace around an unquoted element (and prints one
    # holding an NBSP or em space unquoted): they are part of the element
    ("text[]", "{\u00a0a, b\u2003 ,\tc\n}"),
]

BAD_INPUTS: list[tuple[str, str]] = [
    ("int4", "abc"),
    ("int4", "1.5"),
    ("int4", "99999999999"),
    ("int2", "40000"),
    ("numeric", "1..2"),
    ("float8", "x1"),
    ("bool", "maybe"),
    ("uuid", "a0eebc99"),
    ("date", "2024-02-30"),
    ("date", "yesterday-ish"),
    ("timestamp", "2024-13-01"),
    ("time", "25:00"),
    ("interval", "1 fortnight"),
    ("int4[]", "{1,a}"),
    ("int4[]", "1,2"),
    ("int4[]", "{1,2,}"),  # a comma before the end
    ("int4[]", "{{1},}"),
    ("int4[]", "\u00a0{1}"),  # only ASCII whitespace is skipped
]


def pg_type(sql_name: str) -> PgType:
    """`int4` or `int4[]` as a PgType."""
    return PgType(sql_name.removesuffix("[]"), array=sql_name.endswith("[]"))


@pytest.mark.parametrize(("type_name", "literal"), INPUTS)
def test_input_parsing_matches_postgres(db_url: str, type_name: str, literal: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SETTINGS)
        rec = conn.execute(f"SELECT concat(%s::{type_name}, '')", (literal,)).fetchone()
    assert rec is not None
    typ = pg_type(type_name)
    parsed, expected = pgv.parse_input(typ, literal), pgv.parse_output(typ, rec[0])
    if isinstance(expected, Decimal) and expected.is_nan():
        assert isinstance(parsed, Decimal) and parsed.is_nan()
    else:
        assert parsed == expected


@pytest.mark.parametrize(("type_name", "literal"), BAD_INPUTS)
def test_bad_input_rejected_like_postgres(db_url: str, type_name: str, literal: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn, pytest.raises(psycopg.DataError):
        conn.execute(f"SELECT %s::{type_name}", (literal,))
    with pytest.raises(ValueError):
        pgv.parse_input(pg_type(type_name), literal)


def test_timestamptz_output_is_aware_utc() -> None:
    value = pgv.parse_output(TIMESTAMPTZ, "2024-01-01 12:00:00.5+00")
    assert value == datetime(2024, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize(
    "value", [["\u00a0a", "b\u2003", "\u3000"], ["a b", " c", "\u0085d\u00a0"], []]
)
def test_array_elements_read_as_postgres_has_them(db_url: str, value: list[str]) -> None:
    """A text[] as Postgres prints it reads back element for element: whitespace other
    than ASCII is part of an element (the engine trimmed it, so a row's `{<NBSP>a}` read
    as `a`: where `ta @> '{a}'` matched a row Postgres does not return)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rec = conn.execute("SELECT %s::text[]::text", (value,)).fetchone()
    assert rec is not None
    assert pgv.parse_output(pg_type("text[]"), rec[0]) == tuple(value), rec[0]
