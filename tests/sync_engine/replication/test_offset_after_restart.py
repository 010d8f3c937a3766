"""An offset a shape never issued, asked after an engine restart with no write since: a 409
must-refetch at once, as before the restart; a client's own offsets still work.

The engine knew how far it had read only from the commits it read since it started
(`global_lsn` 0), and PG15 streams no transaction when nothing is written to a published
table: until the next such write, `1_0` on a shape whose log starts later was "beyond
anything seen": it waited `out_of_bounds_wait` (10 s) and got a 400 `out of bounds`; after
the next write the same request was a 409 at once. Now the slot's confirmed position, read as
the stream starts, counts as seen (attack round 5, INFO).

Real path: the engine as a process, stopped and started again on the test cluster.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.support.engine_process import EngineProcess


async def _get(session: aiohttp.ClientSession, url: str, **q: str) -> tuple[int, Any, Any]:
    async with session.get(url + "/v1/shape", params=q) as r:
        return r.status, r.headers, await r.json()


@pytest.mark.timeout(120)
async def test_an_offset_never_issued_is_a_409_after_a_restart_with_no_writes(
    db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 0)")
    engine = EngineProcess(db_url, tmp_path / "data", "--long-poll-timeout", "20")
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            status, h, body = await _get(session, engine.url, table="items", offset="-1")
            assert status == 200 and body[0]["value"] == {"id": "1", "v": "0"}, body
            handle, own = h["electric-handle"], h["electric-offset"]
            while "electric-up-to-date" not in h:
                status, h, _ = await _get(
                    session, engine.url, table="items", handle=handle, offset=own
                )
                assert status == 200
                own = h["electric-offset"]  # (up to date: the snapshot's end)
            engine.stop()
            await asyncio.to_thread(engine.start)  # (nothing written since)

            # The log has no transaction: no real offset was ever issued for this shape.
            status, h, body = await _get(
                session, engine.url, table="items", handle=handle, offset="1_0"
            )
            assert status == 409, (status, body)  # (a 400 "out of bounds" after 10 s before)
            assert body == [{"headers": {"control": "must-refetch"}}]
            assert h["electric-handle"] == handle
            # A client's own offset: served; a live request there waits for the next write.
            status, h, body = await _get(
                session, engine.url, table="items", handle=handle, offset=own
            )
            assert status == 200 and h["electric-offset"] == own, (status, body)
            assert body[-1]["headers"]["control"] == "up-to-date"
            live = asyncio.create_task(
                _get(session, engine.url, table="items", handle=handle, offset=own, live="true")
            )
            await engine.until_parked(1)
            assert not live.done()
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("UPDATE items SET v = 2 WHERE id = 1")
            status, h, body = await live
            assert status == 200 and body[0]["value"] == {"id": "1", "v": "2"}, body
    finally:
        engine.stop()
