"""An SSE client that goes away while its stream waits to write is no error in the log.

A client gone while the stream waited for room to write (it had stopped reading) makes
aiohttp raise a plain `ConnectionError("Connection lost")` into the write
(aiohttp/base_protocol.py, `connection_lost` with an error while writing is paused), a
sibling of the `ConnectionResetError` the stream caught: it was logged at ERROR with a
traceback per client ("SSE stream of shape ... failed": 66 in one of attack's probes), which
any client can cause and which hides real failures. It is the client going away: DEBUG.

The stream's write is made to fail as aiohttp fails it (the moment a reset lands while a
write is paused is a race a test cannot hit every time); the request is real, through the
in-process engine, real Postgres behind it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from sync_engine.http import live
from tests.sync_engine.engine_harness import Engine


async def test_an_sse_client_gone_while_its_stream_waits_is_no_error(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 'a')")
    _, handle, offset = await engine.sync(table="items")

    async def lost(*args: Any) -> None:
        raise ConnectionError("Connection lost")  # (aiohttp's, from a paused write)

    monkeypatch.setattr(live, "_stream", lost)
    status, _, _ = await engine.get(
        table="items", handle=handle, offset=offset, live="true", live_sse="true"
    )
    assert status == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_an_sse_client_that_stops_reading_is_cut(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops reading held its stream, and the batch waiting to be written
    (tens of MB for a big transaction: attack measured 50-75 MB per such client), for as
    long as its connection lived. A write that waits `SEND_TIMEOUT` (60 s; 1 s here) for
    the client to read cuts the stream, as the proxy does."""
    monkeypatch.setattr(live, "SEND_TIMEOUT", 1.0, raising=False)
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    engine.sql("INSERT INTO big VALUES (0, 'x')")
    _, handle, offset = await engine.sync(table="big")
    host, port = "127.0.0.1", engine.client.port
    assert port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(
        sock,
        f"GET /v1/shape?table=big&offset={offset}&handle={handle}&live=true&live_sse=true"
        " HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    )
    try:
        await asyncio.sleep(0.5)
        # ~20 MB in one transaction: far more than the sockets' buffers hold
        engine.sql("INSERT INTO big SELECT g, repeat('x', 2000) FROM generate_series(1, 10000) g")
        await asyncio.sleep(4.0)  # the client reads nothing meanwhile
        received = 0
        async with asyncio.timeout(20):  # (the old engine: the stream waits for ever)
            while chunk := await loop.sock_recv(sock, 1 << 20):
                received += len(chunk)
        assert received < 15_000_000  # cut: not the whole transaction
    except ConnectionResetError:
        pass  # (cut with data unread: as good)
    finally:
        sock.close()
