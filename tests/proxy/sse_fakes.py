"""Pieces of the fake engines the SSE fan-out tests put behind a real proxy.

Each test's engine decides when and what it sends (that is the test); what it sends is
built here, as the real engine builds it: one transaction's change events and its
up-to-date, the headers of an SSE answer, and the proxy in front of it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config


def sse_batch(lsn: int, *ids: int) -> bytes:
    """One transaction's SSE events (ops 0, 2, ...) and its up-to-date, as the engine sends."""
    events = [
        b"data: "
        + orjson.dumps(
            {
                "key": f'"public"."items"/"{id_}"',
                "value": {"id": str(id_), "org_id": "org-a", "title": "t"},
                "headers": {"operation": "insert", "lsn": str(lsn), "op_position": 2 * i},
            }
        )
        + b"\n\n"
        for i, id_ in enumerate(ids)
    ]
    up_to_date = {"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}}
    return b"".join(events) + b"data: " + orjson.dumps(up_to_date) + b"\n\n"


def sse_headers(
    offset: str, extra: dict[str, str] | None = None, log_end: str | None = None
) -> dict[str, str]:
    """The headers of the engine's SSE answer for shape `h-1` from `offset`, and `extra`; its
    ETag names where the log ended when it opened (`log_end`, by default `offset`)."""
    return {
        "content-type": "text/event-stream",
        "cache-control": "public, max-age=59",
        "electric-handle": "h-1",
        "electric-offset": offset,
        "electric-cursor": "123",
        "etag": f'"h-1:{offset}:{log_end or offset}:1"',
        **(extra or {}),
    }


async def proxy_in_front(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    aiohttp_server: Any,
    idp_server: Any,
    environ: Any,
    make_proxy: Any,
    limits: dict[str, Any] | None = None,
    collapse: bool = True,
) -> tuple[Any, str]:
    """A fake engine answering `/v1/shape` with `handler`, a proxy in front of it (with the
    `limits:` section `limits`, if any; `collapse: false`: SSE passed straight through), and
    a token that proxy accepts."""
    app = web.Application()
    app.router.add_get("/v1/shape", handler)
    server = await aiohttp_server(app, access_log=None)
    config = base_config(str(server.make_url("")), str(idp_server.make_url("/jwks.json")))
    if limits:
        config["limits"] = limits
    config["collapse"] = collapse
    proxy = await make_proxy(build_config(config, environ))
    return proxy, proxy.tokens.make()


class RawSseSocket:
    """One SSE request to a proxy on a plain socket with a small receive buffer (16 KB), so
    the proxy sees a reader that falls behind as soon as the test stops reading."""

    def __init__(self, proxy: Any, token: str, target: str) -> None:
        server = proxy.client.server
        self.address = (server.host, server.port)
        self.request = (
            f"GET {target}&live=true&live_sse=true&cursor= HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self.received = b""
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.sock.setblocking(False)

    async def open(self) -> bytes:
        """Send the request; the response's head."""
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, self.address)
        await loop.sock_sendall(self.sock, self.request)
        while b"\r\n\r\n" not in self.received:
            piece = await loop.sock_recv(self.sock, 1024)
            assert piece, self.received
            self.received += piece
        head, _, self.received = self.received.partition(b"\r\n\r\n")
        return head

    def body(self) -> bytes:
        """The response body so far, without its chunked framing."""
        body, rest = b"", self.received
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep or not size_line or len(rest) < int(size_line, 16) + 2:
                return body
            size = int(size_line, 16)
            body, rest = body + rest[:size], rest[size + 2 :]

    def close(self) -> None:
        self.sock.close()
