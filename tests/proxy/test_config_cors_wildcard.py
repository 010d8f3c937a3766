"""`cors.allow_origins: ["https://*.example.com"]` is a load error, not a list no browser
matches.

It loaded (the origin check let `*` through as a host character) and was compared as written:
the preflight from `https://a.example.com` was a 403 `origin_not_allowed`, which a browser
shows as an opaque CORS error; only a literal `Origin: https://*.example.com` got its 204
(newuser, 2026-12-07, MEDIUM). Real path: the file loaded by `load_config` and, on the old
code, a preflight to the real proxy made from it. `*` alone (any origin) still loads and
serves the preflight.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import ConfigError

SHAPE = "/v1/shape?table=items&offset=-1"
RULES = "tables:\n  items:\n    allow: [{all_rows: true}]\n"


async def _preflight(proxy: Any, origin: str) -> Any:
    return await proxy.request(
        "OPTIONS",
        SHAPE,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )


@pytest.mark.parametrize(
    "listed", ["https://*.example.com", "https://app-*.example.com", "https://a.example.com:*"]
)
async def test_a_wildcard_origin_is_a_load_error(
    listed: str, proxy_from_yaml: Any, engine_server: Any
) -> None:
    head = proxy_from_yaml.head(str(engine_server.make_url("")))
    text = head + f"cors:\n  allow_origins: ['{listed}']\n" + RULES
    line = head.count("\n") + 2
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        said = str(exc)
        assert f"cors.allow_origins (line {line}):" in said, said
        assert "no wildcards" in said and "list each origin, or '*'" in said, said
    else:  # (the old code: every browser's preflight refused)
        reply = await _preflight(proxy, "https://app-a.example.com")
        assert reply.status == 204, reply.status
        pytest.fail("loaded")


async def test_any_origin_and_listed_ones_still_serve(
    proxy_from_yaml: Any, engine_server: Any
) -> None:
    head = proxy_from_yaml.head(str(engine_server.make_url("")))
    for listed, origin in (("*", "https://a.example.com"), ("https://a.example.com",) * 2):
        proxy = await proxy_from_yaml(
            head + f"cors:\n  allow_origins: ['{listed}']\n" + RULES, name=f"p{len(listed)}"
        )
        reply = await _preflight(proxy, origin)
        assert reply.status == 204, (listed, reply.status, reply.body)
        assert reply.headers["Access-Control-Allow-Origin"] in (origin, "*")
