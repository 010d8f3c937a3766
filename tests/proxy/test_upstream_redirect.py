"""A redirect from something between the proxy and the engine is the proxy's own 502.

A load balancer's http->https rule (`return 301 https://$host$request_uri`), nginx's
auto-redirect of a `location /v1/shape/`, a CDN rule: each answers the engine URL, secret
included, with a 3xx whose `Location` is that URL. The proxy drops any header holding the
secret (`test_upstream_headers_secret`), so the client got a redirect with nowhere to go: the
npm client and a browser's fetch then fail on an answer no engine gives. It is now
`502 {"message": ..., "code": "upstream_redirect"}` as other upstream failures are answered
(no-store, Retry-After), logged for the operator with the status and never the Location;
on the general path (with collapsing and the response cache on: never kept, never shared
into a later request), and on the fast lane. A 304 (the engine's answer to If-None-Match) is
no redirect.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.proxy.test_fastlane_real import _raw_engine
from tests.proxy.test_upstream_client import read_request

REDIRECTS = {
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
}
OK = (
    "HTTP/1.1 200 OK\r\nelectric-handle: 1-2\r\nelectric-offset: 0_0\r\nelectric-schema: {}\r\n"
    "electric-up-to-date: true\r\ncache-control: public, max-age=60\r\n"
    'etag: "1-2:-1:0_0"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]'
)


def _redirect(status: int, target: str, chunked: bool) -> bytes:
    location = f"https://engine.internal{target}"
    assert "secret=" in location  # (what the client would be sent to)
    if chunked:
        body = "Transfer-Encoding: chunked\r\n\r\n5\r\nmoved\r\n0\r\n\r\n"
    else:
        body = "Content-Type: text/html\r\nContent-Length: 5\r\n\r\nmoved"
    head = f"HTTP/1.1 {status} {REDIRECTS[status]}\r\nLocation: {location}\r\n"
    # (a Cache-Control a shared cache would honour: the proxy must keep nothing of it)
    return f"{head}Cache-Control: public, max-age=3600\r\n{body}".encode("latin-1")


class Engine:
    """A scripted engine behind a redirecting hop: answers 200 to the first `ok` requests, a
    `status` redirect to every later one, on kept-alive connections."""

    def __init__(self, status: int, ok: int = 0, chunked: bool = False) -> None:
        self.status, self.ok, self.chunked = status, ok, chunked
        self.requests = 0

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:
            head = await read_request(reader)
            self.requests += 1
            if self.requests <= self.ok:
                writer.write(OK.encode())
            else:
                target = head.split(b" ", 2)[1].decode("latin-1")
                writer.write(_redirect(self.status, target, self.chunked))
            await writer.drain()


def _assert_redirect_refused(proxy: Any, reply: Any) -> None:
    assert reply.status == 502, (reply.status, reply.headers, reply.body)
    assert reply.json() == {
        "message": "the sync engine's address answered with a redirect",
        "code": "upstream_redirect",
    }
    assert "Location" not in reply.headers
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Retry-After"].isdigit()
    proxy.assert_clean(reply)


def _assert_logged(caplog: pytest.LogCaptureFixture, status: int) -> None:
    """A WARNING naming the status and the reason (the autouse `no_secret_in_logs` checks
    that no line holds the secret: the Location's value is in none)."""
    said = [r for r in caplog.records if "upstream_redirect" in r.getMessage()]
    assert said and all(f" {status} " in r.getMessage() for r in said), said
    assert all(r.levelno == logging.WARNING for r in said)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("status", sorted(REDIRECTS))
async def test_a_redirect_is_a_502_never_collapsed_into_or_cached(
    status: int,
    chunked: bool,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The default path, collapsing and the response cache on: concurrent requests and a
    later one each get the 502, and the later one went to the engine again (nothing kept)."""
    engine = Engine(status, chunked=chunked)
    async with _raw_engine(engine.serve, idp_server, environ, straight=False) as (_, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        target = "/v1/shape?table=items&offset=-1"
        replies = await asyncio.gather(*(proxy.raw_get(target, alice) for _ in range(3)))
        asked = engine.requests
        replies.append(await proxy.raw_get(target, alice))
        for reply in replies:
            _assert_redirect_refused(proxy, reply)
        assert engine.requests == asked + 1  # (the last one was not answered from a cache)
        head = await proxy.request("HEAD", target, token=alice)
        assert (head.status, "Location" in head.headers) == (502, False)
    _assert_logged(caplog, status)


@pytest.mark.parametrize("status", sorted(REDIRECTS))
async def test_a_redirect_on_the_fast_lane_is_the_same_502(
    status: int,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Collapsing and the cache off, a kept-alive engine connection: the first request is
    answered (and authorised) by the general path, the hop then starts redirecting and the
    repeat, on the fast lane, gets the 502; so does the one after it (general path again:
    the redirected connection was not kept)."""
    engine = Engine(status, ok=1)
    async with _raw_engine(engine.serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        first = await proxy.raw_get("/v1/shape?table=items&offset=-1", alice)
        assert first.status == 200
        for _ in range(2):
            reply = await proxy.raw_get("/v1/shape?table=items&offset=-1", alice)
            _assert_redirect_refused(proxy, reply)
        assert engine.requests == 3
    assert fast_lane_taken  # (the first repeat took the fast lane)
    _assert_logged(caplog, status)


async def test_a_304_is_no_redirect(
    idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """The engine's 304 to a matching If-None-Match goes on as it is."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b'HTTP/1.1 304 Not Modified\r\netag: "1-2:-1:0_0"\r\n\r\n')
            await writer.drain()

    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        for _ in range(2):
            reply = await proxy.request(
                "GET", "/v1/shape?table=items&offset=-1", token=alice,
                headers={"If-None-Match": '"1-2:-1:0_0"'},
            )  # fmt: skip
            assert reply.status == 304, reply.body


@pytest.mark.parametrize("status", [301, 307])
async def test_a_redirect_of_a_live_request_is_the_same_502(
    status: int, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """A long-poll and an SSE request (the shared stream's engine request), defaults on."""
    engine = Engine(status)
    async with _raw_engine(engine.serve, idp_server, environ, straight=False) as (_, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        live = "/v1/shape?table=items&offset=0_0&handle=1-2&live=true"
        for target in (live, live + "&live_sse=true"):
            _assert_redirect_refused(proxy, await proxy.raw_get(target, alice))
        assert engine.requests == 2
