"""A new shape is never made from a table description the catalog no longer has.

`Tables.lookup` keeps a table's description for `LOOKUP_TTL` (2 s): a shape made within that
time of a change to the table (its primary key moved to another column, here) was made from the
old description, keyed its rows by the old key and named it in `electric-schema`, until the
periodic schema check (every `schema_check_interval`, 10 s) rotated it. A new shape now reads
its table again (`Tables.publish`) and, if it changed, is described again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from tests.sync_engine.engine_harness import SETTINGS, Engine


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    # (no schema check meanwhile: it would drop the cached description by chance)
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", schema_check_interval=60.0
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_a_shape_made_right_after_a_primary_key_change_uses_the_new_key(
    engine: Engine,
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL UNIQUE)")
    engine.sql("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    for where in ("id > 100", "id > 200"):  # (the second describes it after it is published)
        status, _, _ = await engine.get(table="items", where=where, offset="-1")
        assert status == 200
    engine.sql("ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (code)")
    rows, handle, _ = await engine.sync(table="items", where="id > 0")
    assert sorted(rows) == ['"public"."items"/"a"', '"public"."items"/"b"'], rows
    status, h, _ = await engine.get(table="items", where="id > 0", offset="-1")
    schema = json.loads(h["electric-schema"])
    assert schema["code"].get("pk_index") == 0 and "pk_index" not in schema["id"], schema


async def test_a_live_request_racing_a_drop_table_gets_the_400_not_the_503(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live request whose shape was deleted, racing a DROP TABLE of its table: its lookup
    can return the table as a catalog read begun before the DROP found it (cached, or a read
    in flight joined), also on the one retry after the fresh read found the table gone. It
    got the 503 table_changed (counted as a server error); now the 400 a request after the
    DROP gets. The race is made certain: the lookup returns the dropped table's description
    each time, as such a read would."""
    engine.sql("CREATE TABLE gone (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO gone VALUES (1, 'a')")
    _, handle, offset = await engine.sync(table="gone")
    source = engine.source
    before = await source.tables.lookup("public", "gone")
    assert before is not None
    resp = await engine.client.delete("/v1/shape", params={"table": "gone"})
    assert resp.status in (200, 202), await resp.text()
    engine.sql("DROP TABLE gone")

    async def read_before_the_drop(schema: str, name: str) -> Any:
        return before if (schema, name) == ("public", "gone") else None

    monkeypatch.setattr(source.tables, "lookup", read_before_the_drop)
    status, _, body = await engine.get(table="gone", offset=offset, handle=handle, live="true")
    assert status == 400, body
    assert 'Table "public"."gone" does not exist' in body["errors"]["table"][0], body
