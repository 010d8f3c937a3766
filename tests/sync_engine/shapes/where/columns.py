"""A test table `d` as the engine and Postgres see it: its columns from the catalog (for
parse_where) and Postgres's own verdict on a clause for one of its rows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from sync_engine.pg.catalog import ColumnInfo, ColumnMap, load_table
from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import Where, WhereError, parse_where
from sync_engine.shapes.where.clause import ClauseFails
from tests.support.databases import create_database, drop_database


def column_map(url: str, table: str = "d") -> dict[str, ColumnInfo]:
    """`public.<table>`'s columns, loaded as the engine loads them when a shape names it."""

    async def load() -> dict[str, ColumnInfo]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            info = await load_table(conn, "public", table)
        assert info is not None, table
        return info.column_map

    return asyncio.run(load())


@contextmanager
def table_in_own_database(
    pg_server_url: str, ddl: str, table: str
) -> Iterator[tuple[psycopg.Connection[Any], dict[str, ColumnInfo]]]:
    """A database of its own holding `ddl` (run with the engine's display settings), and
    `table`'s columns as the engine loads them; dropped afterwards."""
    dbname, db_url = create_database(pg_server_url)
    try:
        url = with_display_settings(db_url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ddl)
            yield conn, column_map(url, table)
    finally:
        drop_database(pg_server_url, dbname)


#: `verdict(clause, rid)`: Postgres's verdict on `clause` for row `rid` of `d` alone:
#: 'true', 'false', 'null' or 'error' (a failure on one row fails a whole query otherwise).
VERDICT_FUNCTION = (
    "CREATE FUNCTION verdict(clause text, rid int) RETURNS text AS $$ "
    "DECLARE res boolean; BEGIN "
    "EXECUTE 'SELECT (' || clause || ') FROM d WHERE id = $1' INTO res USING rid; "
    "RETURN coalesce(res::text, 'null'); "
    "EXCEPTION WHEN others THEN RETURN 'error'; END $$ LANGUAGE plpgsql"
)


def disagreements(
    where: Where, rows: Mapping[int, Mapping[str, str | None]], expected: set[int]
) -> list[int]:
    """The ids of `rows` where the engine's verdict on `where` is not Postgres's (the ids in
    `expected`), leaving out the rows the engine does not know (UnrepresentableValue:
    Postgres is asked about such a row)."""
    got: set[int] = set()
    unknown: set[int] = set()
    for rid, row in rows.items():
        try:
            if where.matches(row):
                got.add(rid)
        except UnrepresentableValue:
            unknown.add(rid)
    return sorted((got ^ expected) - unknown)


def engine_verdict(where: Where, row: Mapping[str, str | None]) -> str:
    """The engine's verdict on `row` in `VERDICT_FUNCTION`'s words: 'true', 'false' (false
    or NULL: no match), or 'error' where it says Postgres fails on the row (`ClauseFails`:
    the shape is retired). Another UnrepresentableValue propagates."""
    try:
        return "true" if where.matches(row) else "false"
    except ClauseFails:
        return "error"


def agrees(engine: str, postgres: str) -> bool:
    """Whether the engine's verdict (`engine_verdict`) is Postgres's (`VERDICT_FUNCTION`)."""
    return engine == ("false" if postgres == "null" else postgres)


def text_rows(conn: psycopg.Connection[Any], table: str, names: list[str]) -> list[dict[str, Any]]:
    """`table`'s rows as the engine receives them: each column's text (NULL as None)."""
    select = ", ".join(f"CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}, '') END" for c in names)
    return [dict(zip(names, r, strict=True)) for r in conn.execute(f"SELECT {select} FROM {table}")]


def refused_as_postgres_refuses(
    conn: psycopg.Connection[Any], columns: ColumnMap, table: str, clause: str, words: str
) -> None:
    """The engine refuses `clause` saying `words`, and so does Postgres's EXPLAIN of it."""
    with pytest.raises(WhereError, match=re.escape(words)):
        parse_where(clause, {}, columns)
    with pytest.raises(psycopg.Error, match=re.escape(words)):
        with conn.transaction():
            conn.execute(f"EXPLAIN SELECT 1 FROM {table} WHERE {clause}")
