"""`ARRAY[...]::T[]` casts each item to T, as Postgres's parse does (transformArrayExpr,
given the cast's type, coerces every element with an explicit cast), instead of building an
array of the items' common type and casting that.

`ia @> ARRAY['7']::int4[]` (and a policy's `ia @> ARRAY[{{n}}]::int4[]`, its claim a `$n`)
was a 400 "casting text[] to integer[] is not supported here" where Postgres answers. Found
by the round-3 fuzz of policy claims through the real proxy and engine (/work/where-fuzz).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import table_in_own_database

TABLE = """
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE a (id int PRIMARY KEY, ia int4[], t text, i2 int2, da date[], ea mood[]);
INSERT INTO a VALUES (1, '{7,8}', '7', 7, '{2024-01-01}', '{ok}'),
                     (2, '{1}', 'x', NULL, NULL, '{sad,ok}'),
                     (3, NULL, NULL, 2, '{}', NULL)
"""

ANSWERED = [
    "ia @> ARRAY['7']::int4[]", "ia @> ARRAY['7', '8']::int4[]", "ia @> ARRAY[1.5, 7]::int4[]",
    "ia @> ARRAY[i2, '7']::int4[]", "ARRAY['1', NULL]::int4[] = ia", "ia && ARRAY[' 8 ']::int4[]",
    "ARRAY['2024-01-01']::date[] = da", "ARRAY['ok']::mood[] <@ ea", "7 = ANY(ARRAY['7']::int4[])",
    "(ARRAY['1', '2']::int8[])[2] = 2", "false AND ARRAY[99999]::int2[] IS NULL",
]  # fmt: skip

FAILS = [
    ("ia @> ARRAY['a']::int4[]", 'invalid input syntax for type integer: "a"'),
    ("ARRAY[99999]::int2[] IS NULL", "smallint out of range"),
    ("ea = ARRAY['x']::mood[]", 'invalid input value for enum mood: "x"'),
    ("ia = ARRAY['7']::int8[]", "operator does not exist: integer[] = bigint[]"),
]


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with table_in_own_database(pg_server_url, TABLE, "a") as found:
        yield found


@pytest.mark.parametrize("clause", ANSWERED)
def test_array_cast_items_as_postgres(
    table: tuple[psycopg.Connection[Any], Any], clause: str
) -> None:
    conn, columns = table
    expected = {r[0] for r in conn.execute(f"SELECT id FROM a WHERE {clause}")}
    where = parse_where(clause, {}, columns)
    rows = conn.execute("SELECT id, ia::text, t, i2::text, da::text, ea::text FROM a").fetchall()
    names = ("id", "ia", "t", "i2", "da", "ea")
    got = {
        r[0]
        for r in rows
        if where.matches(
            {n: (None if v is None else str(v)) for n, v in zip(names, r, strict=True)}
        )
    }
    assert got == expected, clause


@pytest.mark.parametrize(("clause", "message"), FAILS)
def test_an_item_postgres_cannot_cast_is_its_error(
    table: tuple[psycopg.Connection[Any], Any], clause: str, message: str
) -> None:
    conn, columns = table
    with pytest.raises(psycopg.Error, match=message.replace("[", r"\[")):
        conn.execute(f"SELECT id FROM a WHERE {clause}")
    with pytest.raises(WhereError, match=message.replace("[", r"\[")):
        parse_where(clause, {}, columns)


async def test_a_parameter_in_an_array_cast_through_the_engine(engine: Engine) -> None:
    """A policy's `ia @> ARRAY[{{n}}]::int4[]` reaches the engine as `$n`: its rows, snapshot
    and live, are Postgres's."""
    engine.sql("CREATE TABLE a (id int PRIMARY KEY, ia int4[])")
    engine.sql("INSERT INTO a VALUES (1, '{7,8}'), (2, '{1}')")
    where = "ia @> ARRAY[$1]::int4[]"
    rows, _handle, _offset = await engine.sync(table="a", where=where, **{"params[1]": "7"})
    assert {r["id"] for r in rows.values()} == {"1"}
    status, _headers, body = await engine.get(
        table="a", offset="-1", where=where, **{"params[1]": "x"}
    )
    assert status == 400, body
    assert body["errors"]["where"] == ['At location 12: invalid input syntax for type integer: "x"']
