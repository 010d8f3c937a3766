"""A composite whose attributes are all NULL is a value, not NULL: `ROW(NULL,NULL)` reads
`(,)`, and may be a primary key.

The snapshot asked `c IS NULL`, which Postgres answers true for such a row value: a table
keyed by it lost that row from every snapshot (a later UPDATE of it arrived for a key the
client never had), and a column of it was served as null where pgoutput sends `(,)` for
the same value (fidelity HIGH/MEDIUM). Now NULL is the datum's own (`num_nulls`).

Real path: the in-process engine over HTTP; the live path for the same values.
"""

from __future__ import annotations

from tests.sync_engine.engine_harness import Engine


async def test_a_key_or_value_of_only_null_attributes_is_served_as_postgres_reads_it(
    engine: Engine,
) -> None:
    engine.sql("CREATE TYPE pc AS (x int, y text)")
    engine.sql("CREATE TABLE nk (c pc PRIMARY KEY, id int)")
    engine.sql("INSERT INTO nk VALUES (ROW(1, 'a'), 1), (ROW(NULL, NULL), 2)")
    rows, handle, offset = await engine.sync(table="nk")
    assert sorted(rows) == ['"public"."nk"/"(,)"', '"public"."nk"/"(1,a)"'], rows
    assert rows['"public"."nk"/"(,)"'] == {"c": "(,)", "id": "2"}
    engine.sql("UPDATE nk SET id = 20 WHERE id = 2")
    engine.sql("INSERT INTO nk VALUES (ROW(9, 'z'), 9)")
    await engine.follow_live(rows, handle, offset, "9", table="nk")
    assert rows['"public"."nk"/"(,)"'] == {"c": "(,)", "id": "20"}

    engine.sql("CREATE TABLE nv (id int PRIMARY KEY, c pc, cs pc[], d pc)")
    engine.sql("INSERT INTO nv VALUES (1, ROW(NULL, NULL), ARRAY[ROW(NULL, NULL)::pc], NULL)")
    rows, handle, offset = await engine.sync(table="nv")
    assert [r for r in rows.values()] == [{"id": "1", "c": "(,)", "cs": '{"(,)"}', "d": None}]
    engine.sql("INSERT INTO nv VALUES (2, ROW(NULL, NULL), ARRAY[ROW(NULL, NULL)::pc], NULL)")
    await engine.follow_live(rows, handle, offset, "2", table="nv")
    assert rows['"public"."nv"/"2"'] == {"id": "2", "c": "(,)", "cs": '{"(,)"}', "d": None}


async def test_is_null_of_a_composite_is_refused_where_it_tests_fields(engine: Engine) -> None:
    """`c IS NULL` is true in Postgres for ROW(NULL, NULL) (it tests each field) and `c IS
    NOT NULL` false for ROW(1, NULL); live, the engine tested the value, and a live row
    disagreed with the snapshot. Refused (400) for a composite or a domain over one; an
    array of them (tested as a value by Postgres too) and a subset (Postgres's alone)
    keep it."""
    engine.sql("CREATE TYPE pc AS (x int, y text)")
    engine.sql("CREATE DOMAIN dpc AS pc")
    engine.sql("CREATE TABLE nv (id int PRIMARY KEY, c pc, d dpc, cs pc[])")
    engine.sql("INSERT INTO nv VALUES (1, ROW(NULL, NULL), ROW(NULL, NULL), NULL)")
    for where in ["c IS NULL", "c IS NOT NULL", "d IS NULL", "NOT (d IS NOT NULL)"]:
        status, _h, body = await engine.get(table="nv", offset="-1", where=where)
        assert status == 400, (where, body)
        assert "composite value" in body["errors"]["where"][0], (where, body)
    rows, _, _ = await engine.sync(table="nv", where="cs IS NULL")
    assert [r["id"] for r in rows.values()] == ["1"]
    status, _h, body = await engine.get(table="nv", offset="-1", subset__where="c IS NULL")
    assert status == 200, body
    assert [m["value"]["id"] for m in body["data"]] == ["1"]


async def test_is_null_of_an_element_of_an_array_of_composites_is_refused(engine: Engine) -> None:
    """The refusal is by the expression's type, wherever it comes from: a table whose
    composite is only an array's element (`cs c3[]`) had no refusal, and live, `cs[1] IS
    NULL` tested the datum where Postgres tests its fields (review 11:32: live [1, 3, 4],
    Postgres {1, 3, 4, 5}; `cs[1] IS NOT NULL` live [5, 6, 7, 8], Postgres {8})."""
    engine.sql("CREATE TYPE inner_t AS (a int, b text)")
    engine.sql("CREATE TYPE c3 AS (x int, y text, z inner_t)")
    engine.sql("CREATE DOMAIN dc3 AS c3")
    engine.sql("CREATE TABLE t2 (id int PRIMARY KEY, cs c3[], ds dc3[])")
    engine.sql("INSERT INTO t2 VALUES (1, ARRAY[ROW(NULL, NULL, NULL)::c3], NULL)")
    for where in [
        "cs[1] IS NULL",
        "cs[1] IS NOT NULL",
        "(cs[1]) IS NOT NULL",
        "COALESCE(cs[1], cs[2]) IS NOT NULL",
        "(CASE WHEN id > 0 THEN cs[1] END) IS NULL",
        "NOT (cs[2] IS NULL)",
        "ds[1] IS NULL",
    ]:
        status, _h, body = await engine.get(table="t2", offset="-1", where=where)
        assert status == 400, (where, body)
        assert "composite value" in body["errors"]["where"][0], (where, body)
    # An array of them, and a slice (an array), are tested as values, as Postgres does.
    engine.sql("INSERT INTO t2 VALUES (2, NULL, NULL), (3, '{}', NULL)")
    for where, ids in [("cs IS NULL", ["2"]), ("cs[1:1] IS NOT NULL", ["1", "3"])]:
        rows, handle, offset = await engine.sync(table="t2", where=where)
        assert sorted(r["id"] for r in rows.values()) == ids, where
