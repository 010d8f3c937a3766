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
from sync_engine.shapes.where import parse_where
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
