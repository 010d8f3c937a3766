"""String constants in the engine's SQL mean the same under standard_conforming_strings off.

The engine writes every where clause it sends to Postgres (snapshots, subsets, the rows it
asks about) from the parsed tree, never the client's text. A database or role may set
`standard_conforming_strings = off`, under which Postgres reads a backslash inside a plain
'...' as an escape: a constant holding a backslash, written as pglast writes it, then
ended early and what followed it was read as SQL. Such constants are now escape strings.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from sync_engine.shapes.where import parse_where
from tests.sync_engine.shapes.where.columns import column_map

PIECES = ["\\", "'", "\\'", "''", "a", "é", "\n", "%", "_", "\\\\", "--", ")", "E'", "$$", "\t"]


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_string_constants_read_back_exactly(db_url: str, conforming: str) -> None:
    rng = random.Random(3)
    values = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6))) for _ in range(300)]
    values += ["\\' AS text)) OR true) OR true --", "\\", "x\\'"]
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(
            pgsql.SQL("ALTER DATABASE {} SET standard_conforming_strings = {}").format(
                pgsql.Identifier(str(dbname)), pgsql.SQL(conforming)
            )
        )
    # (not the engine's session settings, which now set it on whatever the database says:
    # the deparse must not depend on that)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == (conforming,)
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, t text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO d VALUES (%s, %s)", list(enumerate(values)))
        columns = column_map(conn.info.dsn)
        checked = 0
        for i, value in enumerate(values):
            literal = "'" + value.replace("'", "''") + "'"
            for where, exact in [
                (parse_where("t = $1", {"1": value}, columns, live=False), True),
                (parse_where(f"t = {literal} AND id = {i}", {}, columns), True),
                (parse_where(f"t LIKE {literal} ESCAPE ''", {}, columns, live=False), False),
            ]:
                got = _ids(conn, where.sql)
                assert got is not None and i in got, (value, where.sql)
                if exact:  # (a LIKE pattern's % and _ match other values too)
                    assert all(values[j] == value for j in got), (value, where.sql)
                checked += 1
        assert checked == 3 * len(values)


def _ids(conn: psycopg.Connection[Any], where: str) -> set[int] | None:
    try:
        return {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where}")}
    except psycopg.Error:
        return None
