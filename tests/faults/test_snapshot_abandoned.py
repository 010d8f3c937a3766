"""A snapshot no client waits for any more is cancelled in Postgres.

A where clause costly per row (a balanced tree of concatenations) kept its Postgres backend
busy until the query ended, however long after its client had gone: each such request, sent
and dropped at once, pinned a backend (up to `--max-initial-syncs`, for every source on that
Postgres). Now a batch whose unfinished snapshots no request has waited for or asked for in
`ABANDONED_AFTER` seconds (30; 1 here) is cancelled: the backend is free, the shape is
discarded, and a later request for it starts over.

Real sockets to the in-process engine (for the short deadline), real Postgres; the
snapshot-timeout is off, so only the abandonment can stop the query, which runs for many
times the deadline on the old code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.snapshot import scheduler
from tests.sync_engine.engine_harness import SETTINGS


def _concat(leaves: int) -> str:
    if leaves == 1:
        return "name"
    return f"({_concat(leaves // 2)}||{_concat(leaves - leaves // 2)})"


COSTLY = f"length({_concat(500)}) > 0"


def _busy(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'active' AND pid <> pg_backend_pid() AND query LIKE %s",
            ("%length(%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
async def port(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[int]:
    monkeypatch.setattr(scheduler, "ABANDONED_AFTER", 1.0, raising=False)
    monkeypatch.setattr(scheduler, "ABANDON_CHECK", 0.2, raising=False)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT g, repeat('a', 5000) FROM generate_series(1, 6000) g"
        )
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", snapshot_timeout=0.0
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    assert client.port is not None
    yield client.port


@pytest.mark.timeout(60)
async def test_a_snapshot_whose_client_left_is_cancelled(port: int, db_url: str) -> None:
    query = urlencode({"table": "items", "offset": "-1", "where": COSTLY})
    request = f"GET /v1/shape?{query} HTTP/1.1\r\nHost: engine\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(_busy, db_url):
        assert time.monotonic() < deadline, "the snapshot query never ran"
        await asyncio.sleep(0.1)
    writer.close()  # the client goes away
    left = time.monotonic()
    while await asyncio.to_thread(_busy, db_url):
        # (the query alone runs for many times this on the old code)
        assert time.monotonic() - left < 5, "the abandoned snapshot query still runs"
        await asyncio.sleep(0.1)
    # a later request for the same shape starts over (its snapshot runs again)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(_busy, db_url):
        assert time.monotonic() < deadline, "the shape was not made again"
        await asyncio.sleep(0.1)
    writer.close()
