"""A request head sent slowly (slowloris) must not hold its connection for as long as it
trickles.

The engine had no deadline for a request head: a client sending a header byte every few
seconds kept its connection (and a file descriptor) for as long as it liked, and one that
connected and sent nothing was only closed by aiohttp's keep-alive timer. A head now has
`REQUEST_HEAD_TIMEOUT` (30 s; 1 s here) from its first byte to arrive whole, or it is
answered as the proxy answers it (proxy/http/protocol.py): 408 JSON `{"message", "code":
"request_timeout"}`, then the connection is closed; a connection on which no request begins
within it is closed without an answer. Idle keep-alive connections between requests are
not cut by it.

Real sockets to the in-process engine, real Postgres behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync_engine.http import parser_refusals
from tests.sync_engine.http.raw_http import engine_port, parse_answer, read_answer


@pytest.fixture
async def port(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    monkeypatch.setattr(parser_refusals, "REQUEST_HEAD_TIMEOUT", 1.0)
    return await engine_port(aiohttp_client, db_url, tmp_path)


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """One byte of `data` every 0.2 s (then spaces of a header value), until closed."""
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(10_000):
            writer.write(data[i : i + 1] if i < len(data) else b"a")
            await writer.drain()
            await asyncio.sleep(0.2)


async def _trickled(port: int, method: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    trickle = asyncio.create_task(
        _trickle(writer, f"{method} /v1/health HTTP/1.1\r\nHost: engine\r\nX-Slow: ".encode())
    )
    try:
        # (far beyond the deadline: the old engine answered nothing while bytes came)
        answer = await asyncio.wait_for(reader.read(-1), 15)
    finally:
        trickle.cancel()
        writer.close()
    status, headers, body = parse_answer(answer)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    expected = orjson.dumps(
        {
            "message": "Request timeout: the request did not arrive in time",
            "code": "request_timeout",
        }
    )
    assert int(headers["content-length"]) == len(expected)
    assert body == (b"" if method == "HEAD" else expected)


async def _silent(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(-1), 15) == b""  # closed, nothing said
    finally:
        writer.close()


async def test_a_trickling_head_is_answered_408_and_a_silent_connection_closed(
    port: int,
) -> None:
    """(at once, on one engine: GET and HEAD heads trickling, a connection saying nothing)"""
    await asyncio.gather(_trickled(port, "GET"), _trickled(port, "HEAD"), _silent(port))


async def test_idle_keep_alive_and_quick_requests_are_untouched(port: int) -> None:
    """A connection idle between requests longer than the head deadline stays usable; a
    head sent in pieces within the deadline is answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for pause in (0.0, 1.5):
            await asyncio.sleep(pause)
            writer.write(b"GET /v1/health HTTP/1.1\r\n")
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(b"Host: engine\r\n\r\n")
            await writer.drain()
            answer = await read_answer(reader)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        writer.close()
