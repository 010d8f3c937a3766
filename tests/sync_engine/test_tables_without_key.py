"""A table without a primary key is keyed by all its columns, as Electric keys it
(`Inspector.get_pk_cols`). A `columns` subset of such a table used to be accepted and keyed
by the chosen columns alone: rows that agree on them got one key, and a client kept one of
them (a row lost, and which one it kept said something about the hidden column)."""

from __future__ import annotations

from tests.sync_engine.engine_harness import Engine, apply


async def test_a_subset_of_a_keyless_table_is_refused_and_every_row_arrives(
    engine: Engine,
) -> None:
    engine.sql("CREATE TABLE nopk (a int, secret text)")
    engine.sql("INSERT INTO nopk VALUES (1, 'x'), (1, 'y')")
    status, _h, body = await engine.get(table="nopk", offset="-1", columns="a")
    assert status == 400, body
    assert body["errors"] == {
        "columns": ["The list of columns must include all primary key columns, missing: secret"]
    }
    for columns in ({}, {"columns": "secret,a"}):
        rows, handle, offset = await engine.sync(table="nopk", **columns)
        assert sorted((r["a"], r["secret"]) for r in rows.values()) == [("1", "x"), ("1", "y")]
    engine.sql("INSERT INTO nopk VALUES (1, 'z'), (2, 'marker')")
    for _ in range(20):
        if any(r["secret"] == "marker" for r in rows.values()):
            break
        status, h, body = await engine.get(
            table="nopk", columns="secret,a", handle=handle, offset=offset, live="true"
        )
        assert status == 200, body
        apply(rows, body)
        offset = h["electric-offset"]
    assert sorted(r["secret"] for r in rows.values()) == ["marker", "x", "y", "z"]
