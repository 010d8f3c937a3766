"""An SSE reader that stops reading behind a backlog holds a bounded piece of the log, not the
rest of a log chunk.

The stream read the log a chunk at a time (`chunk_bytes`, 10 MB by default) and wrote it in
64 KB pieces: a reader that stopped held the unwritten rest of the chunk until it was cut after
`SEND_TIMEOUT` (60 s); a thousand of them, 10 GB. It now reads `live.READ_BYTES` at a time.
Real path: the engine's app on a real socket, real Postgres, a raw socket with a small receive
buffer that never reads; memory measured with tracemalloc (Python's own allocations).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

#: One log chunk of 4 MB holds the whole backlog.
CHUNK_BYTES = 4 << 20


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        chunk_bytes=CHUNK_BYTES,
        sse_timeout=120.0,  # (the stream ends by its reader, not by its time)
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_a_stalled_sse_reader_holds_a_piece_of_the_log_not_a_chunk(engine: Engine) -> None:
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    engine.sql("INSERT INTO big VALUES (0, 'x')")
    _, handle, offset = await engine.sync(table="big")
    # a backlog of ~3 MB in small transactions, all in the first log chunk
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        for i in range(1, 301):
            conn.execute(
                "INSERT INTO big SELECT g, repeat(md5(g::text), 312) FROM generate_series(%s::int, %s::int) g",
                (i * 10, i * 10 + 9),
            )
    rows, _, tip = await engine.sync(table="big")
    await engine.follow_live(rows, handle, tip, "3009", table="big")  # (all of it in the log)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    server = engine.client.server
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await loop.sock_connect(sock, (server.host, server.port))
        target = f"/v1/shape?table=big&handle={handle}&offset={offset}&live=true&live_sse=true"
        await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        port = sock.getsockname()[1]

        def blocked() -> bool:
            runner = engine.client.server.runner
            assert runner is not None and runner.server is not None  # (the engine is serving)
            for conn in runner.server.connections:
                peer = conn.transport.get_extra_info("peername") if conn.transport else None
                if peer is not None and peer[1] == port:
                    return bool(conn.writing_paused)
            return False

        await wait_until_async(blocked, timeout=30, message="the stream blocked on its reader")
        await asyncio.sleep(0.2)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        # a read of 256 KB and a piece besides the buffers (it was the chunk's rest: ~3 MB)
        print("HELD", held)
        assert held < 1_200_000, held
    finally:
        tracemalloc.stop()
        sock.close()
