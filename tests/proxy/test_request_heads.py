"""How the proxy reads a request's header block (`proxy.http.protocol`): the engine gets the
values without their trailing blanks, a NUL in a value or a repeated `Host` is a 400, and
bytes that are not UTF-8 go on as they came."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from proxy.config.loader import build_config


async def _raw(proxy: Any, head: bytes) -> tuple[int, bytes]:
    """One request on its own connection: the status and the body (the connection closes)."""
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    top, _, body = raw.partition(b"\r\n\r\n")
    return int(top.split(b" ", 2)[1]), body


def _head(*headers: bytes) -> bytes:
    lines = [b"GET /v1/shape?table=items&offset=-1 HTTP/1.1", b"Host: proxy.test", *headers]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


@pytest.fixture
async def own_requests(
    make_proxy: Callable[..., Any], config_data: dict[str, Any], environ: dict[str, str]
) -> Any:
    """A proxy whose every engine request is one client's own (no collapsing, no cache): it
    carries the client's User-Agent and traceparent, which a request other clients may join
    does not (test_collapse_cache)."""
    config = {**config_data, "collapse": False, "cache": {"max_bytes": 0}}
    return await make_proxy(build_config(config, environ))


async def test_trailing_blanks_are_dropped_from_every_value(own_requests: Any) -> None:
    proxy = own_requests
    token = proxy.tokens.make(sub="alice", org_id="org-1")
    status, _ = await _raw(
        proxy,
        _head(
            b"Authorization: Bearer " + token.encode() + b" \t ",
            b"User-Agent: agent one\t",
            b"Accept: */*  ",
            b"If-None-Match:",
            b"Traceparent: 00-abc-def-01 ",
        ),
    )
    assert status == 200
    seen = proxy.engine.requests[-1].headers
    assert seen["User-Agent"] == "agent one"
    assert seen["Accept"] == "*/*"
    assert seen["Traceparent"] == "00-abc-def-01"


async def test_a_value_that_is_not_utf8_goes_on_as_its_bytes(own_requests: Any) -> None:
    proxy = own_requests
    token = proxy.tokens.make(sub="alice", org_id="org-1")
    auth = b"Authorization: Bearer " + token.encode()
    status, _ = await _raw(proxy, _head(auth, b"User-Agent: caf\xe9 \xff  "))
    assert status == 200
    seen = proxy.engine.requests[-1].headers
    assert seen["User-Agent"].encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"


async def test_a_nul_in_a_value_or_a_second_host_is_a_400(proxy: Any) -> None:
    token = proxy.tokens.make(sub="alice", org_id="org-1")
    auth = b"Authorization: Bearer " + token.encode()
    for head in (
        _head(auth, b"User-Agent: a\x00b"),
        _head(auth, b"Host: other.test"),
        _head(auth, b"host: other.test"),
    ):
        before = len(proxy.engine.requests)
        status, body = await _raw(proxy, head)
        assert status == 400, head
        assert "message" in json.loads(body)
        assert len(proxy.engine.requests) == before  # nothing reached the engine


async def test_a_refused_head_is_answered_and_closed_without_a_reset(proxy: Any) -> None:
    """A client still sending a head past the limit (500 KB of one header line) reads the 431
    and then the close (FIN), not a reset: the proxy reads and drops what it still sends, up
    to `LINGER_BYTES`, before closing. Closed at once with the rest unread in the kernel, the
    socket sent a reset, and a client still sending (a browser's fetch, undici) reported a
    network error instead of the answer."""
    server = proxy.client.server
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, (server.host, server.port))
    try:
        sending = asyncio.ensure_future(
            loop.sock_sendall(
                sock, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 500_000
            )
        )
        received = b""
        while piece := await asyncio.wait_for(loop.sock_recv(sock, 65536), 10):
            received += piece  # (a reset raises ConnectionResetError here)
        await sending
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 431 ")
    assert received.endswith(
        b'{"message":"Request header line too long: the limit is 10000 bytes"}'
    )


async def test_a_pipelined_requests_100_continue_waits_for_the_answers_ahead(proxy: Any) -> None:
    """`Expect: 100-continue` on a request pipelined behind another is answered `100` when its
    turn comes, after the answer ahead (the engine's order): written at once, the client took
    it for the first request's interim answer. Behind a request whose answer closes the
    connection (HTTP/1.0), no 100 at all, for a request never served."""
    server = proxy.client.server
    cases = {
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n": [b"200", b"100", b"200"],
        b"GET /healthz HTTP/1.0\r\n\r\n": [b"200"],
    }
    for first, statuses in cases.items():
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            first + b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        got = re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)  # (a body ends without CRLF)
        assert got == statuses, (first, raw)
