"""Where clauses against a real Postgres: `Where.matches` must agree with `Where.sql`.

A table with many column types gets ~300 varied rows (NULLs, NaN, infinities, odd text);
each row is fetched as Postgres text output under the engine's display settings, and for
every clause the ids Postgres returns for `WHERE <where.sql>` must equal the ids for which
`matches` is true. The output parsers are checked against what psycopg decodes from the same values
(input parsing against Postgres: tests/sync_engine/pg/test_values.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo, load_table
from sync_engine.shapes.where import index_key, parse_where
from tests.support.databases import create_database, drop_database

SETTINGS = (
    "SET DateStyle='ISO, DMY'; SET TimeZone='UTC'; SET IntervalStyle='iso_8601';"
    " SET bytea_output='hex'; SET extra_float_digits=1"
)

COLUMNS: list[tuple[str, str]] = [
    ("id", "int4 PRIMARY KEY"),
    ("s2", "int2"),
    ("i4", "int4"),
    ("i8", "int8"),
    ("num", "numeric"),
    ("f8", "float8"),
    ("f4", "float4"),
    ("txt", "text"),
    ("vc", "varchar(20)"),
    ("ch", "char(5)"),
    ("b", "bool"),
    ("u", "uuid"),
    ("d", "date"),
    ("ts", "timestamp"),
    ("tstz", "timestamptz"),
    ("iv", "interval"),
    ("tm", "time"),
    ("ia", "int4[]"),
    ("ta", "text[]"),
    ("m", "mood"),
    ("j", "jsonb"),
    ("by", "bytea"),
]

WORDS = ["apple", "Apple", "banana", "a%b", "a_b", "", "Zoë", "x y", "it's", "back\\slash",
         "cherry pie", "APPLE", "date", "élan", "123"]  # fmt: skip
UUIDS = [
    "00000000-0000-0000-0000-000000000000",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "123e4567-e89b-12d3-a456-426614174000",
]
INTERVALS = ["1 day", "30 days", "1 mon", "-2 hours", "1 day 02:00:00", "00:00:00.5",
             "1 year 2 mons", "0", "-1 day +02:00", "36 hours", "P1DT12H"]  # fmt: skip


def _maybe(rng: random.Random, value: str) -> str | None:
    return None if rng.random() < 0.1 else value


def _tstz(rng: random.Random, base: datetime) -> str:
    moment = base + timedelta(seconds=rng.randint(0, 3600), microseconds=500)
    return moment.isoformat(sep=" ") + rng.choice(["+00", "+02", "-05:30"])


def _row(rng: random.Random, i: int) -> list[str | None]:
    """One row of text literals (None = NULL), varied enough to hit edge cases."""
    base = datetime(2024, 1, 1) + timedelta(minutes=rng.randint(-500_000, 500_000))
    num = rng.choice([str(Decimal(rng.randint(-10_000, 10_000)) / 100), "NaN", "0", "1.50"])
    f8 = rng.choice([repr(rng.uniform(-100, 100)), "NaN", "Infinity", "-Infinity", "0.1", "1",
                     "1e+20", "2.5"])  # fmt: skip
    ia = "{" + ",".join(rng.choice(["1", "2", "3", "NULL", "-7", "42"])
                        for _ in range(rng.randint(0, 4))) + "}"  # fmt: skip
    ta_items = ['"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'
                for w in rng.sample(WORDS, rng.randint(0, 3))]  # fmt: skip
    d = rng.choice([(date(2024, 1, 1) + timedelta(days=rng.randint(-400, 400))).isoformat(),
                    "infinity", "-infinity"]) if rng.random() > 0.05 else "infinity"  # fmt: skip
    return [
        str(i),
        _maybe(rng, str(rng.randint(-5, 5))),
        _maybe(rng, str(rng.randint(-100, 100))),
        _maybe(rng, str(rng.choice([rng.randint(-(2**40), 2**40), 5, 0, 2**62]))),
        _maybe(rng, num),
        _maybe(rng, f8),
        _maybe(rng, rng.choice(["0.1", "1.5", "-3.25", "100", "NaN"])),
        _maybe(rng, rng.choice(WORDS)),
        _maybe(rng, rng.choice(WORDS)),
        _maybe(rng, rng.choice(["ab", "abc  ", "xyz", "", "a"])),
        _maybe(rng, rng.choice(["t", "f"])),
        _maybe(rng, rng.choice(UUIDS)),
        _maybe(rng, d),
        _maybe(rng, base.isoformat(sep=" ")),
        _maybe(rng, _tstz(rng, base)),
        _maybe(rng, rng.choice(INTERVALS)),
        _maybe(rng, time(rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)).isoformat()),
        _maybe(rng, ia),
        _maybe(rng, "{" + ",".join(ta_items) + "}"),
        _maybe(rng, rng.choice(["sad", "ok", "happy"])),
        _maybe(rng, rng.choice(['{"a": 1}', "[1, 2]", '"s"', "null"])),
        _maybe(rng, "\\x" + bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 3))).hex()),
    ]


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], dict[str, ColumnInfo],
                                              dict[int, dict[str, str | None]]]]:  # fmt: skip
    """The populated table, its ColumnInfo map (from pg_catalog) and every row as text: one
    for the module's 120 cases, which only read it (a database and 300 rows each cost
    about a minute of a loaded CI)."""
    dbname, db_url = create_database(pg_server_url)
    try:
        yield from _table(db_url)
    finally:
        drop_database(pg_server_url, dbname)


def _table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], dict[str, ColumnInfo],
                                          dict[int, dict[str, str | None]]]]:  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SETTINGS)
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        conn.execute("CREATE TABLE t (" + ", ".join(f"{n} {t}" for n, t in COLUMNS) + ")")
        rng = random.Random(20240601)
        casts = ", ".join(f"%s::{t.split()[0]}" for _n, t in COLUMNS)
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO t VALUES ({casts})", [_row(rng, i) for i in range(300)])
        columns = _catalog(conn)
        select = ", ".join(
            f"CASE WHEN {n} IS NULL THEN NULL ELSE concat({n}, '') END" for n, _t in COLUMNS
        )
        rows = {}
        for rec in conn.execute(f"SELECT {select} FROM t"):
            rows[int(rec[0])] = dict(zip((n for n, _t in COLUMNS), rec, strict=True))
        yield conn, columns, rows


def _catalog(conn: psycopg.Connection[Any]) -> dict[str, ColumnInfo]:
    """The engine's own description of table `t` (collations included)."""

    async def load() -> dict[str, ColumnInfo]:
        async with await psycopg.AsyncConnection.connect(conn.info.dsn) as aconn:
            info = await load_table(aconn, "public", "t")
        assert info is not None
        return info.column_map

    return asyncio.run(load())


