"""A string constant continued on a later line across a `--` comment, as Postgres 15 reads it.

`owner_id = 'ali' -- note<newline>'ce'` is `owner_id = 'alice'` to Postgres 15 (its scanner
counts a `--` comment as whitespace before the newline that continues a string constant);
pglast's parser refused it, "syntax error at or near 'ce'" (attack 02:03, INFO: a refusal).
The engine now reads `--` comments as the spaces they mean (parse.blank_line_comments). A
`/* */` comment there is still a syntax error, in Postgres too. Each clause's rows are
compared with Postgres's for the clause as the client wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import WhereError, check_where_constructs, parse_where
from tests.sync_engine.shapes.where.columns import engine_verdict, table_in_own_database, text_rows

TABLE = """
CREATE TABLE o (id int PRIMARY KEY, owner_id text);
INSERT INTO o VALUES (1, 'alice'), (2, 'ali'), (3, 'ce'), (4, 'ali--ce'), (5, NULL)
"""

READ = [
    "owner_id = 'ali' -- c\n'ce'", "owner_id = 'ali'\n-- c\n'ce'", "owner_id = 'ali' -- c\n-- d\n  'ce'",
    "owner_id = 'ali--ce' -- 'x'\n", "owner_id IN ('ali' -- é\n'ce', 'ce')", "owner_id = E'ali' -- x\n'ce'",
    "owner_id LIKE 'al' -- c\r'%'", "-- leading\nowner_id = 'ce'",
]  # fmt: skip
REFUSED = ["owner_id = 'ali' /* c */\n'ce'", "owner_id = 'ali' -- c\n/* d */ 'ce'"]


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with table_in_own_database(pg_server_url, TABLE, "o") as found:
        yield found


def test_comments_read_as_postgres_reads_them(table: Any) -> None:
    conn, columns = table
    rows = text_rows(conn, "o", ["id", "owner_id"])
    for clause in READ:
        check_where_constructs(clause)
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM o WHERE {clause}")}
        got = {int(r["id"]) for r in rows if engine_verdict(where, r) == "true"}
        assert got == expected and expected, (clause, where.sql, got, expected)
    for clause in REFUSED:
        with pytest.raises(WhereError, match="syntax error"):
            parse_where(clause, {}, columns)
        with pytest.raises(psycopg.errors.SyntaxError):
            with conn.transaction():
                conn.execute(f"SELECT id FROM o WHERE {clause}")
