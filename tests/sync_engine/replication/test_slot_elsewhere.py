"""Two engines on two databases of one Postgres cluster with the same replication stream id
(the default, `default`): the second must refuse the slot of that name, never take it.

Slot names are per cluster. The second engine, finding no publication in its own database,
took the slot as "replaced": after 3 s it terminated the first engine's walsender and dropped
its slot, silently. The first engine then retired every shape it served (each client a 409
must-refetch, at its own tip) and could not stream again while the second held the name
(seen as a spurious 409 in tests/proxy, whose shared engine met each test's own engine).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sync_engine.app import SOURCES, build_app
from sync_engine.source import SourceState
from tests.support.databases import create_database, drop_database
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine


async def test_a_slot_of_another_database_is_refused_not_taken(
    engine: Engine, pg_server_url: str, aiohttp_client: Any, tmp_path: Path
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1')")
    rows, handle, offset = await engine.sync(table="items")
    name, other_url = create_database(pg_server_url)
    try:
        settings = replace(SETTINGS, database_url=other_url, data_dir=tmp_path / "other")
        client = await aiohttp_client(build_app(settings))
        other = client.app[SOURCES]["default"]

        def decided() -> bool:
            return other.ready.is_set() or other.state is SourceState.ERROR

        await wait_until_async(decided, timeout=15, message="the second engine's verdict")
        assert not other.ready.is_set()
        assert "--replication-stream-id" in (other.error or ""), other.error
        # and its health says so (it said 202 "starting" for good): by kind, no names
        resp = await client.get("/v1/health")
        assert resp.status == 503, await resp.text()
        assert await resp.json() == {
            "status": "error",
            "message": "the replication slot belongs to another database of the cluster"
            " (give each engine its own --replication-stream-id)",
        }
        # the first engine streams on, under the same handle
        engine.sql("INSERT INTO items VALUES (2, 't2')")
        await engine.follow_live(rows, handle, offset, "2", table="items")
        assert sorted(rows) == ['"public"."items"/"1"', '"public"."items"/"2"']
    finally:
        drop_database(pg_server_url, name)
