"""`rows_match`: Postgres's answer for rows as changes carry them (real Postgres).

Each answer is compared with Postgres evaluating the same clause on the table's own row.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from sync_engine.pg.catalog import load_table
from sync_engine.pg.row_where import RowDataError, Unevaluable, row_matches, rows_match
from sync_engine.pg.session import with_display_settings

NOTES = ['"quoted"', "back\\slash", "a,b", "(paren)", " spaced ", "", None, 'x"\\"y']


async def _rows(conn: AsyncConnection[Any]) -> list[dict[str, str | None]]:
    cur = await conn.execute("SELECT id::text, t, note, d::text, g::text FROM items ORDER BY id")
    names = ["id", "t", "note", "d", "g"]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


@pytest.mark.parametrize(
    "where",
    [
        "t::date > '2000-01-01'",
        "note = '\"quoted\"' OR note = 'back\\slash' OR note = 'a,b' OR note IS NULL",
        "note LIKE '%,%' OR note LIKE '% %' OR note = ''",
        "d > '2020-01-01' AND note IS NOT NULL",
        "g > 4",
    ],
)
async def test_answers_are_postgres_answers_on_the_table_row(db_url: str, where: str) -> None:
    dsn = with_display_settings(db_url)
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, t text, note text, d date,"
            " g int GENERATED ALWAYS AS (id * 2) STORED)"
        )
        for i, note in enumerate(NOTES):
            t = ["Jan 2 2024", "Jan 2 1990", "2024-01-05"][i % 3]
            d = ["10000-01-01", "0044-03-15 BC", "2021-06-01", None][i % 4]
            await conn.execute(
                "INSERT INTO items (id, t, note, d) VALUES (%s, %s, %s, %s)", (i, t, note, d)
            )
        table = await load_table(conn, "public", "items")
        assert table is not None
        rows = await _rows(conn)
        cur = await conn.execute(
            f"SELECT ({where}) IS TRUE FROM items ORDER BY id"  # the test's own constant
        )
        want = [r[0] for r in await cur.fetchall()]
        referenced = frozenset({"t", "note", "d", "g"} & set(where.replace("(", " ").split()))
        assert await rows_match(conn, table, where, referenced, rows) == want
        assert [await row_matches(conn, table, where, referenced, r) for r in rows] == want
        # The stream does not send generated columns: NULL unless the clause reads them.
        sent = [{k: v for k, v in r.items() if k != "g"} for r in rows]
        if "g" in referenced:
            with pytest.raises(Unevaluable):
                await rows_match(conn, table, where, referenced, sent)
        else:
            assert await rows_match(conn, table, where, referenced, sent) == want


async def test_an_error_of_the_clause_and_a_changed_table_are_unevaluable(
    db_url: str,
) -> None:
    """A row the clause fails on is in no snapshot: Postgres fails the query. It was "no
    match" (live clients kept a shape a new client got a 400 for); now `Unevaluable`, and
    the replicator retires the shape."""
    async with await AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        table = await load_table(conn, "public", "items")
        assert table is not None
        rows: list[dict[str, str | None]] = [{"id": "1", "v": "0"}, {"id": "2", "v": "5"}]
        where, v = "10 / v > 1", frozenset({"v"})
        with pytest.raises(RowDataError):  # together: one of them fails
            await rows_match(conn, table, where, v, rows)
        with pytest.raises(Unevaluable, match="the where clause fails on a row"):
            await row_matches(conn, table, where, v, rows[0])
        assert await row_matches(conn, table, where, v, rows[1]) is True
        with pytest.raises(psycopg.errors.DivisionByZero):  # (Postgres itself fails on it)
            await conn.execute(f"SELECT {where} FROM (SELECT 0 AS v) AS items")
        # Asked as a WHERE, as the snapshot query has it, not as a select list's value: the
        # planner pulls out `id = 1`, common to both arms, and the OR is just that; an
        # equivalence class makes `v / v` both 1 and 2, a constant false (seeds 5008 and
        # 8101 of the long fuzz: the shape was retired for a row the snapshot answers)
        for clause, answers in [
            ("((10 / v > 1) AND id = 1) OR id = 1", [True, False]),
            ("(v / v) = 1 AND (v / v) = 2", [False, False]),
        ]:
            assert await row_matches(conn, table, clause, v, rows[0]) is answers[0]
            assert await rows_match(conn, table, clause, v, rows) == answers
        await conn.execute("ALTER TABLE items ADD COLUMN w int")  # the row type changed
        with pytest.raises(RowDataError):
            await rows_match(conn, table, where, v, rows)
        with pytest.raises(Unevaluable):
            await row_matches(conn, table, where, v, rows[1])
