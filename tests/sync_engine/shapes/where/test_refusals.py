"""Clauses Postgres refuses when it plans the snapshot are refused by the engine up front.

A clause the engine accepted but Postgres cannot plan makes a shape whose snapshot fails
(a 400 only then, or a 500 where the engine's own check raised something other than a
WhereError). Found by compiling every operator, function and cast over every pair of the
differential table's columns and a set of literals, and asking Postgres to EXPLAIN each
clause the engine accepted: untyped literals on both sides of arithmetic, shift counts that
are not int4, unknown operands beside date/time types, `+ interval`, enum labels the engine
cannot check. Each case here: the engine refuses it, and Postgres does too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.support.databases import create_database, drop_database
from tests.sync_engine.shapes.where.columns import column_map

REFUSED = [
    ("(i4 << i8) IS NULL", "operator does not exist: integer << bigint"),
    ("(i8 >> 2147483648) IS NULL", "operator does not exist: bigint >> bigint"),
    ("('1' << i2) IS NULL", "operator is not unique: unknown << smallint"),
    ("('1' >> i8) IS NULL", "operator does not exist: unknown >> bigint"),
    ("('1' + '1') IS NULL", "operator is not unique: unknown \\+ unknown"),
    ("(NULL * NULL) IS NULL", "operator is not unique: unknown \\* unknown"),
    ("('6' % '4') = 2", "operator is not unique: unknown % unknown"),
    ("('1' & '1') = 1", "operator is not unique: unknown & unknown"),
    ("(- '1') IS NULL", "operator is not unique: - unknown"),
    ("(~ NULL) IS NULL", "operator is not unique: ~ unknown"),
    ("(+ iv) IS NULL", "operator does not exist: \\+ interval"),
    ("(d + '1') IS NULL", "operator is not unique: date \\+ unknown"),
    ("(NULL + d) IS NULL", "operator is not unique: unknown \\+ date"),
    # time + unknown is time + interval, time - unknown time - time (the engine had read
    # them as time + date and time - interval)
    ("(tm + '2024-01-01') IS NULL", "interval literal"),
    ("(tm - '1') IS NULL", "invalid input syntax for type time"),
    # Postgres checks an enum label against the enum's labels, which the engine knows
    ("COALESCE(e, 'x')::text = 'x'", 'invalid input value for enum mood: "x"'),
    ("NULLIF(e, 'glad') IS NULL", 'invalid input value for enum mood: "glad"'),
    ("e < 'glad'", 'invalid input value for enum mood: "glad"'),
    ("e = ANY('{sad,glad}')", 'invalid input value for enum mood: "glad"'),
    ("e = ANY('x')", 'malformed array literal: "x"'),  # raised ValueError (a 500) once
    # sub-arrays beside scalars: the engine read them and matched rows (family fuzz 90101)
    ("(ARRAY[i4])[d] IS NULL", "array subscript must have type integer"),  # ("cannot convert")
    ("i4 = ANY('{{1},2}')", "malformed array literal"),
    ("ARRAY[e::text] @> '{a,{b},c}'", "malformed array literal"),
    ("d = ANY('{NULL,{2024-01-01}}')", "malformed array literal"),
    ("e = e::text", "operator does not exist: mood = text"),
    ("concat() = ''", "function concat\\(\\) does not exist"),  # VARIADIC: one at least
]


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    yield from _table(db_url)


@pytest.fixture(scope="module")
def shared_table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, Any]]:
    """`table` once for the cases that only read it (a database each cost ~25 s of a
    loaded CI), with the JSON cases' table beside it."""
    dbname, db_url = create_database(pg_server_url)
    try:
        for conn, columns in _table(db_url):
            conn.execute("CREATE TABLE dj (id int PRIMARY KEY, j jsonb, js json)")
            conn.execute("""INSERT INTO dj VALUES (1, '{"a": 1}', '{"a": 1}')""")
            conn.execute(f"CREATE TABLE dl ({', '.join(f'{c} {t}' for c, t in LITERAL_TYPES)})")
            yield conn, columns, column_map(with_display_settings(db_url), "dj")
    finally:
        drop_database(pg_server_url, dbname)


def _table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        conn.execute(
            "CREATE TABLE d (id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, d date, tm time,"
            " iv interval, e mood)"
        )
        yield conn, column_map(url)


