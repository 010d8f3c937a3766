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

import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.snapshot import scheduler
from tests.faults.costly import COSTLY, busy_backends, wide_items
from tests.sync_engine.engine_harness import SETTINGS


@pytest.fixture
async def port(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[int]:
    monkeypatch.setattr(scheduler, "ABANDONED_AFTER", 1.0, raising=False)
    monkeypatch.setattr(scheduler, "ABANDON_CHECK", 0.2, raising=False)
    wide_items(db_url, 6000)
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", snapshot_timeout=0.0
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    assert client.port is not None
    yield client.port


def _request(**params: str) -> bytes:
    query = urlencode({"table": "items", "offset": "-1", "where": COSTLY, **params})
    return f"GET /v1/shape?{query} HTTP/1.1\r\nHost: engine\r\n\r\n".encode()


async def _send(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def _until_busy(db_url: str, why: str) -> None:
    """Until a snapshot query with COSTLY in it runs in Postgres (`why`: the failure)."""
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(busy_backends, db_url):
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_a_snapshot_whose_client_left_is_cancelled(port: int, db_url: str) -> None:
    request = _request()
    _, writer = await _send(port, request)
    await _until_busy(db_url, "the snapshot query never ran")
    writer.close()  # the client goes away
    left = time.monotonic()
    while await asyncio.to_thread(busy_backends, db_url):
        # (the query alone runs for many times this on the old code)
        assert time.monotonic() - left < 20, "the abandoned snapshot query still runs"
        await asyncio.sleep(0.1)
    # a later request for the same shape starts over (its snapshot runs again)
    _, writer = await _send(port, request)
    await _until_busy(db_url, "the shape was not made again")
    writer.close()


@pytest.mark.timeout(60)
async def test_a_request_coming_as_the_cancel_goes_out_is_told_to_refetch(
    port: int, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request for the shape after the engine decided to cancel its batch, before the batch
    ended, is not given the cancel's 503 (and a Retry-After for a query it never asked to
    stop: the project's CI of bcce732): a 409 naming the shape made again, whose snapshot
    runs at once."""
    decided = asyncio.Event()
    send_cancel = scheduler._Watch._send_cancel

    async def slow_cancel(watch: Any) -> None:
        decided.set()
        await asyncio.sleep(0.5)  # the request below comes meanwhile
        await send_cancel(watch)

    monkeypatch.setattr(scheduler._Watch, "_send_cancel", slow_cancel)
    request = _request()
    _, writer = await _send(port, request)
    await _until_busy(db_url, "the snapshot query never ran")
    writer.close()  # the client goes away
    await asyncio.wait_for(decided.wait(), 30)
    reader, writer = await _send(port, request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    writer.close()
    status = head.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 409 Conflict", head
    handle = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"electric-handle:")
    )
    # The shape named is being made: its snapshot query runs (no request needed for that)
    # and the refetch waits for it rather than starting another.
    await _until_busy(db_url, "the shape named by the 409 is not being made")
    _, writer = await _send(port, _request(handle=handle.decode()))
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(busy_backends, db_url) == 1
    writer.close()
