"""`global_last_seen_lsn` before the engine has seen a transaction since it started."""

from __future__ import annotations

import psycopg

from sync_engine.app import SOURCES
from tests.sync_engine.engine_harness import Engine


async def test_up_to_date_at_start_reports_the_slot_position(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    source = engine.client.app[SOURCES]["default"]
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint,"
            " (pg_current_wal_lsn() - '0/0')::bigint FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (source.config.slot_name,),
        ).fetchone()
    assert row is not None and row[0] > 0
    _, handle, offset = await engine.sync(table="items")
    status, _, body = await engine.get(table="items", handle=handle, offset=offset)
    assert status == 200
    gls = int(body[-1]["headers"]["global_last_seen_lsn"])
    # (the slot's position at start, at most where it is now; "0" before the fix)
    assert 0 < gls <= row[1]