@pytest.mark.parametrize(("clause", "message"), REFUSED)
def test_refused_as_postgres_refuses(
    shared_table: tuple[psycopg.Connection[Any], Any, Any], clause: str, message: str
) -> None:
    conn, columns, _ = shared_table
    with pytest.raises(WhereError, match=message):
        parse_where(clause, {}, columns)
    with pytest.raises(psycopg.Error):
        conn.execute(f"EXPLAIN SELECT id FROM d WHERE {clause}")


#: json and jsonb have no `=` the engine reproduces (jsonb's is not its text's; json has
#: none): `=` was refused, but IN, NULLIF, IS DISTINCT FROM, ANY and the array operators
#: compared the values' text, so `j IN ('{"a":1}')` missed the row '{"a": 1}'.
JSON_REFUSED = [
    """j IN ('{"a":1}', 'null')""",
    """NULLIF(j, '{"a":1}') IS NULL""",
    """j IS DISTINCT FROM '{"a":1}'""",
    """j = ANY('{}')""",
    "ARRAY[j] @> ARRAY[j]",
    "js IN ('null', '1')",
]


@pytest.mark.parametrize("clause", JSON_REFUSED)
def test_json_equality_is_refused(
    shared_table: tuple[psycopg.Connection[Any], Any, Any], clause: str
) -> None:
    conn, _, columns = shared_table
    # (refused whatever the words: jsonb's = is valid in Postgres, json has none)
    with pytest.raises(WhereError, match=r"JSON operators are not supported|valid in Postgres"):
        parse_where(clause, {}, columns)
    # why: jsonb's `=` reads the values, not their text
    row = conn.execute("""SELECT j = '{"a":1}', j::text = '{"a":1}' FROM dj""").fetchone()
    assert row == (True, False)


def test_refusals_say_what_postgres_would(table: tuple[psycopg.Connection[Any], Any]) -> None:
    """`upper(1)` blamed the collation (Postgres: no such function); 'Jan 1 2024' was
    "invalid input syntax" (Postgres reads it; the engine reads ISO 8601 only)."""
    conn, columns = table
    with pytest.raises(WhereError, match="function upper\\(integer\\) does not exist"):
        parse_where("upper(i4) = '1'", {}, columns)
    with pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("SELECT 1 FROM d WHERE upper(i4) = '1'")
    for clause, kind in [("d = 'Jan 1 2024'", "date"), ("tm = '04:05 PM'", "time")]:
        with pytest.raises(WhereError, match=f"{kind}[a-z ]* literal .* is not supported"):
            parse_where(clause, {}, columns)
        conn.execute(f"SELECT 1 FROM d WHERE {clause}")  # (Postgres reads it)
    with pytest.raises(WhereError, match='invalid input syntax for type date: "abc"'):
        parse_where("d = 'abc'", {}, columns)  # (Postgres does not read this one either)
    # ordering an enum whose labels the engine does not know (a table recorded before it
    # recorded them): the refusal does not suggest e::text, whose order is the text's
    # (Postgres orders 'sad' < 'ok' < 'happy', as declared)
    unknown = dict(columns)  # (a plain mapping of the columns tells no labels)
    for clause in ["e < 'ok'", "e BETWEEN 'sad' AND 'ok'"]:
        with pytest.raises(WhereError, match=r"ordering enum values .* declared order"):
            parse_where(clause, {}, unknown)
        parse_where(clause, {}, columns)  # (knowing them, the engine orders as declared)
    with pytest.raises(WhereError, match=r"enum values can only be compared after a cast"):
        parse_where("e = 'sad'", {}, unknown)
    assert conn.execute("SELECT 'sad'::mood < 'ok', 'sad' < 'ok'::text").fetchone() == (
        True,
        False,
    )