CLAUSES: list[tuple[str, dict[str, str]]] = [
    ("id = 5", {}),
    ("5 = id", {}),
    ("id <> 5 AND id < 20", {}),
    ("s2 = 3", {}),
    ("s2 > i4", {}),
    ("i4 BETWEEN -10 AND 10", {}),
    ("i4 NOT BETWEEN 10 AND -10", {}),
    ("i4 BETWEEN SYMMETRIC 10 AND -10", {}),
    ("i4 IN (1, 2, 3, -5, 50)", {}),
    ("i4 NOT IN (1, 2, NULL)", {}),
    ("i4 NOT IN (1, 2, 3)", {}),
    ("i8 > 1000000000 OR i8 = 5", {}),
    ("i8 = 4611686018427387904", {}),
    ("i4 + s2 * 2 > 10", {}),
    ("i4 / 3 = 2 OR i4 % 7 = -1", {}),
    ("-i4 > 50", {}),
    ("@ i4 < 5", {}),
    ("(i4 & 3) = 1 OR (i4 | 8) = 9 OR (i4 # 5) = 0", {}),
    ("num > 10", {}),
    ("num = 1.5", {}),
    ("num < 0 OR num IS NULL", {}),
    ("num = 'NaN'", {}),
    ("num > 50.25", {}),
    ("f8 > 0.5", {}),
    ("f8 = 0.1", {}),
    ("f8 = 'NaN' OR f8 = 'Infinity'", {}),
    ("f8 < -1e10", {}),
    ("f8 > num", {}),
    ("f4 = 0.1", {}),
    ("f4 = 1.5", {}),
    ("f4 > 1", {}),
    ("txt = 'apple'", {}),
    ("txt > 'b'", {}),
    ("txt LIKE 'a%'", {}),
    ("txt ILIKE 'a%'", {}),
    ("txt NOT LIKE '%e%'", {}),
    ("txt LIKE 'a\\%b'", {}),
    ("txt LIKE 'a_b'", {}),
    ("lower(txt) = 'apple'", {}),
    ("upper(vc) = 'APPLE' OR vc = ''", {}),
    ("txt || '!' = 'apple!'", {}),
    ("concat(txt, i4, b) LIKE 'a%1%'", {}),
    ("coalesce(txt, vc, 'none') = 'none'", {}),
    ("txt = vc", {}),
    ("ch = 'abc'", {}),
    ("ch = 'abc  '", {}),
    ("ch::text = 'ab'", {}),
    ("b", {}),
    ("NOT b", {}),
    ("b IS NOT TRUE", {}),
    ("b IS UNKNOWN", {}),
    ("b = 'yes'", {}),
    ("b IS DISTINCT FROM true", {}),
    ("i4 IS NOT DISTINCT FROM s2", {}),
    ("u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", {}),
    ("u = '{A0EEBC999C0B4EF8BB6D6BB9BD380A11}'", {}),
    ("u > '5fffffff-ffff-ffff-ffff-ffffffffffff'", {}),
    ("d > '2024-03-01'", {}),
    ("d = 'infinity'", {}),
    ("d < '01/02/2024'", {}),
    ("d + 7 > '2024-06-01'", {}),
    ("d - 1 = '2023-12-31'", {}),
    ("ts::date - '2024-01-01'::date > 100", {}),
    ("ts > '2024-02-01 12:00'", {}),
    ("ts >= d", {}),
    ("ts + interval '1 day' > '2024-05-01'", {}),
    ("ts - '2024-01-01 00:00:00'::timestamp > interval '30 days'", {}),
    ("tstz > '2024-01-01 10:00:00+02'", {}),
    ("tstz < ts", {}),
    ("tstz - interval '1 mon' < '2023-12-15'", {}),
    ("tstz::date = '2024-01-05'", {}),
    ("iv = '1 day'", {}),
    ("iv = '24 hours'", {}),
    ("iv = interval '30 days'", {}),
    ("iv > '1 day'", {}),
    ("iv + iv = '2 days'", {}),
    ("iv * 2 > '3 days'", {}),
    ("tm > '12:00'", {}),
    ("tm + interval '2 hours' < '03:00'", {}),
    ("ia @> '{1}'", {}),
    ("ia @> ARRAY[1, 2]", {}),
    ("ia <@ '{1,2,3}'", {}),
    ("ia && ARRAY[42, -7]", {}),
    ("ia = '{}'", {}),
    ("ia = '{1,NULL}'", {}),
    ("3 = ANY(ia)", {}),
    ("1 <> ALL(ia)", {}),
    ("i4 = ANY('{1,2,3,4,5}')", {}),
    ("ia[1] = 1", {}),
    ("ia[2:3] = '{2,3}'", {}),
    ("array_ndims(ia) = 1", {}),
    ("ia || 5 @> '{5,1}'", {}),
    ("ta @> '{apple}'", {}),
    ("'Zoë' = ANY(ta)", {}),
    ("ta && ARRAY['', 'x y']", {}),
    ("m::text = 'happy'", {}),
    ("m::text IN ('sad', 'ok')", {}),
    ("j IS NULL", {}),
    ("j::text = '{\"a\": 1}'", {}),
    ("by = '\\x'", {}),
    ("by > '\\x80'", {}),
    ("greatest(i4, s2, 0) > 50", {}),
    ("least(i4, s2) < -3", {}),
    ("i4::text LIKE '1%'", {}),
    ("nullif(num, 'NaN')::int4 = 2", {}),
    ("(i4::numeric / 4)::int4 = 3", {}),
    ("txt::varchar = 'apple'", {}),
    ("(i4::float8 / 4)::int8 = 2", {}),
    ("nullif(i4, 0) IS NULL", {}),
    ("(i4 > 0) = (s2 > 0)", {}),
    ("i4 > 0 AND (txt IS NULL OR b)", {}),
    ("NOT (i4 > 0 OR s2 > 0)", {}),
    ("i4 = $1 OR txt = $2", {"1": "7", "2": "apple"}),
    ("ts > $1 AND d < $2", {"1": "2024-01-15 00:00", "2": "2024-06-01"}),
    ("ia @> $1", {"1": "{1,2}"}),
    ("txt = $1", {"1": "'); DROP TABLE t; --"}),
    ("i4 BETWEEN $1 AND $2", {"1": " -5 ", "2": "5"}),
    ("b = $1", {"1": "off"}),
]


