"""A subset query whose client went away is cancelled in Postgres, whatever its settings.

Abandoning the query only shut its socket: a backend waiting on a lock (or sorting) writes
nothing, so it noticed the closed socket only with `client_connection_check_interval` set on
the database (test_subset_client_gone.py sets it), which nobody sets by default. Without it
the query ran on to its end, or to --snapshot-timeout (5 minutes), holding a backend: a
client asking for costly subsets and hanging up filled the database's connections. Now the
engine also sends Postgres a cancel request for it. Real server path (no handler
cancellation, as `web.run_app` runs the engine), real Postgres, a lock held by another
connection standing for a slow query.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine
from tests.sync_engine.http.test_subset_client_gone import _ServerAsRun, _waiting_subsets


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    client = await aiohttp_client(_ServerAsRun(build_app(settings)))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_an_abandoned_subset_query_is_cancelled_without_connection_checks(
    engine: Engine,
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    assert engine.sql("SHOW client_connection_check_interval") == [("0",)]
    _, handle, offset = await engine.sync(table="items", log="changes_only")
    with psycopg.connect(engine.db_url) as locker:
        locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        server = engine.client.server
        await loop.sock_connect(sock, (server.host, server.port))
        target = (
            f"/v1/shape?table=items&log=changes_only&handle={handle}&offset={offset}"
            "&subset__where=id%20%3E%200"
        )
        await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await wait_until_async(
            lambda: _waiting_subsets(engine.db_url) == 1, message="the subset query waiting"
        )
        sock.close()  # (the client hangs up; the lock is still held)
        await wait_until_async(
            lambda: _waiting_subsets(engine.db_url) == 0,
            timeout=10,
            message="the abandoned subset query cancelled in Postgres",
        )
        locker.rollback()
