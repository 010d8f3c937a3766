"""A hop between the proxy and the engine cannot put the engine secret in the client's status
line (attack 05:30, LOW, defence in depth): the proxy sends each status's standard reason
phrase, never the hop's own words. A hop here echoes its request target (secret included)
as its reason phrase; the client's status line is `400 Bad Request`, on the general path and
on the fast lane."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_upstream_client import RawServer


async def _echoing_hop(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _number: int
) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        body = b'{"message":"Invalid request"}'
        writer.write(
            b"HTTP/1.1 400 Bad " + target + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()


async def test_the_status_line_is_the_standard_one(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, engine_secret: str
) -> None:
    async with RawServer(_echoing_hop) as hop:
        url = str(hop.url("")).split("?")[0].rstrip("/")
        config = base_config(url, str(idp_server.make_url("/jwks.json")))
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
        proxy = await make_proxy(build_config(config, environ))
        token = proxy.tokens.make()
        server = proxy.client.server
        for _ in range(3):  # (the first authorises it; repeats may take the fast lane)
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(
                b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + token.encode() + b"\r\nConnection: close\r\n\r\n"
            )
            raw = await reader.read()
            writer.close()
            status_line = raw.split(b"\r\n", 1)[0]
            assert status_line == b"HTTP/1.1 400 Bad Request", status_line
            assert engine_secret.encode() not in raw
