"""Clauses over the column types test_differential's table lacks, with `params`: the engine's
live verdict, Postgres's WHERE on the engine's SQL (what a snapshot runs) and Postgres's own
answer to the client's clause with the params bound (PREPARE / EXECUTE: Postgres infers each
`$n`'s type) must be the same rows.

The cases are what /work/where-fuzz/wide.py (bytea, name, "char", json/jsonb text, arrays of
every element type, a COLLATE "C" column, casts from text, params of every type) found:
- a `$n` the engine typed `"char"` was written `CAST('ab' AS char)` into the snapshot's SQL,
  which Postgres reads as character(1): `c1 IN ($1, $2)` with ' ' matched the rows whose
  "char" is empty in the snapshot (bpchar ignores trailing spaces), never live.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.support.databases import create_database, drop_database
from tests.sync_engine.shapes.where.columns import column_map

TABLE = (
    'CREATE TABLE d (id int PRIMARY KEY, c1 "char", nm name, by bytea, ca char(3)[],'
    " va varchar[], t text)"
)
ROWS = [
    (1, "a", "abc", "\\x61", "{a,ab}", "{x}", "a"),
    (2, "", "", "\\x", "{}", "{}", ""),
    (3, " ", "ab ", "\\x00", '{" "}', '{" "}', " "),
    (4, "Z", "straße", "\\xc3a9", "{abc}", "{ß}", "ab"),
    (5, None, None, None, None, None, None),
]

#: (clause, params): each found by the wide fuzz, or its neighbours.
CASES: list[tuple[str, dict[str, str]]] = [
    ("c1 IN ($1, $2)", {"1": "ab", "2": " "}),  # seed 50002: "char" written as char(1)
    ("c1 = $1", {"1": " "}),
    ("c1 <> $1", {"1": "ab"}),
    ("c1 IS DISTINCT FROM $1", {"1": ""}),
    ("nm = $1 OR by = $2", {"1": "ab ", "2": "\\x00"}),
    ("ca @> $1", {"1": "{ab}"}),
    ("va && $1", {"1": '{" ",x}'}),
]


Table = tuple[psycopg.Connection[Any], dict[str, ColumnInfo], dict[int, dict[str, Any]]]


#: A `$n` used more than once: Postgres types it from its first use, and reads the later
#: ones as values of that type (`i4 = $1 OR i8 = $1` is int4 = int4 OR int8 = int4).
TYPED_TABLE = (
    "CREATE TABLE p (id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, num numeric, f4 float4,"
    " f8 float8, t text, vc varchar, ch char(4), dt date, ts timestamp, tz timestamptz)"
)
TYPED_ROWS = (
    "INSERT INTO p VALUES (1, 1, 1, 1, 1, 1.5, 1.5, 'ab', 'ab', 'ab', '2024-01-01',"
    " '2024-01-01', '2024-01-01 00:00+00'), (2, 7, 5, 9, 0.1, 0.1, 0.1, 'x', 'abc', 'ab ',"
    " '2024-01-02', '2024-01-01 00:00', '2024-01-01 05:00+05'), (3, NULL, 70000, 5000000000,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
)
TYPED_CASES: list[tuple[str, str]] = [
    ("i4 = $1 OR i8 = $1", "1"),  # was a 400 "type conflict for $1"
    ("$1 BETWEEN i4 AND i8", "5"),  # ($1 >= i4 AND $1 <= i8: a copy of $1 each)
    ("$1 BETWEEN SYMMETRIC i8 AND i2", "7"),
    ("i4 < $1 AND $1 < i8", "5"),
    ("$1 = i4 OR $1 = num", "1"),
    ("i4 = $1 OR i2 = $1", "70000"),  # int4 first: 70000 is no error beside i2
    ("i8 = $1 OR i4 = $1", "5000000000"),
    ("f4 = $1 OR f8 = $1", "1.5"),
    ("f4 = $1 OR num = $1", "0.1"),  # float4 0.1 beside numeric: 0.100000001490116...
    ("num = $1 OR f4 = $1", "0.1"),
    ("t = $1 OR ch = $1", "ab"),
    ("ch = $1 OR t = $1", "ab "),  # char(4) first: the param is 'ab' beside text
    ("t = $1 OR vc = $1", "abc"),
    ("dt = $1 OR ts = $1", "2024-01-01"),
    ("tz = $1 OR ts = $1", "2024-01-01 00:00:00+05"),
    ("COALESCE(i2, $1) = i4 OR $1 = i8", "9"),  # (int2 from COALESCE)
]


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[Table]:
    """One database for the module's cases, which only read it."""
    dbname, db_url = create_database(pg_server_url)
    try:
        yield from _table(db_url)
    finally:
        drop_database(pg_server_url, dbname)


