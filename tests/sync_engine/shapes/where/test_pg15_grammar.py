"""Grammar only newer Postgres reads gets Postgres 15's answer, not the newer one.

pglast parses with Postgres 17's grammar. The engine's source is Postgres 15 (the test
clusters, dev-postgres), which refuses `id = 0x10`, `1_000` and `1_000.5` ("trailing junk
after numeric literal"), while the engine served them as 16, 1000 and 1000.5. Each clause
here runs through the engine and through the real Postgres 15 on a two-row table:
- Postgres refuses it: the engine refuses it too (a 400, never served);
- Postgres accepts it: the engine gives Postgres's rows, or refuses it without claiming
  Postgres would ("invalid input syntax", "syntax error", "trailing junk" are Postgres's
  words for what it refuses: `'0x10'::float8` is 16 to strtod, not invalid).
A type name before a `$n` (`int8 $1`, which libpg_query reads for pg_stat_statements' sake
and no Postgres does) is a syntax error, as in Postgres. Numeric literals are refused in
Postgres 15's own words, whatever path the clause takes
(a template of `i8 = 16` must not serve `i8 = 0x10`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import column_map

NEWER_NUMBERS = [
    "i8 = 0x10",
    "i8 = 0X10",
    "i8 = 0o17",
    "i8 = 0b101",
    "i8 = -0x10",
    "i8 = 0x1_0",
    "i8 = 0xFFFFFFFFFFFFFFFF",
    "i8 = 1_000",
    "n = 1_000.5",
    "n = 1.5e0_1",
    "n = .5_0",
    "i8 IN (1_0, 0x20)",
    "id = 1 OR i8 = 1_000",
    "t::varchar(0x10) = t",
    "(ARRAY[1, 2])[0x1] = 1",
]

#: Other syntax and functions of Postgres 16 and 17, and literals whose reading changed
#: (Postgres 16 reads '+infinity' as a date or timestamp, Postgres 15 refuses it).
OTHERS = [
    "js IS JSON",
    "t IS JSON OBJECT WITH UNIQUE KEYS",
    "JSON_OBJECT('a': 1) IS NOT NULL",
    "JSON_ARRAY(1, 2) IS NOT NULL",
    "JSON_VALUE(j, '$.a') = '1'",
    "JSON_EXISTS(j, '$.a')",
    "JSON('{}') IS NOT NULL",
    "JSON_SCALAR(1) IS NOT NULL",
    "SYSTEM_USER IS NULL",
    "ANY_VALUE(id) = 1",
    "ts AT LOCAL IS NOT NULL",
    "MERGE_ACTION() = 'x'",
    "random_normal() > 0",
    "to_bin(id) = '1'",
    "array_shuffle(ARRAY[1]) IS NOT NULL",
    "date_add(ts, '1 day') IS NOT NULL",
    "'infinity'::interval IS NOT NULL",
    "ts < '+infinity'",  # (Postgres 16 reads '+infinity' as infinity)
    "'{+infinity}'::date[] IS NOT NULL",
    "ts < 'infinity'",
    "'0x10'::int8 = i8",
    "'1_000'::numeric = i8",
    "'0x10'::float8 = 16",
    "'0x1p3'::real = 8",
    "t = U&'d\\0061t\\+000061'",
    "t = E'\\u0061'",
    "t = '0x10'",
    "i8 = 1000",
]

#: With `params[1]`: libpg_query (pglast's parser) also reads a `$n` after a type name, as
#: pg_stat_statements writes constants; Postgres reads only a string there.
WITH_PARAM = [
    ("i8 = int8 $1", "16"),
    ("ts < timestamptz $1", "2030-01-01"),
    ("t = 'x' OR i8 = pg_catalog.int8 $1", "16"),
    ("i8 = $1::int8", "16"),
    ("i8 = CAST($1 AS int8)", "16"),
    ("i8 = int8 '16' AND t = $1", "0x10"),
]

#: Postgres's words for a clause it refuses: the engine must not say them of one it reads.
POSTGRES_REFUSES = ("invalid input syntax", "syntax error", "trailing junk")


@pytest.fixture
def table(
    db_url: str,
) -> Iterator[tuple[psycopg.Connection[Any], Any, list[dict[str, str | None]]]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        yield _populate(conn, url)


def _populate(
    conn: psycopg.Connection[Any], url: str
) -> tuple[psycopg.Connection[Any], Any, list[dict[str, str | None]]]:
    conn.execute(
        "CREATE TABLE d (id int PRIMARY KEY, i8 int8, n numeric, t text, j jsonb, js json,"
        " ts timestamptz)"
    )
    conn.execute(
        "INSERT INTO d VALUES (1, 16, 1000.5, '0x10', '{\"a\":1}', '[1]', '2024-01-01'),"
        " (2, 1000, 5, 'data', '[1]', '{}', NULL)"
    )
    names = ["id", "i8", "n", "t", "j", "js", "ts"]
    select = ", ".join(f"{c}::text" for c in names)
    rows = [
        dict(zip(names, r, strict=True))
        for r in conn.execute(f"SELECT {select} FROM d ORDER BY id")
    ]
    return conn, column_map(url), rows


def _postgres(
    conn: psycopg.Connection[Any], clause: str, param: str | None = None
) -> list[str] | str:
    query = f"SELECT id FROM d WHERE {clause} ORDER BY id"
    try:
        if param is None:
            return [str(r[0]) for r in conn.execute(query)]
        conn.execute(f"PREPARE p AS {query}")  # (the clause's own `$1`, as Postgres reads it)
        try:
            execute = pgsql.SQL("EXECUTE p({})").format(pgsql.Literal(param))
            return [str(r[0]) for r in conn.execute(execute)]
        finally:
            conn.execute("DEALLOCATE p")
    except psycopg.Error as e:
        return str(e).splitlines()[0]


def _engine(
    clause: str, columns: Any, rows: list[dict[str, str | None]], param: str | None = None
) -> list[str] | str:
    try:
        where = parse_where(clause, {} if param is None else {"1": param}, columns)
    except WhereError as e:
        return str(e)
    return [str(r["id"]) for r in rows if where.matches(r)]


def test_postgres_15_answers(
    table: tuple[psycopg.Connection[Any], Any, list[dict[str, str | None]]],
) -> None:
    conn, columns, rows = table
    for clause in ("i8 = 16", "i8 = 17", "i8 = 18"):  # the form's template is made
        parse_where(clause, {}, columns)
    wrong = []
    cases = [(c, None) for c in NEWER_NUMBERS + OTHERS] + WITH_PARAM
    for clause, param in cases:
        pg, engine = _postgres(conn, clause, param), _engine(clause, columns, rows, param)
        if isinstance(pg, str):
            ok = isinstance(engine, str)
            if clause in NEWER_NUMBERS or param is not None:
                ok = ok and pg in engine  # Postgres 15's own words
        else:
            ok = engine == pg or (
                isinstance(engine, str) and not any(w in engine for w in POSTGRES_REFUSES)
            )
        if not ok:
            wrong.append((clause, engine, pg))
    assert not wrong, "\n".join(f"{c!r}: engine {e!r}, Postgres 15 {p!r}" for c, e, p in wrong)
