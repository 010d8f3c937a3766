"""SSE clients that stop reading cost the engine bounded memory, are cut after a while,
and leave nothing behind; a client going away is not an error in the log.

Each SSE stream wrote a whole transaction (read whole, then joined into one more copy) per
batch: a client that did not read held both in the transport's buffer, for as long as its
connection stayed open (aiohttp has no write timeout). Found by attack: 10 such clients and
four updates of a 20,000-row table took the engine from 82 to 983 MB. And a client gone
while its stream waited to write was logged at ERROR with a traceback (aiohttp raises
`ConnectionError("Connection lost")`, not the `ConnectionResetError` caught).

Real path: the engine's app in-process on a real server that does not cancel handlers
(`web.run_app`'s default), real Postgres, raw sockets with a small receive buffer that never
read. Memory is measured with tracemalloc (Python's own allocations, not RSS: the allocator's
fragmentation is not what is tested here).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from sync_engine.app import SOURCES, build_app
from sync_engine.http import live
from tests.support.engine_process import apply_messages
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

ROWS = 2_000
PAYLOAD = 4_000
CLIENTS = 4
#: Small log chunks: what a stream holds at most is about one of them, whatever the size of
#: a transaction (here ~ 8 MB, more than the kernel's socket buffers take: 2,000 updated rows of 4 KB).
CHUNK_BYTES = 128 * 1024


class _ServerAsRun(TestServer):
    """The test server with `web.run_app`'s `handler_cancellation=False`."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        chunk_bytes=CHUNK_BYTES,
        sse_timeout=120.0,  # (streams end by their reader, not by their time)
        sse_keepalive=60.0,
    )
    server = _ServerAsRun(build_app(settings))
    client = await aiohttp_client(server)
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


def _connections(engine: Engine, ports: set[int]) -> list[Any]:
    """The engine's connections from the client ports `ports` (not the test client's)."""
    out = []
    runner = engine.client.server.runner
    assert runner is not None and runner.server is not None  # (the engine is serving)
    for conn in runner.server.connections:
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer is not None and peer[1] in ports:
            out.append(conn)
    return out


async def _stalled_sse_clients(engine: Engine, handle: str, offset: str) -> list[socket.socket]:
    """`CLIENTS` SSE requests at the tip from sockets with a tiny receive buffer that never
    read, parked at the tip."""
    server = engine.client.server
    socks = []
    for i in range(CLIENTS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        target = (
            f"/v1/shape?table=big&handle={handle}&offset={offset}"
            f"&live=true&live_sse=true&cache-buster={i}"
        )
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(sock)
    await engine.until_parked(CLIENTS)
    return socks


async def _setup(engine: Engine) -> tuple[dict[str, dict[str, Any]], str, str]:
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    engine.sql(
        "INSERT INTO big SELECT i, repeat(md5(i::text), %s) FROM generate_series(1, %s) i",
        (PAYLOAD // 32, ROWS),
    )
    return await engine.sync(table="big")


def _update_all(engine: Engine) -> None:
    engine.sql("UPDATE big SET payload = md5(random()::text) || substr(payload, 33)")


async def test_sse_readers_that_stop_reading_hold_a_bounded_amount_and_free_it(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    rows, handle, offset = await _setup(engine)
    socks = await _stalled_sse_clients(engine, handle, offset)
    ports = {sock.getsockname()[1] for sock in socks}
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _update_all(engine)
        # every stream has its transaction and is blocked on its reader
        await wait_until_async(
            lambda: sum(c.writing_paused for c in _connections(engine, ports)) >= CLIENTS,
            timeout=60,
            message="every stream blocked on its reader",
        )
        # About a chunk a stream at most (it was the whole transaction twice: ~20 MB each,
        # for as long as the client stayed connected). The in-process replicator still holds
        # the transaction's changes until its write returns, which under load can be after the
        # streams have blocked: wait (briefly) for that, not for the streams, to let go.
        bound = CLIENTS * 3 * CHUNK_BYTES + 2 * 1024 * 1024
        deadline = asyncio.get_running_loop().time() + 15
        while (held := tracemalloc.get_traced_memory()[0] - base) >= bound:
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.1)
        assert held < bound, held
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            for sock in socks:
                sock.close()

            def released() -> bool:
                gc.collect()
                return tracemalloc.get_traced_memory()[0] - base < 2 * 1024 * 1024

            await wait_until_async(
                lambda: not _connections(engine, ports) and released(),
                timeout=30,
                message="connections and their memory let go",
            )
    finally:
        tracemalloc.stop()
        for sock in socks:
            sock.close()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors]
    # and the shape goes on: a client resuming from its offset gets every update
    assert await _resumed(engine, rows, handle, offset) == _expected(engine)


async def test_a_stalled_sse_reader_is_cut_and_resumes_losing_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "SEND_TIMEOUT", 1.0)
    rows, handle, offset = await _setup(engine)
    socks = await _stalled_sse_clients(engine, handle, offset)
    ports = {sock.getsockname()[1] for sock in socks}
    try:
        _update_all(engine)
        # the engine cuts them (they held their connection and handler for as long as
        # they stayed connected)
        await wait_until_async(
            lambda: not _connections(engine, ports), timeout=30, message="stalled readers cut"
        )
    finally:
        for sock in socks:
            sock.close()
    # a client resuming from the offset it had gets every change, each row's last value
    assert await _resumed(engine, rows, handle, offset) == _expected(engine)


def _expected(engine: Engine) -> dict[str, str]:
    return {str(i): p for i, p in engine.sql("SELECT id, payload FROM big")}


async def _resumed(
    engine: Engine, rows: dict[str, dict[str, Any]], handle: str, offset: str
) -> dict[str, str]:
    """The rows of a client that had `rows` at `offset` once it has followed on to the tip."""
    status, h, body = await engine.get(table="big", handle=handle, offset=offset)
    while True:
        assert status == 200, body
        apply_messages(rows, body)
        if "electric-up-to-date" in h:
            return {r["id"]: r["payload"] for r in rows.values()}
        status, h, body = await engine.get(table="big", handle=handle, offset=h["electric-offset"])
