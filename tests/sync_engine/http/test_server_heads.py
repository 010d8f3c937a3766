"""The heads of the engine's answers, read raw: what the proxy's say (sync_engine/http/
parser_refusals.py `_Request`, live.py), nothing internal.

Found: every answer said `Server: Python/3.11 aiohttp/3.x` (the proxy's and nginx's none);
SSE answers and preflights said `connection: keep-alive` in HTTP/1.1 (the proxy none) and to
HTTP/1.0 clients whose connection then closed; an HTTP/1.0 client that asked for keep-alive
had its SSE stream's connection kept open after the stream ended, its body's only end (it
never saw the end); SSE answers showed direct clients the internal `shapegate-log-end`
header, `max(client offset, log end)`, so a forged offset past the log's end was announced
as the log's end (to the proxy's fan-out, a wrong transaction end). The log's end is now the
third field of the SSE answer's ETag, the log's own last entry whatever the client sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine whose SSE streams end after 1 s."""
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data", sse_timeout=1.0)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def raw(
    engine: Engine, data: bytes, *, until_closed: bool = True
) -> tuple[str, dict[str, str], bytes]:
    """The status line, headers (lower-case names) and rest of the answer to `data`: all of
    it until the server closes, else the head alone."""
    server = engine.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        if until_closed:
            answer = await asyncio.wait_for(reader.read(), 20)
        else:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    finally:
        writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        assert name.lower() not in headers, f"{name} twice"
        headers[name.lower()] = value
    return lines[0], headers, rest


async def _synced(engine: Engine) -> tuple[str, str]:
    """A shape whose log holds one transaction of two rows; its handle and log end."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1')")
    _, handle, _ = await engine.sync(table="items")
    engine.sql("INSERT INTO items VALUES (2, 't2'), (3, 't3')")
    synced: list[str] = []

    async def in_the_log() -> bool:
        _, h, offset = await engine.sync(table="items")
        synced[:] = [h, offset]
        return not offset.startswith("0_")

    await wait_until_async(in_the_log, message="the insert in the shape's log")
    return synced[0], synced[1]


async def test_an_sse_answer_names_the_logs_end_not_a_forged_offset(engine: Engine) -> None:
    handle, log_end = await _synced(engine)
    tx, _, op = log_end.partition("_")
    forged = f"{tx}_{int(op) + 50}"  # past the log's end, within the transaction's LSN
    target = f"/v1/shape?table=items&handle={handle}&offset={forged}&live=true&live_sse=true"
    line, headers, _ = await raw(
        engine, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), until_closed=False
    )
    assert line == "HTTP/1.1 200 OK"
    assert headers["electric-offset"] == forged
    assert headers["etag"].strip('"').split(":")[:3] == [handle, forged, log_end]
    assert not [name for name in headers if name.startswith("shapegate-")]
    assert "server" not in headers
    assert "connection" not in headers  # (HTTP/1.1 keeps it open by default)


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "plain"])
async def test_an_http_1_0_sse_stream_ends_with_its_connection(
    engine: Engine, keep_alive: bool
) -> None:
    """Its body has no length: the connection's close is its end."""
    handle, log_end = await _synced(engine)
    target = f"/v1/shape?table=items&handle={handle}&offset={log_end}&live=true&live_sse=true"
    asked = "Connection: keep-alive\r\n" if keep_alive else ""
    line, headers, body = await raw(engine, f"GET {target} HTTP/1.0\r\n{asked}\r\n".encode())
    assert line == "HTTP/1.0 200 OK"
    assert "connection" not in headers
    assert "server" not in headers
    assert body.startswith(b": keep-alive") or body == b""


@pytest.mark.parametrize(
    ("version", "asked", "expected"),
    [
        ("1.1", "", None),
        ("1.1", "Connection: close\r\n", "close"),
        ("1.0", "", None),
        ("1.0", "Connection: keep-alive\r\n", "keep-alive"),
    ],
)
async def test_a_preflight_says_what_its_connection_does(
    engine: Engine, version: str, asked: str, expected: str | None
) -> None:
    data = (
        f"OPTIONS /v1/shape?table=items HTTP/{version}\r\nHost: x\r\n{asked}"
        "Origin: https://a.example\r\nAccess-Control-Request-Method: GET\r\n\r\n"
    ).encode()
    if expected == "keep-alive" or (version == "1.1" and not asked):
        data += b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    line, headers, _ = await raw(engine, data)
    assert line.startswith(f"HTTP/{version} 204 ")
    assert headers.get("connection") == expected
    assert "server" not in headers


async def test_refusals_and_answers_name_no_server(engine: Engine) -> None:
    for data in (
        b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nBad Header: 1\r\n\r\n",
        b"GET /v1/shape HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/shape?table=nosuch&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        _, headers, _ = await raw(engine, data)
        assert "server" not in headers, data


async def test_what_is_echoed_is_what_came(engine: Engine) -> None:
    """An `Origin` or `x-request-id` whose bytes are not UTF-8 was echoed with those bytes
    dropped (aiohttp decodes them to lone surrogates, its writer leaves them out): `Origin:
    http://<E9>.example` got `access-control-allow-origin: http://.example`, an origin
    nobody sent (twin, LOW). Such an Origin is now answered `*`, as none is; such an id is
    replaced. UTF-8 ones are echoed as they came."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY)")

    async def head(origin: bytes, request_id: bytes) -> dict[str, str]:
        data = (
            b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nOrigin: " + origin
            + b"\r\nx-request-id: " + request_id + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        line, headers, _ = await raw(engine, data)
        assert line == "HTTP/1.1 200 OK", line
        return headers

    # (`raw` decodes heads as latin-1: one char a byte)
    headers = await head(b"http://\xe9.example", b"req-\xe9" + b"x" * 20)
    assert headers["access-control-allow-origin"] == "*", headers
    assert "\xe9" not in headers["x-request-id"] and len(headers["x-request-id"]) == 32
    utf8 = "http://é.example".encode()
    headers = await head(utf8, "req-é".encode() + b"x" * 20)
    assert headers["access-control-allow-origin"].encode("latin-1") == utf8, headers
    assert headers["x-request-id"].encode("latin-1") == "req-é".encode() + b"x" * 20
