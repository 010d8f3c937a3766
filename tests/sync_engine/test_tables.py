"""The catalog connection (`Tables`) closed while a request is using it (a source stopped
or deleted under a held request that is creating a shape, say).

`close` used to close the connection under the query: the query's wait stayed registered
on a closed socket, so the request hung until the catalog timeout, and the next connection
given the same descriptor number (any source's) failed at once ("connection socket
closed"). A use after `close` opened a new connection nobody would close. Now `close` waits
for the work in progress (bounded by its own timeout) and refuses later work with a 503.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection

from sync_engine.errors import ServiceUnavailable
from sync_engine.shapes.registry import ShapeRegistry
from sync_engine.shapes.router import ShapeRouter
from sync_engine.tables import Tables


@pytest.mark.timeout(60)
async def test_closing_the_catalog_connection_under_a_query_lets_it_finish(
    db_url: str, tmp_path: Path
) -> None:
    registry = ShapeRegistry(tmp_path / "shapes", 1 << 20, ShapeRouter(), fsync=False)
    tables = Tables(db_url, "unused_publication", registry)
    started = asyncio.Event()

    async def slow(conn: AsyncConnection[Any]) -> int:
        started.set()
        cur = await conn.execute("SELECT 7 FROM pg_sleep(0.5)")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    work = asyncio.create_task(tables.on_catalog(slow))
    await started.wait()
    await tables.close()
    assert work.done() and work.result() == 7  # finished before the connection closed

    # The next connection (it may get the same descriptor number) works.
    async with await AsyncConnection.connect(db_url, autocommit=True) as conn:
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)

    async def quick(conn: AsyncConnection[Any]) -> None:
        raise AssertionError("no work after close")

    with pytest.raises(ServiceUnavailable):
        await tables.on_catalog(quick)
    assert tables._conn is None  # nothing reopened


@pytest.mark.timeout(90)
async def test_closing_under_a_long_catalog_query_cuts_it_off(db_url: str, tmp_path: Path) -> None:
    """A source stopped while its catalog connection runs something long (a `publish`
    waits up to 30 s for older transactions) stops within seconds: the work gets
    `CLOSE_GRACE` to finish, then is cancelled (its query too) and answered with a 503.
    `close` used to wait for the work's own timeout, so a stop (engine, pause, delete)
    could take 30 s, a request's timeout that had nothing to do with it."""
    registry = ShapeRegistry(tmp_path / "shapes", 1 << 20, ShapeRouter(), fsync=False)
    tables = Tables(db_url, "unused_publication", registry)
    started = asyncio.Event()

    async def long(conn: AsyncConnection[Any]) -> None:
        started.set()
        await conn.execute("SELECT pg_sleep(40)")

    work = asyncio.create_task(tables.on_catalog(long, timeout=60))
    await started.wait()
    closing = asyncio.create_task(tables.close())
    done, _ = await asyncio.wait({closing}, timeout=15)
    assert done, "close waited for the long query"
    closing.result()
    with pytest.raises(ServiceUnavailable, match="stopping"):
        await asyncio.wait_for(work, 15)
    # its query was cancelled in Postgres, not left running
    async with await AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(40)'"
            " AND state = 'active'"
        )
        assert await cur.fetchone() == (0,)
