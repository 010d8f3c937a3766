"""A request target that is neither the origin form (`/path?query`), the absolute form
(`http://host/path`) nor the bare asterisk of `OPTIONS *` is a 400 "Malformed HTTP request"
at the proxy, as at the engine (and Electric: Bandit's "Unsupported request target"), and the
connection closes.

The proxy routed such a target (`GET *?`, `OPTIONS *?x=1`, `GET *x`) as a path and answered
404 with CORS headers, keeping an HTTP/1.0 keep-alive connection open (attack's rawdiff,
19:36): a client could tell the two apart. The engine's answer to each, measured when this was
fixed: 400, `{"message":"Malformed HTTP request"}` (`parser_refusals.refusal(None)`), no CORS,
closed; the proxy now gives the same bytes. In-process proxy, raw sockets (no client library
sends these); attack's rawdiff keeps comparing the two live.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sync_engine.http.parser_refusals import refusal

REQUESTS = [
    b"GET *? HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n\r\n",
    b"OPTIONS *?x=1 HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n\r\n",
    b"GET *x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET v1/shape?table=items HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD *? HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


@pytest.mark.parametrize("data", REQUESTS, ids=lambda d: d.split(b"\r\n")[0].decode())
async def test_a_target_of_no_known_form_is_the_engines_400(proxy: Any, data: bytes) -> None:
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # (to its end: the proxy closes)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    names = {line.partition(b":")[0].strip().lower() for line in lines[1:]}
    assert int(lines[0][9:12]) == 400, raw
    assert not any(name.startswith(b"access-control-") for name in names), raw
    if data.startswith(b"HEAD"):
        assert body == b""
    else:
        assert json.loads(body) == {"message": refusal(None).message}
