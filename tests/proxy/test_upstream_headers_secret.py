"""No header of an engine answer carries the engine secret on to the client.

The proxy puts `secret=<engine secret>` in every upstream URL. Something between the proxy and
the engine that answers with that URL in a header (a load balancer's http->https redirect
`return 301 https://$host$request_uri`, nginx's auto-redirect of a `location /v1/shape/`, which
appends the args, a 409 with a Location, a Link or Content-Location) had its header forwarded
verbatim, so every client, anonymous ones too, got the engine secret. Error bodies were already
scrubbed; headers were not (attack probe, round 7: a scripted engine echoing the request
target). Each answer is asked for twice (the repeat can take the fast lane), with collapsing
and the response cache off, and once more through the default path with both on;
`ProxyHarness.raw_get` asserts the secret is in neither headers nor body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.limits.upstream import secret_forms, secret_marker
from proxy.upstream.headers import upstream_response_headers, without_secret_lines
from tests.proxy.test_fastlane_real import _raw_engine
from tests.proxy.test_upstream_client import read_request

ELECTRIC = "electric-handle: 1-2\r\nelectric-offset: 0_0\r\nelectric-schema: {{}}\r\n"
ANSWERS = {
    "307 Location": "HTTP/1.1 307 Temporary Redirect\r\nLocation: {url}\r\nContent-Length: 0\r\n\r\n",
    "301 Location": (
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {url}\r\n"
        "Content-Type: text/html\r\nContent-Length: 5\r\n\r\nmoved"
    ),
    "409 Location": (
        "HTTP/1.1 409 Conflict\r\nelectric-handle: 9-9\r\nLocation: {url}\r\n"
        "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
        '[{{"headers":{{"control":"must-refetch"}}}}]'
    ),
    "200 Link": (
        "HTTP/1.1 200 OK\r\n" + ELECTRIC + "electric-up-to-date: true\r\n"
        "Link: <{url}>; rel=next\r\nContent-Location: {url}\r\nRefresh: 0; url={url}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
    ),
}


def _serve(answer: str) -> Any:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = await read_request(reader)
        target = head.split(b" ", 2)[1].decode("latin-1")
        assert "secret=" in target  # (what the header below would hand on)
        writer.write(answer.format(url=f"http://engine.internal{target}").encode("latin-1"))
        await writer.drain()
        writer.close()

    return serve


@pytest.mark.parametrize("name", sorted(ANSWERS))
async def test_no_upstream_header_hands_the_engine_secret_to_the_client(
    name: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    async with _raw_engine(_serve(ANSWERS[name]), idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        for _ in range(2):
            reply = await proxy.raw_get("/v1/shape?table=items&offset=-1", alice)
            assert "secret=" not in repr(list(reply.headers.items())), reply.headers


@pytest.mark.parametrize("name", sorted(ANSWERS))
async def test_no_upstream_header_hands_the_secret_on_through_collapse_and_cache(
    name: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    serve = _serve(ANSWERS[name])
    async with _raw_engine(serve, idp_server, environ, straight=False) as (_, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        reply = await proxy.raw_get("/v1/shape?table=items&offset=-1", alice)
        assert "secret=" not in repr(list(reply.headers.items())), reply.headers


def _serve_kept_alive(answer: str) -> Any:
    """`_serve`, answering request after request on one connection (kept alive), so that the
    proxy's pool has an idle engine connection and a repeat takes the fast lane."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        try:
            while True:
                head = await read_request(reader)
                target = head.split(b" ", 2)[1].decode("latin-1")
                assert "secret=" in target
                writer.write(answer.format(url=f"http://engine.internal{target}").encode("latin-1"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return serve


async def test_the_fast_lane_hands_no_header_with_the_secret_on(
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    """A plain 200 (Content-Length, no Vary) with Link, Content-Location and Refresh echoing
    the engine URL, repeated on a kept-alive engine connection: the repeats are answered by
    the fast lane's own header lines (`FastAnswer._plain_answer`), which dropped none of them
    (the tests above never reach it: their engine closes each connection). The headers that
    hold no secret are all there, in order."""
    serve = _serve_kept_alive(ANSWERS["200 Link"])
    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        for _ in range(3):
            reply = await proxy.raw_get("/v1/shape?table=items&offset=-1", alice)
            assert reply.status == 200
            assert "secret=" not in repr(list(reply.headers.items())), reply.headers
            for name in ("Link", "Content-Location", "Refresh"):
                assert name not in reply.headers
            names = [name.lower() for name in reply.headers][:5]
            assert names == [
                "electric-handle",
                "electric-offset",
                "electric-schema",
                "electric-up-to-date",
                "content-type",
            ]
    assert fast_lane_taken  # (the repeats took the fast lane)


SECRETS = ["4f1c0d9e8b7a6f5e4d3c2b1a09f8e7d6", "a+b/c=d e&f%g"]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_header_holding_the_secret_in_any_form_is_dropped(secret: str) -> None:
    """Every form the secret takes in an echo of the engine URL (as sent, percent-encoded,
    decoded): the header goes, whatever its name; the others stay as they were."""
    forms, marker = secret_forms(secret), secret_marker(secret)
    assert marker and all(marker in form for form in forms)
    for form in forms:
        headers = [
            ("electric-handle", "1-2"),
            ("X-Whatever", f"https://engine.internal/v1/shape?table=t&secret={form}"),
            ("etag", '"a"'),
        ]
        assert upstream_response_headers(headers, forms, marker) == [headers[0], headers[2]]
        lines = b"".join(f"{name}: {value}\r\n".encode() for name, value in headers)
        kept = without_secret_lines(lines, tuple(f.encode() for f in forms))
        assert kept == b'electric-handle: 1-2\r\netag: "a"\r\n'
    plain = [("electric-handle", "1-2"), ("Location", "https://engine.internal/v1/shape?x=1")]
    assert upstream_response_headers(plain, forms, marker) == plain
