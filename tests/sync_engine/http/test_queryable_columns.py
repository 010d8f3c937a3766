"""`queryable_columns`: Electric's allow-list for what `columns` and a subset's where and
order_by may name (GHSA-c82q-v86f-c87f). The engine ignored it: behind a proxy that follows
Electric's auth guide (it sets `columns` and `queryable_columns`, and passes the client's
subset on), a subset filtering or ordering on a hidden column was served, and which rows
came, in what order, told the hidden values (transparency 19:50, MEDIUM).

Real path: the engine in-process on the test database, asked as a client would.
"""

from __future__ import annotations

from typing import Any

from tests.sync_engine.engine_harness import Engine

ALLOWED = {"columns": "id,title", "queryable_columns": "id,title"}


def _setup(engine: Engine) -> None:
    engine.sql("CREATE TABLE notes (id int PRIMARY KEY, title text, secret text)")
    engine.sql("INSERT INTO notes SELECT g, 't' || g, 's' || g FROM generate_series(1, 6) g")


async def _subset(engine: Engine, **subset: str) -> tuple[int, Any]:
    _, handle, offset = await engine.sync(table="notes", **ALLOWED)
    status, _, body = await engine.get(
        table="notes", handle=handle, offset=offset, **ALLOWED, **subset
    )
    return status, body


async def test_a_subset_may_not_filter_or_order_on_a_column_not_queryable(engine: Engine) -> None:
    _setup(engine)
    status, body = await _subset(engine, subset__where="secret = 's4'")
    assert status == 400, body
    assert "unknown reference secret" in body["errors"]["subset"]["where"][0], body
    status, body = await _subset(engine, subset__order_by="secret DESC", subset__limit="2")
    assert status == 400, body
    assert "secret" in str(body["errors"]["subset"]), body
    # what it allows is answered, the rows with the shape's columns only
    status, body = await _subset(engine, subset__where="title = 't4'")
    assert status == 200, body
    assert [m["value"] for m in body["data"]] == [{"id": "4", "title": "t4"}]


async def test_columns_must_be_queryable_and_default_to_them(engine: Engine) -> None:
    _setup(engine)
    status, _, body = await engine.get(
        table="notes", offset="-1", columns="id,secret", queryable_columns="id,title"
    )
    assert status == 400, body
    assert body["errors"]["columns"] == [
        "The following columns are not in queryable_columns: secret"
    ], body
    # omitted, `columns` is what is queryable
    rows, _, _ = await engine.sync(table="notes", queryable_columns="id,title")
    assert rows['"public"."notes"/"1"'] == {"id": "1", "title": "t1"}, rows
    # the primary key must be queryable; unknown columns are named
    status, _, body = await engine.get(table="notes", offset="-1", queryable_columns="title")
    assert status == 400, body
    assert "primary key" in body["errors"]["queryable_columns"][0], body
    status, _, body = await engine.get(table="notes", offset="-1", queryable_columns="id,nope")
    assert status == 400, body
    assert "nope" in body["errors"]["queryable_columns"][0], body
    # the shape's own where is not restricted by it
    rows, _, _ = await engine.sync(table="notes", where="secret = 's2'", **ALLOWED)
    assert list(rows.values()) == [{"id": "2", "title": "t2"}]
