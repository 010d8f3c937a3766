"""A JWKS fetch that fails is logged with the problem in words, not an exception class
(newuser LOW: "JWKS fetch failed for <url> (ValueError)"). Real proxy app, a real HTTP
server as the issuer; the client sees the same 503 keys_unavailable as before.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from aiohttp import web

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config


def _issuer_app() -> web.Application:
    async def discovery(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        return web.json_response(
            {"issuer": base, "jwks_uri": f"{base}/jwks.json?key=idp-query-key-77"}
        )

    async def html(_request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    async def moved(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere/jwks.json")

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/page", html)
    app.router.add_get("/moved", moved)
    return app


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (
            "/.well-known/openid-configuration",
            "it is an OpenID configuration; set jwks_url to its jwks_uri, http://",
        ),
        ("/page", "the answer is not JSON"),
        ("/nosuch", "the endpoint answered HTTP 404"),
        ("/moved", "HTTP 302, a redirect to /elsewhere/jwks.json"),
        (None, "cannot connect (connection refused)"),
    ],
)
async def test_a_failed_jwks_fetch_is_logged_in_words(
    aiohttp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
    path: str | None,
    words: str,
) -> None:
    if path is None:
        url = f"http://127.0.0.1:{_closed_port()}/jwks.json"
    else:
        url = str((await aiohttp_server(_issuer_app(), access_log=None)).make_url(path))
    caplog.set_level(logging.INFO)
    proxy = await make_proxy(build_config(base_config("http://127.0.0.1:9", url), environ))
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=proxy.tokens.make())
    assert reply.status == 503 and reply.json()["code"] == "keys_unavailable", reply.body
    (line,) = [r.getMessage() for r in caplog.records if "JWKS fetch failed" in r.getMessage()]
    assert words in line, line
    assert "idp-query-key-77" not in line  # (the discovered jwks_uri is shown redacted)
