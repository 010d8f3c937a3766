"""A computed array's text quotes an element only for the spaces Postgres's array_out knows.

array_out quotes an element holding `{`, `}`, `,`, `"`, `\\`, or an ASCII space of
array_isspace (' ', \\t, \\n, \\r, \\v, \\f), and an empty or NULL-spelled one; an element
holding an NBSP, an em space or \\x1c is printed bare: ARRAY['a' || NBSP]::text is
'{a<NBSP>}'. The engine's quoting test was Python's `\\s`, every Unicode space, so it
printed '{"a<NBSP>"}' and a where on that text (`ARRAY[t, t2]::text = ...`, LIKE on
`(ARRAY[t] || ta)::text`) gave live verdicts Postgres does not. Found by wherefuzz's
array-output fuzz (/work/wherefuzz/arrout.py seed 1: 86 of 3,934 checks; 0 of 9,824 since).
"""

from __future__ import annotations

import psycopg

from sync_engine.pg.session import with_display_settings
from tests.sync_engine.engine_harness import Engine

NBSP, EM, FS = "\u00a0", "\u2003", "\x1c"
ROWS = [
    (1, "a" + NBSP, NBSP, [EM + "x"]),
    (2, "a" + FS, "b", ["c" + NBSP, None]),
    (3, "a b", "\t", ["x\vy"]),
    (4, "plain", "", ["NULL"]),
]
WHERES = [
    f"ARRAY[t, t2]::text = '{{a{NBSP},{NBSP}}}'",
    f'ARRAY[t, t2]::text = \'{{"a{NBSP}","{NBSP}"}}\'',  # (the engine's old text)
    f"ARRAY[t]::text = '{{a{FS}}}'",
    "(ARRAY[t] || ta)::text LIKE '{\"%'",
    "(ta || t2)::text LIKE '%\"%'",
    "concat(ARRAY[t2], '') = '{\"\\t\"}'",
]


async def test_computed_array_text_as_postgres(engine: Engine) -> None:
    engine.sql("CREATE TABLE ao (id int PRIMARY KEY, t text, t2 text, ta text[])")
    shapes = []
    for where in WHERES:
        params = {"table": "ao", "where": f"({where}) OR id = 0"}
        rows, handle, offset = await engine.sync(**params)
        shapes.append((where, params, rows, handle, offset))
    for row in ROWS:
        engine.sql("INSERT INTO ao VALUES (%s, %s, %s, %s)", list(row))
    engine.sql("INSERT INTO ao (id) VALUES (0)")
    with psycopg.connect(with_display_settings(engine.db_url), autocommit=True) as conn:
        matched = set()
        for where, params, rows, handle, offset in shapes:
            await engine.follow_live(rows, handle, offset, "0", **params)
            got = {int(r["id"]) for r in rows.values()} - {0}
            expected = {r[0] for r in conn.execute(f"SELECT id FROM ao WHERE {where}")}
            assert got == expected, (where, got, expected)
            matched |= expected
        assert matched == {1, 2, 3, 4}
