"""Request lines and framings aiohttp's parser (llhttp) reads but the engine's server
(sync_engine/http/parser_refusals.py) refuses, as the proxy does (proxy/http/protocol.py,
tests/proxy/test_server.py): each a JSON answer in an HTTP/1.1 status line, the connection
closed after it. An HTTP/0.9 line was answered `HTTP/0.9 200 OK` with the shape, `HTTP/2.0`
`HTTP/2.0 200 OK`, a `gzip, chunked` body read as plain chunked, and a chunked HTTP/1.0
request read."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.sync_engine.engine_harness import Engine

TARGET = b"/v1/shape?table=items&offset=-1"
BODY = b'{"where": "id > 1"}'
CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)


def make_items(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1'), (2, 't2')")


async def exchange(engine: Engine, data: bytes) -> tuple[bytes, dict[str, str], Any]:
    """Send raw bytes; the status line, headers and JSON body of the answer (the server
    closes after it, or the request says `Connection: close`)."""
    server = engine.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    if headers.get("transfer-encoding") == "chunked":
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return lines[0].encode(), headers, orjson.loads(body)


REFUSED = {
    "http-0.9": (
        b"GET " + TARGET + b"\r\n\r\n",
        400,
        "Malformed HTTP request: HTTP/0.9 is not supported",
    ),
    "http-0.9-named": (
        b"GET " + TARGET + b" HTTP/0.9\r\nHost: x\r\n\r\n",
        400,
        "Malformed HTTP request: HTTP/0.9 is not supported",
    ),
    "http-2.0": (
        b"GET " + TARGET + b" HTTP/2.0\r\nHost: x\r\n\r\n",
        505,
        "HTTP version not supported: the server speaks HTTP/1.0 and HTTP/1.1",
    ),
    "gzip-chunked": (
        b"POST " + TARGET + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n" + CHUNKED,
        501,
        "Unsupported Transfer-Encoding: only chunked is implemented",
    ),
    "chunked-http-1.0": (
        b"POST " + TARGET + b" HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED,
        400,
        "Malformed HTTP request: Transfer-Encoding in an HTTP/1.0 request",
    ),
    "connect": (  # (it was routed as the path `x:443`: a 404; the proxy's parser: a 400)
        b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        400,
        "Malformed HTTP request",
    ),
    "unknown-expectation": (  # (aiohttp's text `Unknown Expect: 200-ok`, the proxy's JSON)
        b"POST " + TARGET + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 200-ok\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
        417,
        "Only Expect: 100-continue is supported",
    ),
    "parser-refusal": (  # (refused by the parser itself: its status line was HTTP/1.0)
        b"GET " + TARGET + b" HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        400,
        "Malformed HTTP request",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_an_unserved_request_is_refused_in_json(engine: Engine, case: str) -> None:
    make_items(engine)
    data, status, message = REFUSED[case]
    line, headers, body = await exchange(engine, data)
    assert line.startswith(b"HTTP/1.1 %d " % status), line
    assert headers["content-type"].startswith("application/json")
    assert headers.get("connection") == "close"
    assert body == {"message": message}


@pytest.mark.parametrize(
    "data",
    [
        b"GET " + TARGET + b" HTTP/1.0\r\nHost: x\r\n\r\n",
        b"POST " + TARGET + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + CHUNKED,
        b"POST " + TARGET + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n" + CHUNKED,
        b"POST " + TARGET + b" HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY,
    ],
    ids=["get-http-1.0", "chunked", "Chunked", "post-http-1.0"],
)
async def test_served_requests_are_still_served(engine: Engine, data: bytes) -> None:
    make_items(engine)
    line, _, body = await exchange(engine, data)
    assert line.split(b" ")[1] == b"200", (line, body)
    messages = body["data"] if isinstance(body, dict) else body
    keys = sorted(m["key"] for m in messages if "key" in m)
    # (a POST's body read: the subset `id > 1`; a GET: the whole shape)
    subset = data.startswith(b"POST")
    assert (
        keys == ['"public"."items"/"2"']
        if subset
        else ['"public"."items"/"1"', '"public"."items"/"2"']
    )
