"""Refusals of what the engine does not evaluate on composites name the construct, and do
not claim Postgres cannot do it: `GREATEST(cs[1], cs[2])` said "could not identify a
comparison function for type pair" and `cs[1]::text` "cannot cast type pair to text",
though Postgres runs both (it orders composites field by field, and casts any to text);
`(cs[1]).a` said "String is not supported here". Through HTTP: a 400 naming the construct,
for clauses Postgres itself answers."""

from __future__ import annotations

import pytest

from tests.sync_engine.engine_harness import Engine


@pytest.mark.parametrize(
    ("where", "words"),
    [
        (
            "GREATEST(cs[1], cs[2]) IS NOT DISTINCT FROM cs[2]",
            "GREATEST/LEAST of composite values (pair)",
        ),
        ("LEAST(c, c) IS NOT DISTINCT FROM c", "GREATEST/LEAST of composite values (pair)"),
        ("cs[1]::text = '(1,a)'", "casting an element of a composite array (pair) to text"),
        ("(cs[1]).a = 1", "field selection (.a) is not supported"),
        ("(c).a = 1", "field selection (.a) is not supported"),
    ],
)
async def test_composite_refusals_name_the_construct(
    engine: Engine, where: str, words: str
) -> None:
    engine.sql("CREATE TYPE pair AS (a int, b text)")
    engine.sql("CREATE TABLE t (id int PRIMARY KEY, c pair, cs pair[])")
    engine.sql("INSERT INTO t VALUES (1, '(1,a)', ARRAY['(1,a)', '(2,b)']::pair[])")
    assert engine.sql(f"SELECT id FROM t WHERE {where}") == [(1,)]  # (Postgres answers it)
    status, _h, body = await engine.get(table="t", offset="-1", where=where)
    assert status == 400, body
    (message,) = body["errors"]["where"]
    assert words in message, message
    assert "could not identify" not in message and "cannot cast" not in message