def _table(db_url: str) -> Iterator[Table]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLE)
        for r in ROWS:
            conn.execute('INSERT INTO d VALUES (%s, %s::"char", %s, %s, %s, %s, %s)', r)
        cols = ["id", "c1", "nm", "by", "ca", "va", "t"]
        select = ", ".join(
            f"CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}, '') END" for c in cols
        )
        rows = {
            int(r[0]): dict(zip(cols, r, strict=True))
            for r in conn.execute(f"SELECT {select} FROM d")
        }
        conn.execute(TYPED_TABLE)
        conn.execute(TYPED_ROWS)
        yield conn, column_map(url), rows


def _bound(conn: psycopg.Connection[Any], clause: str, params: dict[str, str]) -> set[int]:
    """Postgres's answer to the client's own clause, its params bound as unknown literals
    (types inferred by Postgres, as a snapshot of the clause would read them)."""
    conn.execute(f"PREPARE p AS SELECT id FROM d WHERE {clause}")
    try:
        values = [params[str(n)] for n in range(1, len(params) + 1)]
        args = pgsql.SQL(", ").join(pgsql.Literal(v) for v in values)
        return {r[0] for r in conn.execute(pgsql.SQL("EXECUTE p({})").format(args))}
    finally:
        conn.execute("DEALLOCATE p")


@pytest.mark.parametrize(("clause", "params"), CASES)
def test_params_of_every_type_agree_with_postgres(
    table: Table,
    clause: str,
    params: dict[str, str],
) -> None:
    conn, columns, rows = table
    where = parse_where(clause, params, columns)
    expected = _bound(conn, clause, params)
    got_sql = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
    got_live = {i for i, row in rows.items() if where.matches(row)}
    assert got_sql == expected, (clause, where.sql)
    assert got_live == expected, clause


_TYPED: dict[str, Any] = {}


def _typed_table(conn: psycopg.Connection[Any]) -> tuple[dict[str, ColumnInfo], dict[int, Any]]:
    """Table p's columns and rows as text, read once for the module's cases."""
    if conn.info.dsn not in _TYPED:
        cols = ["id", "i2", "i4", "i8", "num", "f4", "f8", "t", "vc", "ch", "dt", "ts", "tz"]
        select = ", ".join(
            f"CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}, '') END" for c in cols
        )
        rows = {
            int(r[0]): dict(zip(cols, r, strict=True))
            for r in conn.execute(f"SELECT {select} FROM p")
        }
        _TYPED[conn.info.dsn] = (column_map(conn.info.dsn, "p"), rows)
    return _TYPED[conn.info.dsn]


@pytest.mark.parametrize(("clause", "value"), TYPED_CASES)
def test_a_param_used_twice_is_typed_by_its_first_use_as_in_postgres(
    table: Table, clause: str, value: str
) -> None:
    conn, _, _ = table
    columns, rows = _typed_table(conn)
    where = parse_where(clause, {"1": value}, columns)
    conn.execute(f"PREPARE p AS SELECT id FROM p WHERE {clause}")
    try:
        expected = {
            r[0] for r in conn.execute(pgsql.SQL("EXECUTE p({})").format(pgsql.Literal(value)))
        }
    finally:
        conn.execute("DEALLOCATE p")
    assert {r[0] for r in conn.execute(f"SELECT id FROM p WHERE {where.sql}")} == expected
    assert {i for i, row in rows.items() if where.matches(row)} == expected


