"""A hop between the proxy and the engine (a misconfigured load balancer) that answers an
error with a chunked or close-delimited body cannot put the engine secret, its source_id or
the engine URL in front of a client (attack, LOW): the proxy read such a body as a stream and
relayed it unscrubbed, while a Content-Length error body was scrubbed. Now every error body
is read whole, bounded in size and in time, and scrubbed the same way; one too long or too
slow is the proxy's own 502. The hop here echoes its request target (secret, source_id) in
its error body. Run through the real proxy (its HTTP server, general path, fast lane,
collapsed flights and shared SSE streams)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from typing import Any

import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_upstream_client import RawServer

SOURCE_ID = "src-1"  # (`base_config`'s)


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:])) + b"0\r\n\r\n"
    )


def _hop(status: int, ctype: bytes, framing: str) -> Any:
    """A hop answering every request with `status`, its body echoing the request target."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            if ctype == b"application/json":
                body = json.dumps({"message": "bad upstream " + target.decode()}).encode()
            else:
                body = b"<html><p>cannot serve http://engine.internal" + target + b"</p></html>"
            start = b"HTTP/1.1 %d Hop Error\r\nContent-Type: %s\r\n" % (status, ctype)
            if framing == "chunked":
                writer.write(start + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body))
                await writer.drain()
                continue
            writer.write(start + b"Connection: close\r\n\r\n" + body)  # to the close
            await writer.drain()
            return

    return serve


async def _get(proxy: Any, path: str, token: str, extra: bytes = b"") -> bytes:
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token.encode() + b"\r\n" + extra + b"Connection: close\r\n\r\n"
    )  # fmt: skip
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return raw


def _config(hop: RawServer, idp_server: Any, collapse: bool) -> dict[str, Any]:
    url = str(hop.url("")).split("?")[0].rstrip("/")
    config = base_config(url, str(idp_server.make_url("/jwks.json")))
    config["collapse"] = collapse
    config["cache"] = {"max_bytes": 0}
    return config


def _assert_clean(raw: bytes, secret: str) -> None:
    body = raw.partition(b"\r\n\r\n")[2].lower()
    assert secret.encode() not in raw, raw
    assert b"source_id=" + SOURCE_ID.encode() not in raw, raw
    assert b"/v1/shape?" not in body, raw
    assert b"engine.internal" not in body, raw


@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("collapse", [False, True])
@pytest.mark.parametrize(
    ("status", "ctype", "said"),
    [(400, b"application/json", 400), (404, b"text/html", 404), (500, b"text/html", 502)],
)
async def test_a_hops_streamed_error_body_is_scrubbed(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, engine_secret: str,
    framing: str, collapse: bool, status: int, ctype: bytes, said: int,
) -> None:  # fmt: skip
    async with RawServer(_hop(status, ctype, framing)) as hop:
        config = _config(hop, idp_server, collapse)
        proxy = await make_proxy(build_config(config, environ))
        token = proxy.tokens.make()
        # (the first is authorised; repeats may take the fast lane, which hands a chunked
        # answer over to the general relay)
        for path in ["/v1/shape?table=items&offset=-1"] * 3 + [
            "/v1/shape?table=items&offset=0_0&handle=h-1&live=true&cursor=1"
        ] * 2:
            raw = await _get(proxy, path, token)
            status_line = raw.split(b"\r\n", 1)[0]
            assert status_line.split(b" ")[1] == str(said).encode(), raw
            _assert_clean(raw, engine_secret)
            assert b"transfer-encoding: chunked" not in raw.lower()
            if said == 502:  # a hop's failure, not the engine's: the proxy's own JSON
                assert json.loads(raw.partition(b"\r\n\r\n")[2])["code"] == "upstream_unreachable"


@pytest.mark.parametrize("collapse", [False, True])
async def test_a_hops_streamed_error_on_a_shared_sse_stream_is_scrubbed(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, engine_secret: str,
    collapse: bool,
) -> None:  # fmt: skip
    async with RawServer(_hop(400, b"text/plain", "chunked")) as hop:
        proxy = await make_proxy(build_config(_config(hop, idp_server, collapse), environ))
        path = "/v1/shape?table=items&offset=0_0&handle=h-1&live=true&cursor=1&live_sse=true"
        raw = await _get(proxy, path, proxy.tokens.make(), b"Accept: text/event-stream\r\n")
        assert raw.startswith(b"HTTP/1.1 400 "), raw
        _assert_clean(raw, engine_secret)


def _endless(delay: float) -> Any:
    """A hop whose chunked error body never ends (`delay` between its chunks)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        writer.write(
            b"HTTP/1.1 400 Hop Error\r\nContent-Type: text/plain\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 60_000 + target
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(delay)

    return serve


@pytest.mark.parametrize("collapse", [False, True])
@pytest.mark.parametrize("delay", [0.0, 0.3])  # too long / too slow
async def test_a_streamed_error_body_past_its_bounds_is_a_502(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, engine_secret: str,
    collapse: bool, delay: float,
) -> None:  # fmt: skip
    async with RawServer(_endless(delay)) as hop:
        config = _config(hop, idp_server, collapse)
        config["upstream"]["first_byte_timeout"] = 1.5
        proxy = await make_proxy(build_config(config, environ))
        started = time.monotonic()
        raw = await _get(proxy, "/v1/shape?table=items&offset=-1", proxy.tokens.make())
        assert time.monotonic() - started < 6
    assert raw.startswith(b"HTTP/1.1 502 "), raw[:300]
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["code"] == "upstream_error"
    _assert_clean(raw, engine_secret)


def _compressed_hop(coding: bytes, framing: str) -> Any:
    """A hop answering 400 with a compressed body (`coding`) echoing its request target."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            body = json.dumps({"message": "bad upstream " + target.decode()}).encode()
            if coding == b"gzip":
                body = gzip.compress(body)
            elif coding == b"deflate":
                body = zlib.compress(body)
            else:
                body = b"\x1b" + body  # (a coding the proxy cannot read: "br")
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Content-Encoding: " + coding + b"\r\n"
            )
            if framing == "chunked":
                writer.write(b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body))
            else:
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    return serve


@pytest.mark.parametrize("framing", ["chunked", "length"])
@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"br"])
async def test_a_hops_compressed_error_body_is_scrubbed(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, engine_secret: str,
    framing: str, coding: bytes,
) -> None:  # fmt: skip
    """Compressed, the echo hid from the scrub (it looked for the secret in gzip bytes) and
    the client decoded it: now a gzip or deflate error body is looked at decoded (and sent
    decoded when cleaned); one in a coding the proxy cannot decode is its own 502."""
    async with RawServer(_compressed_hop(coding, framing)) as hop:
        proxy = await make_proxy(build_config(_config(hop, idp_server, False), environ))
        token = proxy.tokens.make()
        for _ in range(3):  # (general path, then the fast lane)
            raw = await _get(proxy, "/v1/shape?table=items&offset=-1", token,
                             b"Accept-Encoding: gzip, deflate, br\r\n")  # fmt: skip
            head, _, body = raw.partition(b"\r\n\r\n")
            if coding == b"br":
                assert raw.startswith(b"HTTP/1.1 502 "), raw
                assert json.loads(body)["code"] == "upstream_error"
                continue
            assert raw.startswith(b"HTTP/1.1 400 "), raw
            assert b"content-encoding" not in head.lower(), raw
            _assert_clean(raw, engine_secret)
            assert "[engine request removed]" in json.loads(body)["message"]
