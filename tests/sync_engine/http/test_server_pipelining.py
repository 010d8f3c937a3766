"""Pipelined requests on one connection, raw bytes: each complete request is answered, in order,
before a malformed one behind it gets its 400 (as the proxy does: tests/proxy/
test_transparency_cases_real.py::test_pipelined_requests_are_answered_alike).

aiohttp's parser (llhttp) parses every request of a packet in one call and raised for the
malformed one with the valid ones before it still inside it: a valid request followed in the
same packet by a malformed one got no answer, only the 400 for the second.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.sync_engine.engine_harness import Engine

SHAPE = b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n"
MALFORMED = {
    "bad-header": b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nBad Header: 1\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    "bad-chunked": b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "long-target": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in `raw`, each (status, headers, body): Content-Length or
    chunked bodies."""
    out = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, head
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size, _, raw = raw.partition(b"\r\n")
                n = int(size, 16)
                body, raw = body + raw[:n], raw[n + 2 :]
                if n == 0:
                    break
        else:
            n = int(headers.get("content-length", "0"))
            body, raw = raw[:n], raw[n:]
        out.append((status, headers, body))
    return out


async def exchange(engine: Engine, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `data` in one write; every response until the server closes."""
    server = engine.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    return responses(raw)


def keys(body: bytes) -> list[str]:
    answer = orjson.loads(body)
    messages = answer["data"] if isinstance(answer, dict) else answer
    return sorted(m["key"] for m in messages if "key" in m)


async def _items(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1'), (2, 't2')")


@pytest.mark.parametrize("malformed", list(MALFORMED))
async def test_a_request_before_a_malformed_one_in_the_same_packet_is_answered(
    engine: Engine, malformed: str
) -> None:
    await _items(engine)
    answers = await exchange(engine, SHAPE + SHAPE + MALFORMED[malformed])
    assert [status for status, _, _ in answers] == [200, 200, 414 if "long" in malformed else 400]
    for _, _, body in answers[:2]:
        assert keys(body) == ['"public"."items"/"1"', '"public"."items"/"2"']
    _, headers, body = answers[2]
    assert headers["connection"] == "close"
    assert headers["content-type"].startswith("application/json")
    assert "message" in orjson.loads(body)


async def test_many_pipelined_requests_are_all_answered_in_order(engine: Engine) -> None:
    """More than the server queues at once (it pauses reading at 32), one packet."""
    await _items(engine)
    tagged = [
        b"GET /v1/shape?table=items&offset=-1&where=id%%3D%d HTTP/1.1\r\nHost: x\r\n\r\n"
        % (1 + i % 2)
        for i in range(50)
    ]
    last = b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answers = await exchange(engine, b"".join(tagged) + last)
    assert len(answers) == 51
    for i, (status, _, body) in enumerate(answers[:50]):
        assert status == 200
        assert keys(body) == [f'"public"."items"/"{1 + i % 2}"']
    assert answers[50][0] == 200


async def test_requests_split_across_packets_are_answered(engine: Engine) -> None:
    """A pipeline whose second request arrives in pieces, after the first was answered."""
    await _items(engine)
    server = engine.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        closing = SHAPE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        writer.write(SHAPE + closing[:20])
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert first.startswith(b"HTTP/1.1 200 ")
        writer.write(closing[20:])
        await writer.drain()
        raw = first + await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    assert [status for status, _, _ in responses(raw)] == [200, 200]


async def test_a_declined_upgrade_closes_its_connection_after_its_answer(engine: Engine) -> None:
    """Answered as plain HTTP, `Connection: close`, nothing after it read (as the proxy)."""
    await _items(engine)
    for upgrade in (b"Connection: Upgrade\r\nUpgrade: websocket", b"Connection: Upgrade, "
                    b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ"):  # fmt: skip
        asking = SHAPE.replace(b"\r\n\r\n", b"\r\n" + upgrade + b"\r\n\r\n")
        answers = await exchange(engine, SHAPE + asking + SHAPE)
        assert [status for status, _, _ in answers] == [200, 200]
        assert answers[1][1]["connection"] == "close"
