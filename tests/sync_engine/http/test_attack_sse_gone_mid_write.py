"""An SSE client that goes away while the engine waits to write to it is a client gone, not a
failure: no ERROR line, no traceback.

Found by the attack probe (10:53): a client that stops reading while a big transaction is
streamed to it leaves the handler waiting in aiohttp's drain; when it then closes, aiohttp
raises `ConnectionError("Connection lost")`, a sibling of the `ConnectionResetError` the SSE
handler caught, so every such disconnect was logged at ERROR with a ~25-line traceback. Any
client could fill the engine's log with them and make alerting on ERROR useless.

Real path: the engine's app in-process on a real server that does not cancel handlers (as
`web.run_app` serves it), real Postgres, a raw socket with a tiny receive buffer as the client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import AppRunner

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

#: Rows of ~1 KB in the one transaction streamed to the client: far more than the socket
#: buffers of a client that reads nothing take, so the engine's write waits in drain.
ROWS = 8000


class _ServerAsRun(TestServer):
    """The test server with `web.run_app`'s `handler_cancellation=False`."""

    async def _make_runner(self, **kwargs: Any) -> AppRunner:
        kwargs["handler_cancellation"] = False
        return cast(AppRunner, await super()._make_runner(**kwargs))


@pytest.fixture
async def served(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Engine, _ServerAsRun]]:
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    server = _ServerAsRun(build_app(settings))
    client = await aiohttp_client(server)
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data"), server


def _connections(server: _ServerAsRun) -> set[Any]:
    """The server's open connections (aiohttp's request handlers)."""
    runner = server.runner
    assert runner is not None and runner.server is not None
    return set(runner.server.connections)


def _pending_writes(server: _ServerAsRun) -> int:
    """Bytes the engine has queued for its clients and the kernel has not taken."""
    total = 0
    for handler in _connections(server):
        transport = handler.transport
        if transport is not None and not transport.is_closing():
            total += transport.get_write_buffer_size()
    return total


async def test_an_sse_client_gone_while_the_engine_waits_to_write_is_not_an_error(
    served: tuple[Engine, _ServerAsRun], caplog: pytest.LogCaptureFixture
) -> None:
    engine, server = served
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, payload text)")
    _rows, handle, offset = await engine.sync(table="items")

    before = _connections(server)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    target = f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true&live_sse=true"
    await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: engine\r\n\r\n".encode())
    await engine.until_parked()
    sse = _connections(server) - before
    assert len(sse) == 1

    caplog.set_level(logging.DEBUG, logger="sync_engine")
    engine.sql(
        "INSERT INTO items SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, %s) g",
        (ROWS,),
    )
    # The transaction is being written to a client that reads nothing: the engine waits.
    await wait_until_async(lambda: _pending_writes(server) > 0, message="a write waiting")
    sock.close()
    await wait_until_async(
        lambda: not sse & _connections(server),
        message="the SSE connection let go",
    )

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
