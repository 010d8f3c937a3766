"""A request body that trickles in must not hold its connection for as long as it trickles.

A POST /v1/shape with a valid secret and `Content-Length: 100000` whose body came one byte
every few seconds was held as long as the client kept trickling (over 120 s seen): the
connection cap counts a connection whose request is being handled as busy, so a handful of
them locked every other client out. The body now has `REQUEST_READ_TIMEOUT` (30 s; 1 s
here) from its head to arrive in full, or the request is answered as the proxy answers it:
408 JSON `{"message", "code": "request_timeout"}`, then the connection is closed.

Real socket to the in-process engine, real Postgres behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.http import server
from tests.sync_engine.engine_harness import SETTINGS

SECRET = "a-valid-secret-for-the-test"


@pytest.fixture
async def port(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[int]:
    monkeypatch.setattr(server, "REQUEST_READ_TIMEOUT", 1.0)
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data", secret=SECRET)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    assert client.port is not None
    yield client.port


async def _trickle(writer: asyncio.StreamWriter) -> None:
    """One byte of the body every 0.2 s, until the engine closes the connection."""
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the engine sent before closing. A byte of the trickle that reaches the closed
    socket makes the kernel answer with a reset, which may come before this side has read
    the close; `read(-1)` then raises and drops what it had read: the answer is kept."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            answer += chunk
    return answer


async def test_a_trickling_body_is_answered_408_and_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/shape?table=items&offset=-1&secret={SECRET} HTTP/1.1\r\n"
        "Host: engine\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    writer.write(head.encode())
    trickle = asyncio.create_task(_trickle(writer))
    try:
        # (far beyond the deadline: the old engine answered nothing while bytes came)
        answer = await asyncio.wait_for(_read_until_closed(reader), 20)
    finally:
        trickle.cancel()
        writer.close()
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 408 Request Timeout"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    assert orjson.loads(body) == {
        "message": "Request timeout: the request did not arrive in time",
        "code": "request_timeout",
    }


async def test_an_unread_trickling_body_is_dropped_quietly(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A request answered without its body being read (a wrong secret: 401) whose body then
    trickles past the deadline: the connection is closed, and the deadline is no error in
    the log (aiohttp reads such a body on for a while before closing, and its deadline
    came as an unhandled exception there)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /v1/shape?table=items&offset=-1&secret=wrong HTTP/1.1\r\n"
        "Host: engine\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    writer.write(head.encode())
    trickle = asyncio.create_task(_trickle(writer))
    try:
        answer = await asyncio.wait_for(_read_until_closed(reader), 20)
    finally:
        trickle.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
