"""`^` with an untyped literal operand, as Postgres resolves it: Postgres has `^` on float8
and on numeric only, so `'0.1' ^ f4` and `f4 ^ '0.5'` read the literal as float8 (the float4
column converts), and `'0.5' ^ i4` / `i4 ^ '0.5'` read it as float8 too (float8 is the
numeric category's preferred type); beside a numeric it is numeric.

The engine read the literal as the other operand's type: `f4 ^ '0.5'` raised to float4's
0.5 is exact, but `'0.1' ^ f4` was 0.10000000149011612 ^ f4 (a live row with f4 = 1 failed
`('0.1' ^ f4)::text = '0.1'`, which Postgres returns), and `'0.5' ^ i4` was a 400 "invalid
input syntax for type integer" for a clause Postgres answers. Found by wherefuzz's
edge-value expression fuzz (/work/wherefuzz/vfz4.py seed 4: abs('0.1' ^ f4)).
"""

from __future__ import annotations

import psycopg

from sync_engine.pg.session import with_display_settings
from tests.sync_engine.engine_harness import Engine

ROWS = [(1, "1", 2, "2"), (2, "2.5", 4, "0.5"), (3, "0.1", 0, "4"), (4, "4", 3, "0.25")]
WHERES = [
    "('0.1' ^ f4)::text = '0.1'",
    "('0.1' ^ f4) < 0.01",
    "(f4 ^ '0.1') > 1.07",
    "('0.5' ^ i4) = 0.25",
    "(i4 ^ '0.5')::text = '1.4142135623730951'",
    "(f8 ^ '0.5') = 2",
    "('2' ^ i4::int8) = 4",
    "(i4::int2 ^ '0.5') > 1.7",
]


async def test_power_with_a_literal_as_postgres(engine: Engine) -> None:
    engine.sql("CREATE TABLE pw (id int PRIMARY KEY, f4 float4, i4 int4, f8 float8)")
    shapes = []
    for where in WHERES:
        params = {"table": "pw", "where": f"({where}) OR id = 0"}
        rows, handle, offset = await engine.sync(**params)
        shapes.append((where, params, rows, handle, offset))
    for row in ROWS:
        engine.sql("INSERT INTO pw VALUES (%s, %s, %s, %s)", list(row))
    engine.sql("INSERT INTO pw (id) VALUES (0)")
    with psycopg.connect(with_display_settings(engine.db_url), autocommit=True) as conn:
        for where, params, rows, handle, offset in shapes:
            await engine.follow_live(rows, handle, offset, "0", **params)
            got = {int(r["id"]) for r in rows.values()} - {0}
            expected = {r[0] for r in conn.execute(f"SELECT id FROM pw WHERE {where}")}
            assert expected, where  # (each clause holds on some row)
            assert got == expected, (where, got, expected)
