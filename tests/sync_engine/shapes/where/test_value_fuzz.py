"""Seeded random values (not pools of edge values) against Postgres: input functions on a
row's text and computed values' text, the live evaluator's answer vs Postgres's.

test_differential.py draws rows from pools of chosen edge values; this draws them at random
(full-range integers, random float bit patterns, numerics of up to 45 digits, dates over
years 1-9999, intervals with mixed months, days and microseconds) and random text for the
input functions (valid spellings with a character inserted, deleted or replaced, spaces of
every kind around them). Each check is `Where.matches` on the row as Postgres prints it
(what the replicator calls) against Postgres's own evaluation:
- input: `t::T = '<Postgres's s::T>'::T` true, or ClauseFails where `s::T` fails (the
  replicator then asks Postgres: UnrepresentableValue is skipped);
- values: `(<expr>)::text = '<Postgres's (expr)::text>'` true, or ClauseFails where
  Postgres fails.
What wherefuzz's out-of-tree runs of this found (/work/wherefuzz/inp.py, vfz.py): numeric
'1e 5' (test_numeric_exponent_space.py), halfway float text (test_float_text_halfway.py).
`WHERE_VALUE_SEED` explores other seeds.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any

import psycopg
import pytest

from sync_engine.pg.catalog import ColumnInfo, load_table
from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import WhereError, parse_where
from sync_engine.shapes.where.clause import ClauseFails

SEED = int(os.environ.get("WHERE_VALUE_SEED", 20261206))

_SPACES = [" ", "\t", "\n", "\u00a0", "\v", ""]
INPUTS: dict[str, list[str]] = {
    "int2": ["0", "-32768", "32767", "32768", "+5", "00012", "-0", "1_000", "1e3"],
    "int4": ["2147483647", "-2147483648", "2147483648", "+0", "1 2", "0x1F", "--1"],
    "int8": ["9223372036854775807", "-9223372036854775808", "9223372036854775808"],
    "numeric": ["1.5", ".5", "5.", "1e5", "1e 5", "1e+ 5", "NaN", "-Infinity", "inf", "1e"],
    "float4": ["-0", "3.5e38", "1e-46", "1e-45", "nan", "-Infinity", "0x1p3", "16777217"],
    "float8": ["1e308", "1e309", "2.4e-324", "5e-324", "-NaN", "+inf", "1d", "1.5e+3"],
    "bool": ["t", "tr", "yes", "of", "off", "o", "1", "2", "TRUE", " on "],
    "uuid": [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
    ],
    "bytea": ["\\x", "\\xAbCd", "\\x0", "\\x 00", "a\\\\b", "\\001\\002", "\\08", "\\400"],
    "date": ["2024-01-01", "20240101", "1/2/2024", "Jan 2 2024", "2024-02-30", "0001-01-01",
             "1-01-01 BC", "epoch", "J2451187", "99-01-01", "1999.008", "2024-01-01 +05"],
    "time": ["24:00", "23:59:60", "23:59:59.9999995", "12:00 PM", "010203", "allballs"],
    "timestamp": ["2024-01-01 24:00", "2024-01-01 23:59:60", "2024-01-01 00:00:00.0000005",
                  "294277-01-01", "2024-01-01 00:00+05", "Jan 1 2024 1:00 PM"],
    "timestamptz": ["2024-01-01 00:00+00", "2024-03-10 02:30 America/New_York",
                    "2024-01-01 00:00 EST", "2024-01-01 00:00+05:30:15", "2024-01-01 00:00z",
                    "2024-01-01 00:00 UTC+3", "2024-01-01T00:00:00.999999999Z"],
    "interval": ["1 day", "P1Y2M3DT4H5M6.5S", "1-2 3 4:05:06", "1.5 months", "0.1 year",
                 "@ 1 day ago", "178956971 years", "2147483648 days", "1:2:3:4", "1e3 seconds"],
}  # fmt: skip
_NOISE = list("0123456789-+:.eE ,/TZabcdefxnNiIPDHMSYW")


def _input_text(rng: random.Random, pool: list[str]) -> str:
    text = rng.choice(pool)
    roll = rng.random()
    if roll < 0.35:
        return text
    if roll < 0.6:
        return rng.choice(_SPACES) + text + rng.choice(_SPACES)
    chars = list(text)
    at = rng.randint(0, len(chars))
    op = rng.random()
    if op < 0.4 and chars:
        del chars[min(at, len(chars) - 1)]
    elif op < 0.8:
        chars.insert(at, rng.choice(_NOISE))
    elif chars:
        chars[min(at, len(chars) - 1)] = rng.choice(_NOISE)
    return "".join(chars)


#: (column, type) of the value table; each draws its values from `_value`.
VALUE_COLUMNS = [
    ("i2", "int2"), ("i4", "int4"), ("j4", "int4"), ("i8", "int8"), ("n", "numeric"),
    ("n2", "numeric"), ("f4", "float4"), ("f8", "float8"), ("g8", "float8"), ("d", "date"),
    ("ts", "timestamp"), ("ts2", "timestamp"), ("tz", "timestamptz"), ("iv", "interval"),
    ("iv2", "interval"), ("tm", "time"),
]  # fmt: skip
EXPRESSIONS = [
    "i2 * i2", "i2 - i4", "i2 / i2", "i2 % i2", "- i2", "abs(i2)", "i2 << 3", "i2 # i4",
    "i4 + j4", "i4 * j4", "i4 / j4", "i4 % j4", "i4 >> 1", "~ i4", "i8 * i4", "i8 / -1",
    "i8 % i8", "abs(i8)", "i8 << 63", "n + n2", "n - n2", "n * n2", "n / n2", "n % n2",
    "abs(n)", "n::int2", "n::int4", "n::int8", "n::float4", "n::float8", "n * i4", "n / i2",
    "n + f8", "f8 + g8", "f8 * g8", "f8 / g8", "|/ f8", "f8 ^ g8", "f8::int4", "f8::int8",
    "f8::numeric", "f8::float4", "f4 * f4", "f4 / f4", "f4 - f8", "f4::numeric", "f4::int4",
    "f4 + n", "i8::float4", "i8::float8", "n::text::float8", "d + i4", "d - d", "d + iv",
    "d + tm", "d::timestamptz", "ts + iv", "ts - iv", "ts - ts2", "ts::date", "ts::time",
    "ts::timestamptz", "tz + iv", "tz - iv", "tz::date", "tz::timestamp",
    "tz AT TIME ZONE 'America/New_York'", "ts AT TIME ZONE 'Australia/Lord_Howe'",
    "iv + iv2", "iv - iv2", "iv * f8", "iv / f8", "iv * n", "justify_interval(iv)",
    "justify_days(iv)", "iv / 3", "iv * 0.1", "tm + iv", "tm - tm", "tm::interval",
    "n = f8", "n < f8", "i8 = f8", "f4 = f8", "f4 < n", "n = i8", "d < tz", "ts = tz",
    "iv < iv2", "iv = iv2", "f4 IN (f8, n)", "n IN (i4, f8)", "f8 = 0.1", "f4 = 0.1",
    "n::float4 = f4", "f8::float4 = f4", "(i8 / 7)::numeric = n", "(tz - iv) < ts",
    "greatest(i4, j4, i2)", "least(n, n2)", "greatest(f8, g8)", "coalesce(n, f8)",
    "greatest(ts, ts2)", "least(iv, iv2)", "concat(n, f8, d, iv, tz)",
]  # fmt: skip


def _value(rng: random.Random, typ: str) -> str:
    if typ in ("int2", "int4", "int8"):
        bits = {"int2": 16, "int4": 32, "int8": 64}[typ]
        lim = 2 ** (bits - 1)
        if rng.random() < 0.15:
            return str(rng.choice([lim - 1, -lim, 0, 1, -1]))
        return str(rng.randint(-100, 100) if rng.random() < 0.4 else rng.randint(-lim, lim - 1))
    if typ == "numeric":
        if rng.random() < 0.1:
            return rng.choice(["NaN", "Infinity", "-Infinity", "-0.0", "0.5", "2.5"])
        whole = str(rng.randint(0, 10 ** rng.randint(0, 25)))
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 20)))
        return ("-" if rng.random() < 0.4 else "") + whole + ("." + frac if frac else "")
    if typ in ("float4", "float8"):
        if rng.random() < 0.4:
            return repr(rng.uniform(-1e6, 1e6))
        if typ == "float4":
            return repr(struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0])
        if rng.random() < 0.5:
            return repr(float(rng.randint(10**15, 10**18)))
        return repr(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0])
    if typ == "date":
        return f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if typ in ("timestamp", "timestamptz"):
        frac = rng.choice(["", f".{rng.randint(0, 999999):06d}", ".5"])
        text = f"{_value(rng, 'date')} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00{frac}"
        return text + (rng.choice(["+00", "-05", "+05:30", "+14"]) if typ == "timestamptz" else "")
    if typ == "interval":
        return (
            f"{rng.randint(-500, 500)} mons {rng.randint(-500, 500)} days"
            f" {rng.uniform(-1e6, 1e6):.6f} seconds"
        )
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


def _columns(url: str, table: str) -> dict[str, ColumnInfo]:
    async def load() -> dict[str, ColumnInfo]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            info = await load_table(conn, "public", table)
        assert info is not None
        return info.column_map

    return asyncio.run(load())


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _engine_verdict(where: Any, row: dict[str, str | None]) -> str | None:
    try:
        return "true" if where.matches(row) else "false"
    except ClauseFails:
        return "error"
    except UnrepresentableValue:  # (the replicator asks Postgres)
        return None


def test_input_functions_on_random_text_as_postgres(db_url: str) -> None:
    url = with_display_settings(db_url)
    rng = random.Random(SEED)
    differ = []
    agreed = 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE vi (id int PRIMARY KEY, t text)")
        columns = _columns(url, "vi")
        for _ in range(1200):
            typ = rng.choice(list(INPUTS))
            text = _input_text(rng, INPUTS[typ])
            try:
                with conn.transaction():
                    pg = conn.execute(f"SELECT %s::text::{typ}::text", (text,)).fetchone()[0]  # type: ignore[index]
            except psycopg.Error:
                pg = None
            clause = f"t::{typ} = {_quote(pg)}::{typ}" if pg is not None else f"t::{typ} IS NULL"
            try:
                where = parse_where(clause, {}, columns)
            except WhereError:
                continue  # (refused: a 400)
            verdict = _engine_verdict(where, {"id": "1", "t": text})
            if verdict is None:
                continue
            if verdict != ("true" if pg is not None else "error") and verdict != "error":
                differ.append((typ, text, pg, verdict))  # ("error": Postgres is asked)
            agreed += 1
    assert not differ, differ[:10]
    assert agreed > 600, agreed


def test_random_values_through_expressions_as_postgres(db_url: str) -> None:
    url = with_display_settings(db_url)
    rng = random.Random(SEED)
    names = ["id"] + [c for c, _ in VALUE_COLUMNS]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE vv (id int PRIMARY KEY, "
            + ", ".join(f"{c} {t}" for c, t in VALUE_COLUMNS)
            + ")"
        )
        for key in range(14):
            values = [_value(rng, t) if rng.random() > 0.05 else None for _, t in VALUE_COLUMNS]
            if key % 3 == 0 and values[4] not in (None, "NaN", "Infinity", "-Infinity"):
                values[7] = values[6] = values[4]  # (f8, f4 beside an equal numeric)
            conn.execute(
                "INSERT INTO vv VALUES (%s, "
                + ", ".join(f"%s::text::{t}" for _, t in VALUE_COLUMNS)
                + ")",
                [key, *values],
            )
        select = ", ".join(
            f"CASE WHEN {n} IS NULL THEN NULL ELSE concat({n}, '') END" for n in names
        )
        rows = [dict(zip(names, r, strict=True)) for r in conn.execute(f"SELECT {select} FROM vv")]
        columns = _columns(url, "vv")
        differ = []
        checked = 0
        for expr in EXPRESSIONS:
            for row in rows:
                try:
                    with conn.transaction():
                        pg = conn.execute(
                            f"SELECT ({expr})::text FROM vv WHERE id = {int(row['id'] or 0)}"
                        ).fetchone()[0]  # type: ignore[index]
                    failed = False
                except psycopg.Error:
                    pg, failed = None, True
                clause = f"({expr})::text = {_quote(pg)}" if pg is not None else f"({expr}) IS NULL"
                where = parse_where(clause, {}, columns)  # (every expression is supported)
                verdict = _engine_verdict(where, row)
                if verdict is None:
                    continue
                checked += 1
                if verdict != ("error" if failed else "true"):
                    differ.append(
                        (expr, pg, verdict, {c: row[c] for c in where.referenced_columns})
                    )
    assert not differ, differ[:10]
    assert checked > 1200, checked


@pytest.mark.parametrize("expr", ["n::float8", "f4 + n", "coalesce(n, f8)"])
def test_expressions_found_by_the_value_fuzz(db_url: str, expr: str) -> None:
    """The halfway float text the value fuzz met first (seed 1, 66225080423973779)."""
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE vf (id int PRIMARY KEY, n numeric, f4 float4, f8 float8)")
        conn.execute("INSERT INTO vf VALUES (1, 66225080423973779, -3.2678254e-34, NULL)")
        pg = conn.execute(f"SELECT ({expr})::text FROM vf").fetchone()[0]  # type: ignore[index]
        row = {"id": "1", "n": "66225080423973779", "f4": "-3.2678254e-34", "f8": None}
        where = parse_where(f"({expr})::text = {_quote(pg)}", {}, _columns(url, "vf"))
        assert where.matches(row), (expr, pg)
