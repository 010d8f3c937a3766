"""A new shape of a table another transaction holds (a migration's ALTER TABLE, a VACUUM
FULL): its publish needs the table's lock (`pg.publication.add_table`)."""

from __future__ import annotations

import asyncio

import psycopg

from tests.sync_engine.engine_harness import Engine

#: Seconds the request may take here: beyond the lock wait (2 s), below the publish's 30 s.
HOLD = 20.0


async def test_a_first_shape_of_a_locked_table_is_a_clear_503(engine: Engine) -> None:
    """A migration holding the table (ACCESS EXCLUSIVE): its first shape's publish waited
    for the lock the whole publish's 30 s, then answered 503 'Database is not answering'
    (database_unreachable), a false alarm for an operator (proxy 22:54). Now a 503 that
    says the table is locked, within the lock wait (2 s), and the shape once it ends."""
    engine.sql("CREATE TABLE locked (id int PRIMARY KEY)")
    engine.sql("INSERT INTO locked VALUES (1)")
    holder = await psycopg.AsyncConnection.connect(engine.db_url)
    try:
        await holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        async with asyncio.timeout(HOLD):
            status, headers, body = await engine.get(table="locked", offset="-1")
        assert status == 503, body
        assert body["code"] == "table_locked" and "locked" in body["message"], body
        assert headers["retry-after"]
    finally:
        await holder.rollback()
        await holder.close()
    rows, _, _ = await engine.sync(table="locked")
    assert list(rows) == ['"public"."locked"/"1"']
