"""A test table `d` as the engine and Postgres see it: its columns from the catalog (for
parse_where) and Postgres's own verdict on a clause for one of its rows."""

from __future__ import annotations

import asyncio

import psycopg

from sync_engine.pg.catalog import ColumnInfo, load_table


def column_map(url: str, table: str = "d") -> dict[str, ColumnInfo]:
    """`public.<table>`'s columns, loaded as the engine loads them when a shape names it."""

    async def load() -> dict[str, ColumnInfo]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            info = await load_table(conn, "public", table)
        assert info is not None, table
        return info.column_map

    return asyncio.run(load())


#: `verdict(clause, rid)`: Postgres's verdict on `clause` for row `rid` of `d` alone:
#: 'true', 'false', 'null' or 'error' (a failure on one row fails a whole query otherwise).
VERDICT_FUNCTION = (
    "CREATE FUNCTION verdict(clause text, rid int) RETURNS text AS $$ "
    "DECLARE res boolean; BEGIN "
    "EXECUTE 'SELECT (' || clause || ') FROM d WHERE id = $1' INTO res USING rid; "
    "RETURN coalesce(res::text, 'null'); "
    "EXCEPTION WHEN others THEN RETURN 'error'; END $$ LANGUAGE plpgsql"
)
