"""A request answered before its declared body came (a GET with `Content-Length: 10` and no
body): the engine waits for that body until the body's own deadline (`REQUEST_READ_TIMEOUT`
from the request's head, 30 s), as the proxy does, then closes the connection. A body that
comes within it is read and dropped and the connection serves the next request.

aiohttp closed such a connection 10 s after the answer (its `lingering_time`), the proxy at
30 s, Electric's Bandit at 60 s (its socket read timeout): the engine and the proxy now
agree, and no request holds a connection busy longer than a body may take (not Bandit's 60 s).

aiohttp's 10 s against the 30 s deadline cannot be shown in a few seconds: here both are
shortened, in the same order (aiohttp's lingering 0.3 s, the deadline 2 s). Real socket to
the in-process engine.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from sync_engine.http import server
from tests.sync_engine.http.raw_http import engine_port, read_answer

GET = b"GET /v1/health HTTP/1.1\r\nHost: engine\r\n"


class _Server(TestServer):
    """As `web.run_app` serves the engine (no handler cancellation), with aiohttp's
    lingering shortened."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        kwargs["lingering_time"] = 0.3
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def port(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    monkeypatch.setattr(server, "REQUEST_READ_TIMEOUT", 2.0)
    return await engine_port(aiohttp_client, db_url, tmp_path, _Server)


async def _late_body_keeps_the_connection(port: int, framing: bytes, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(GET + framing + b"\r\n")
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(1.0)  # past aiohttp's lingering here, within the body's deadline
        writer.write(body + GET + b"\r\n")
        # (the old engine had closed the connection: no second answer)
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()


async def _no_body_closes_at_the_deadline(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(GET + b"Content-Length: 10\r\n\r\n")
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the engine
    finally:
        writer.close()


async def test_an_answered_request_waits_for_its_body_until_the_deadline(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A late body within the deadline (of a declared length, or chunked) keeps the
    connection; one that never comes closes it at the deadline, quietly (connections at once)."""
    await asyncio.gather(
        _late_body_keeps_the_connection(port, b"Content-Length: 10\r\n", b"0123456789"),
        # (its end and the next request in one packet: that request waited for another one)
        _late_body_keeps_the_connection(port, b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        _no_body_closes_at_the_deadline(port),
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
