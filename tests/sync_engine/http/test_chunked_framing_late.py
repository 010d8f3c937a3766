"""A chunked body whose framing breaks in a later packet is refused at once (400), as when the
bad bytes come in the same packet as the head (attack 07:40): the parser's error was queued
behind the request reading that body, which waited for the rest of it until the body's
deadline and answered 408 (30 s later). The proxy and Electric's Bandit answer 400 at once.

Real socket to the in-process engine; the bad bytes are sent after the first packet was read.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.sync_engine.http.raw_http import engine_port, parse_answer, read_answer

HEAD = (
    b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize("size", [16, 65536])
async def test_bad_chunk_framing_in_a_later_packet_is_a_400_at_once(
    aiohttp_client: Any, db_url: str, tmp_path: Path, size: int
) -> None:
    port = await engine_port(aiohttp_client, db_url, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HEAD + b"%x\r\n" % size + b"x" * size)
        await writer.drain()
        await asyncio.sleep(0.3)  # (read by the engine as a packet of its own)
        writer.write(b"x" * 100)  # where the chunk's CRLF must be
        await writer.drain()
        # (the old engine: 408 Request Timeout once the body's 30 s deadline passed)
        status, headers, body = parse_answer(await read_answer(reader, timeout=60))
        assert status.startswith("HTTP/1.1 400 "), (status, body)
        assert headers["content-type"].startswith("application/json"), headers
        assert isinstance(orjson.loads(body)["message"], str)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then the connection closes
    finally:
        writer.close()
