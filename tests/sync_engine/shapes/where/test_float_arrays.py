"""Arrays of float4, float8 and numeric compare their elements with the type's `=`, under
which NaN equals NaN (array_eq, @>, <@, && and IN over array constants).

Python's NaN equals nothing: `fa = '{NaN}'`, `fa @> '{NaN}'`, `na && '{NaN,5}'` and
`fa IN ('{NaN}', '{1.5}')` did not match the rows Postgres returns, and the IN list's
array keys (a NaN inside a tuple) were taken as index keys, so the router also skipped the
shape for such a row.
"""

from __future__ import annotations

import random

import psycopg

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import parse_where
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import column_map

FLOATS = ["NaN", "-0", "0", "1.5", "Infinity", "-Infinity", "NULL"]
CLAUSES = [
    "fa = '{NaN}'", "fa <> '{NaN}'", "fa = '{NaN,NULL}'", "fa = '{0}'", "fa = ARRAY[-0]::float8[]",
    "fa @> '{NaN}'", "fa <@ '{NaN,1.5,0}'", "fa && '{NaN}'", "fa && '{-0}'",
    "fa IN ('{NaN}', '{1.5}')", "fa NOT IN ('{NaN}', '{1.5}')", "fa IS DISTINCT FROM '{NaN}'",
    "fa IS NOT DISTINCT FROM '{NaN,NaN}'", "NULLIF(fa, '{NaN}') IS NULL",
    "'NaN' = ANY(fa)", "'NaN'::float8 = ALL(fa)", "f4a = '{NaN}'", "f4a @> '{NaN}'",
    "f4a::float8[] = '{NaN}'", "na = '{NaN}'", "na @> '{NaN}'", "na && '{NaN,5}'",
    "na IN ('{NaN}', '{1.50}')", "na = '{1.5}'", "na <@ '{NaN,1.5,0,Infinity}'",
    "ARRAY[fa[1]] = '{NaN}'", "fa[1:1] = '{NaN}'",
]  # fmt: skip


def test_float_arrays_compare_nan_equal_like_postgres(db_url: str) -> None:
    rng = random.Random(2)
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, fa float8[], f4a float4[], na numeric[])")
        for i in range(150):
            arrays = [
                None if rng.random() < 0.1 else
                "{" + ",".join(rng.choice(pool) for _ in range(rng.randint(0, 3))) + "}"
                for pool in (FLOATS, FLOATS, ["NaN", "1.5", "1.50", "0", "Infinity", "NULL"])
            ]  # fmt: skip
            conn.execute("INSERT INTO d VALUES (%s, %s, %s, %s)", (i, *arrays))
        rows = {
            r[0]: {"id": str(r[0]), "fa": r[1], "f4a": r[2], "na": r[3]}
            for r in conn.execute("SELECT id, fa::text, f4a::text, na::text FROM d")
        }
        columns = column_map(url)
        matched = 0
        for clause in CLAUSES:
            where = parse_where(clause, {}, columns)
            expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
            got = {i for i, row in rows.items() if where.matches(row)}
            assert got == expected, (clause, sorted(got ^ expected)[:5])
            matched += bool(expected)
        assert matched >= len(CLAUSES) - 3, matched  # (not a test of empty answers)


async def test_a_nan_array_in_a_list_arrives_live(engine: Engine) -> None:
    engine.sql("CREATE TABLE d (id int PRIMARY KEY, fa float8[])")
    where = "fa IN ('{NaN}', '{1.5}') OR id = 99"
    rows, handle, offset = await engine.sync(table="d", where=where)
    engine.sql("INSERT INTO d VALUES (1, '{NaN}'), (2, '{1.5}'), (3, '{2}'), (99, NULL)")
    await engine.follow_live(rows, handle, offset, "99", table="d", where=where)
    assert sorted(r["id"] for r in rows.values()) == ["1", "2", "99"]