def test_an_untyped_literal_beside_any_type_concatenates_as_text(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    """`i4 || ''` is anytextcat in Postgres (the value's text cast, then `||`): the engine
    had refused it as "operator does not exist: integer || unknown"."""
    conn, columns = table
    conn.execute("INSERT INTO d VALUES (1, 2, 5, 7, '2024-01-01', '12:00', '1 day', 'sad')")
    conn.execute("INSERT INTO d VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    row = {"id": "1", "i2": "2", "i4": "5", "i8": "7", "d": "2024-01-01", "tm": "12:00:00",
           "iv": "P1D", "e": "sad"}  # fmt: skip
    nulls = {k: None for k in row} | {"id": "2"}
    for clause in ["i4 || '' = '5'", "'x' || i8 = 'x7'", "d || 'x' = '2024-01-01x'",
                   "iv || '' = 'P1D'", "e || '' = 'sad'", "(NULL || i2) IS NULL",
                   "tm || '' = '12:00:00'", "(i2 || '') IS NULL"]:  # fmt: skip
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        got = {int(cast(str, r["id"])) for r in (row, nulls) if where.matches(r)}
        assert got == expected, clause


def test_a_zero_character_is_refused_in_postgres_words(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    """No Postgres text holds U+0000 (a parameter bound with one fails 'invalid byte
    sequence for encoding "UTF8": 0x00'). In a parameter it was a 400 blaming the clause
    ('this combination of operators cannot be written back as SQL unambiguously'):
    libpg_query read the substituted string up to it, so the SQL no longer parsed back."""
    _conn, columns = table
    message = re.escape('invalid byte sequence for encoding "UTF8": 0x00')
    for clause, params in [("e::text = $1", {"1": "a\x00b"}), ("i4::text = $1", {"1": "\x00"}),
                           ("e::text = 'a\x00'", {})]:  # fmt: skip
        with pytest.raises(WhereError, match=message):
            parse_where(clause, params, columns)


def test_an_operator_on_a_type_without_arithmetic_is_named(db_url: str) -> None:
    """`ip << '10.0.0.0/8'` (inet's "is contained by") was read as a shift of integers:
    'invalid input syntax for type integer: "10.0.0.0/8"', blaming a valid literal."""
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, ip inet, m money)")
        columns = column_map(url)
        for clause, message in [("ip << '10.0.0.0/8'", "operator << on inet is not supported"),
                                ("m + '1' > '0'", "operator \\+ on money is not supported")]:  # fmt: skip
            with pytest.raises(WhereError, match=message):
                parse_where(clause, {}, columns)
            conn.execute(f"SELECT 1 FROM d WHERE {clause}")  # (Postgres has them)


#: Column types whose literals the engine reads itself, and texts at the edge of what their
#: input functions take.
LITERAL_TYPES = [
    ("f4", "float4"), ("f8", "float8"), ("n", "numeric"), ("i4", "int4"), ("d", "date"),
    ("tm", "time"), ("ts", "timestamp"), ("tz", "timestamptz"), ("iv", "interval"),
    ("u", "uuid"), ("b", "bool"), ("ia", "int4[]"), ("fa", "float8[]"),
]  # fmt: skip
EDGE_LITERALS = [
    " 1 ", "1e400", "-1e400", "1e-400", "NaN", "-nan", "+NaN", "inf", "-Infinity", "", "0x1F",
    "1_000", "\uff11\uff12", "yes", "{1,2}", "{-nan}", "{1e400}", "2024-01-01 24:00", "24:00",
    "24:00:01", "12:00:60", "23:59:60", "23:59:60.5", "12:60", "2024-02-30", "10000-01-01",
    "2024-01-01 23:59:60", "1 day", "P1D", "1.5 days", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "A0EEBC999C0B4EF8", "2024-01-01 12:00:00+0530", "2024-01-01T12:00:00-0800",
    "2024-01-01 12:00:00.1234567", "2024-01-01T12:00:00.000000001Z", "2024-01-01 12:00:00 +05:30",
    "2024-01-01 12:00:00UTC", "2024-01-01 12:00:00z", "T12:00", "12:00:00+0530", "2024-13-01",
    "1", "12", "12:00 nonsense",
]  # fmt: skip
_INVALID = re.compile(r"invalid input|out of range|malformed|must be")


def test_a_literal_the_engine_calls_invalid_is_invalid_to_postgres(
    shared_table: tuple[psycopg.Connection[Any], Any, Any],
) -> None:
    """A `$1` (or literal) the engine refuses as invalid input, Postgres refuses too: '-nan'
    (strtod reads it), '2024-01-01 24:00' and '12:00:60' (Postgres carries them over),
    '2024-01-01 12:00:00+0530' and '2024-01-01 12:00:00UTC' (Postgres reads them) were
    "invalid input syntax" / "out of range", a 400 telling the client its value was wrong.
    What the engine does not read, it says it does not support."""
    conn, _, _ = shared_table
    columns = column_map(with_display_settings(conn.info.dsn), "dl")
    lying = []
    for column, typ in LITERAL_TYPES:
        for text in EDGE_LITERALS:
            try:
                parse_where(f"{column} = $1", {"1": text}, columns)
                continue
            except WhereError as e:
                if not _INVALID.search(str(e)):
                    continue
                message = str(e)
            try:
                conn.execute(f"SELECT %s::{typ}", (text,))
            except psycopg.Error:
                continue
            lying.append((typ, text, message))
    assert not lying, "\n".join(map(str, lying))
