"""A subset request whose client goes away abandons its query in Postgres.

The query ran on to its end (or to `--snapshot-timeout`, 5 minutes by default) with nobody to
answer, holding a backend and a thread of the subset executor: a client that asks for a costly
subset and hangs up, again and again, filled both. Shutting the query's socket alone was seen
by a backend waiting on a lock only with `client_connection_check_interval` set on the
database, which nobody sets by default; the engine also sends Postgres a cancel request, and
the test runs with and without that setting. Real path: the engine's app on a real server
that does not cancel handlers (`web.run_app`'s default), real Postgres; the query waits on a
lock held by another connection, as a slow one would run.
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
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine


class _ServerAsRun(TestServer):
    """The test server with `web.run_app`'s `handler_cancellation=False`."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    client = await aiohttp_client(_ServerAsRun(build_app(settings)))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


def _waiting_subsets(db_url: str) -> int:
    """Backends of the engine waiting on a lock (the subset query behind the test's lock)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("check_interval", [None, 100], ids=["no-connection-checks", "checks"])
async def test_a_subset_whose_client_left_is_abandoned_in_postgres(
    engine: Engine, check_interval: int | None
) -> None:
    # Postgres notices a closed socket of a backend waiting on a lock only with
    # client_connection_check_interval set, which nobody sets by default: the engine also
    # sends a cancel request, so the query goes either way.
    if check_interval is not None:
        engine.sql(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET client_connection_check_interval"
            f" = {check_interval}', current_database()); END $$"
        )
    else:
        assert engine.sql("SHOW client_connection_check_interval") == [("0",)]
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
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
        sock.close()  # (the client hangs up)
        await wait_until_async(
            lambda: _waiting_subsets(engine.db_url) == 0,
            timeout=10,
            message="the abandoned subset query gone from Postgres",
        )
        locker.rollback()