@pytest.mark.parametrize(("clause", "params"), CLAUSES, ids=[c for c, _ in CLAUSES])
def test_matches_agrees_with_postgres(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo], dict[int, dict[str, str | None]]],
    clause: str,
    params: dict[str, str],
) -> None:
    conn, columns, rows = table
    where = parse_where(clause, params, columns)
    expected = {r[0] for r in conn.execute(f"SELECT id FROM t WHERE {where.sql}")}
    got = {i for i, row in rows.items() if where.matches(row)}
    assert got == expected, (where.sql, sorted(got ^ expected)[:5],
                             [rows[i] for i in sorted(got ^ expected)[:2]])  # fmt: skip
    if where.index is not None:
        col, keys = where.index
        for i in got:
            assert index_key(columns[col], rows[i][col]) in keys
    assert len(rows) == 300


def test_table_survives_injection_attempt(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo], dict[int, dict[str, str | None]]],
) -> None:
    conn, columns, _rows = table
    where = parse_where("txt = $1", {"1": "x'); DROP TABLE t; --"}, columns)
    conn.execute(f"SELECT id FROM t WHERE {where.sql}").fetchall()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (300,)


def test_output_parsers_agree_with_psycopg(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo], dict[int, dict[str, str | None]]],
) -> None:
    """Parsed text output equals what psycopg decodes from the same values."""
    conn, columns, rows = table
    names = ["id", "s2", "i4", "i8", "num", "f8", "txt", "vc", "b", "u", "ts", "tstz", "tm",
             "ia", "ta", "by", "m"]  # fmt: skip
    for rec in conn.execute(f"SELECT {', '.join(names)} FROM t"):
        row = rows[rec[0]]
        for name, value in zip(names, rec, strict=True):
            col = columns[name]
            text = row[name]
            parsed = pgv.parse_output(col.pg_type, text)
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(value, float) and value != value:
                assert parsed != parsed
            elif isinstance(value, Decimal) and value.is_nan():
                assert isinstance(parsed, Decimal) and parsed.is_nan()
            else:
                assert parsed == value, (name, row[name], value)
