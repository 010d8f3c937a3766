"""Requests the proxy's HTTP parser refuses (over-long line or header, too many headers) get
the proxy's JSON refusal, quote nothing of the request, and log no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest


async def _raw(proxy: Any, head: str) -> tuple[int, dict[str, str], bytes]:
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head.encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    ("what", "head", "status"),
    [
        ("request line", "GET /v1/shape?table=items&where=" + "x" * 10_000 + " HTTP/1.1\r\n\r\n", 414),
        ("token", "GET /v1/shape?table=items HTTP/1.1\r\nAuthorization: Bearer " + "t" * 20000
         + "\r\n\r\n", 431),
        ("header count", "GET /v1/shape HTTP/1.1\r\n" + "".join(f"X-{i}: 1\r\n" for i in range(200))
         + "\r\n", 431),
        ("garbage", "GET /v1/shape HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    ],
)  # fmt: skip
async def test_parser_refusals_are_json_and_quiet(
    proxy: Any, what: str, head: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    got, headers, body = await _raw(proxy, head)
    assert got == status, (what, body)
    assert headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == "no-store"
    message = json.loads(body)["message"]
    assert "xxxx" not in message and "tttt" not in message
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    # The proxy still answers the next request.
    reply = await proxy.get("/healthz")
    assert reply.status == 200