#: Operands Postgres converts implicitly (pg_cast castcontext 'i') where the engine had no
#: operator: "char" -> text, time -> interval. And varchar beside an untyped `$n`, which
#: Postgres types text (varchar has no operators of its own). All were 400s.
CAST_TABLE = (
    'CREATE TABLE q (id int PRIMARY KEY, c1 "char", t text, vc varchar(5), ch char(3),'
    " nm name, tm time, iv interval)"
)
CAST_ROWS = (
    "INSERT INTO q VALUES (1, 'a', 'a', 'a', 'a', 'a', '01:00', '1 hour'),"
    " (2, '', '', '', '', '', '00:00', '0'), (3, ' ', ' ', ' ', ' ', ' ', '24:00', '24 hours'),"
    " (4, 'Z', 'z', 'ab ', 'ab', 'ab ', '23:59:59.999999', '1 day'),"
    " (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL),"
    " (6, 'é', '\\303', 'é', 'é', 'é', '12:00', '-1 hour'),"
    " (7, '\\', '\\', '\\', '\\', '\\', '00:00:01', '1 mon'),"
    " (8, NULL, repeat('x', 70), 'abc', NULL, NULL, NULL, NULL)"
)
#: (clause, params): Postgres's rows, or its error, which the engine must give too.
CAST_CASES: list[tuple[str, dict[str, str]]] = [
    ("c1 = t", {}),  # text = text; 'é' is the byte \303, whose text is '\303' (row 6)
    ("c1 < t", {}),
    ("t >= c1", {}),
    ("c1 = vc", {}),
    ("c1 = ch", {}),  # ch's padding dropped (text): ' ' = '   ' is false
    ("c1 < nm", {}),  # texteqname & co., nm's collation "C"
    ("c1 IS DISTINCT FROM t", {}),
    ("NULLIF(c1, t) IS NULL", {}),
    ("c1 IN (t, 'a')", {}),
    ("c1 IN ('a'::text, 'b')", {}),  # no common type: each its own `=`
    ("c1 = ANY(ARRAY[t, vc])", {}),
    ("c1 BETWEEN t AND 'z'", {}),  # the second part "char" <= "char"
    ("c1 < 'b'", {}),  # "char" ordered by its byte, unsigned: \303 is after 'b'
    ("GREATEST(c1, 'b') = 'b'", {}),
    ("c1 LIKE 'a%' OR c1 ILIKE 'z'", {}),
    ("lower(c1) = 'z' OR length(c1) = 4", {}),
    ("concat(c1, 'x') = 'ax'", {}),
    ("c1 || 1 = 'a1'", {}),  # textanycat
    ("c1 = $1 OR t = $1", {"1": "a"}),
    ("c1 || 'x' = 'ax'", {}),  # not unique
    ("COALESCE(c1, t) = 'a'", {}),  # cannot be matched
    ("tm < iv", {}),  # interval < interval: 24:00 is '1 day'
    ("iv = tm", {}),
    ("tm = interval '1 hour'", {}),
    ("tm IN (iv, interval '1 hour', interval '2 hours')", {}),
    ("tm = ANY(ARRAY[iv])", {}),
    ("tm BETWEEN iv AND '1 day'::interval", {}),
    ("tm * 2 < iv OR tm / 2 > iv", {}),
    ("- tm < iv", {}),
    ("iv - tm < '0'::interval", {}),
    ("tm * '2' > iv", {}),
    ("tm + tm > tm", {}),  # not unique
    ("COALESCE(tm, iv) IS NULL", {}),  # cannot be matched
    ("iv = $1 OR tm = $1", {"1": "01:00"}),
    # A list led by name is name (select_common_type): t's 70 letters cut to 63 bytes; the
    # engine made it text, live only (its SQL is Postgres's): row 8 matched live
    ("COALESCE(nm, t) = t OR length(COALESCE(nm, t)) = 70", {}),
    ("(ARRAY[nm, t])[2] LIKE '%x' AND length((ARRAY[nm, t])[2]) < 70", {}),
    ("COALESCE(vc, nm) < 'B' OR COALESCE(ch, nm) = 'ab'", {}),  # (were 400s)
    ("$1 IN (t, vc)", {"1": "a"}),
    ("$1 IN (vc, t)", {"1": "ab "}),
    ("$1 NOT IN (t, vc, NULL)", {"1": "a"}),
    ("$1 IN (vc, ch)", {"1": "a"}),  # inconsistent types deduced for parameter $1
    # ... but with two constants their `= ANY` types $1 first (in place), and the other
    # items compare with it typed: text = char(n), interval = time (corner fuzz 81095)
    ("$1 IN (vc, 'a', 'b', ch)", {"1": "ab"}),
    ("$1 IN (tm, '1 hour'::interval, '2 hours'::interval)", {"1": "01:00"}),
]


@pytest.fixture(scope="module")
def cast_table(table: Table) -> tuple[psycopg.Connection[Any], dict[str, ColumnInfo], Any]:
    conn = table[0]
    conn.execute(CAST_TABLE)
    conn.execute(CAST_ROWS)
    cols = ["id", "c1", "t", "vc", "ch", "nm", "tm", "iv"]
    select = ", ".join(f"CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}, '') END" for c in cols)
    rows = {
        int(r[0]): dict(zip(cols, r, strict=True)) for r in conn.execute(f"SELECT {select} FROM q")
    }
    return conn, column_map(conn.info.dsn, "q"), rows


@pytest.mark.parametrize(("clause", "params"), CAST_CASES)
def test_implicit_casts_answer_as_postgres(
    cast_table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo], Any],
    clause: str,
    params: dict[str, str],
) -> None:
    conn, columns, rows = cast_table
    try:
        conn.execute(f"PREPARE p AS SELECT id FROM q WHERE {clause}")
        try:
            values = pgsql.SQL(", ").join(pgsql.Literal(params[k]) for k in sorted(params))
            run = pgsql.SQL("EXECUTE p({})").format(values) if params else pgsql.SQL("EXECUTE p")
            expected: set[int] | str = {r[0] for r in conn.execute(run)}
        finally:
            conn.execute("DEALLOCATE p")
    except psycopg.Error as e:
        expected = (e.diag.message_primary or "").replace('"char"', "char")
    try:
        where = parse_where(clause, params, columns)
    except WhereError as e:
        assert isinstance(expected, str), (clause, str(e))
        assert expected in str(e), (clause, str(e))
        return
    assert isinstance(expected, set), (clause, expected)
    assert {r[0] for r in conn.execute(f"SELECT id FROM q WHERE {where.sql}")} == expected
    assert {i for i, row in rows.items() if where.matches(row)} == expected, clause
