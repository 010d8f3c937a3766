"""A cache tier's own delivery headers never reach a client of the proxy (review 08:45, LOW):
Varnish adds `X-Varnish` (two ids on a hit), `Age` and `Via` on every delivery, which told a
user that (and when) someone with the same rights had asked for the same filter, as
`X-Cache-Status` did (a8802321). A hop here answers as Varnish delivers a hit; the real
proxy, on the general path and the fast lane."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_upstream_client import RawServer

BODY = b"[]"


async def _varnish_hit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Cache-Control: public, max-age=60\r\nelectric-handle: h-1\r\n"
            b"electric-offset: 0_inf\r\nX-Varnish: 32770 3\r\nAge: 41\r\n"
            b"Via: 1.1 varnish (Varnish/7.1)\r\nX-Cache-Status: HIT\r\n"
            b"Content-Length: 2\r\n\r\n" + BODY
        )
        await writer.drain()


async def test_varnish_delivery_headers_are_dropped(
    idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    async with RawServer(_varnish_hit) as hop:
        url = str(hop.url("")).split("?")[0].rstrip("/")
        config = base_config(url, str(idp_server.make_url("/jwks.json")))
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
        proxy = await make_proxy(build_config(config, environ))
        token = proxy.tokens.make()
        for _ in range(3):  # (the first authorises it; repeats take the fast lane)
            reply = await proxy.get("/v1/shape?table=items&offset=-1", token=token)
            assert reply.status == 200, reply.body
            names = {k.lower() for k in reply.headers}
            assert not names & {"x-varnish", "age", "via", "x-cache-status"}, reply.headers
