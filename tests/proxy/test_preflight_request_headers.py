"""A preflight from an allowed Origin reflects the request header names the page asks for
(newuser 16:44, LOW).

The proxy allowed a fixed list (authorization, content-type, if-none-match, traceparent,
tracestate, accept): a page adding any other header (ShapeStream's `headers: {'X-Tenant': ...}`,
Sentry's `sentry-trace`/`baggage`, `x-request-id`) failed Chromium's preflight ("Request
header field x-tenant is not allowed by Access-Control-Allow-Headers") and its client retried
forever as a network error. As express's `cors` and hono's `cors()` do, the answer now
reflects every valid header name asked for, from allowed Origins only; what goes to the
engine is still the upstream allowlist. The real-browser case: tests/browser/test_cors_headers.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.http.headers import (
    MAX_HEADER_NAME,
    MAX_REFLECTED_HEADERS,
    reflected_request_headers,
)
from tests.proxy.proxy_fakes import ORIGIN

SHAPE = "/v1/shape?table=items&offset=-1"
#: What Chromium sends for the newuser's page (sorted, lowercased, comma-separated).
ASKED = "authorization,baggage,sentry-trace,x-request-id,x-tenant"


def _names(value: str) -> list[str]:
    return [v.strip().lower() for v in value.split(",") if v.strip()]


async def _preflight(proxy: Any, headers: dict[str, str]) -> Any:
    return await proxy.request(
        "OPTIONS", SHAPE, headers={"Access-Control-Request-Method": "GET", **headers}
    )


async def test_an_allowed_origins_preflight_allows_the_headers_its_page_sends(proxy: Any) -> None:
    reply = await _preflight(proxy, {"Origin": ORIGIN, "Access-Control-Request-Headers": ASKED})
    assert reply.status == 204
    assert _names(reply.headers["Access-Control-Allow-Headers"]) == ASKED.split(",")
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert int(reply.headers["Access-Control-Max-Age"]) > 0
    # a cache keeping the answer keys it on what it reflects
    assert _names(reply.headers["Vary"]) == ["origin", "access-control-request-headers"]
    assert proxy.engine.requests == []


async def test_a_refused_origins_preflight_allows_nothing(proxy: Any) -> None:
    reply = await _preflight(
        proxy, {"Origin": "https://evil.example", "Access-Control-Request-Headers": ASKED}
    )
    assert reply.status == 403 and reply.json()["code"] == "origin_not_allowed"
    assert not {k.lower() for k in reply.headers if k.lower().startswith("access-control-")}


async def test_without_an_origin_only_the_fixed_list_is_named(proxy: Any) -> None:
    reply = await _preflight(proxy, {"Access-Control-Request-Headers": ASKED})
    assert reply.status == 204
    assert _names(reply.headers["Access-Control-Allow-Headers"]) == ["authorization"]


async def test_names_that_are_no_header_names_are_not_reflected(proxy: Any) -> None:
    asked = "x-tenant, x tenant,x:y,,x-ok\t,(x),x-\u00e9t\u00e9," + "x" * (MAX_HEADER_NAME + 1)
    reply = await _preflight(proxy, {"Origin": ORIGIN, "Access-Control-Request-Headers": asked})
    assert reply.status == 204
    assert _names(reply.headers["Access-Control-Allow-Headers"]) == ["x-tenant", "x-ok"]


async def test_a_preflight_asking_for_nothing_names_nothing(proxy: Any) -> None:
    reply = await _preflight(proxy, {"Origin": ORIGIN})
    assert reply.status == 204
    assert "Access-Control-Allow-Headers" not in reply.headers
    assert "access-control-request-headers" in _names(reply.headers["Vary"])


@pytest.mark.parametrize(
    ("asked", "reflected"),
    [
        ("X-Tenant, Authorization", ["x-tenant", "authorization"]),
        ("x-tenant,X-TENANT", ["x-tenant"]),
        ("!#$%&'*+-.^_`|~09az", ["!#$%&'*+-.^_`|~09az"]),
        ("", []),
        (" , ,", []),
        ("a b", []),
        ("a\x00b,c", ["c"]),
        ("x" * MAX_HEADER_NAME, ["x" * MAX_HEADER_NAME]),
        ("x" * (MAX_HEADER_NAME + 1), []),
    ],
)
def test_reflected_request_headers(asked: str, reflected: list[str]) -> None:
    assert reflected_request_headers(asked) == reflected


def test_at_most_so_many_names_are_reflected() -> None:
    asked = ",".join(f"x-h{i}" for i in range(MAX_REFLECTED_HEADERS * 3))
    assert len(reflected_request_headers(asked)) == MAX_REFLECTED_HEADERS


async def test_the_extra_headers_are_accepted_and_not_forwarded(proxy: Any) -> None:
    """The page's request itself: served, and the engine gets none of the page's own headers
    (as from any client without a preflight)."""
    reply = await proxy.get(
        SHAPE,
        token=proxy.tokens.make(),
        headers={
            "Origin": ORIGIN,
            "X-Tenant": "acme",
            "sentry-trace": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "baggage": "sentry-environment=prod",
        },
    )
    assert reply.status == 200
    (seen,) = proxy.engine.requests
    for name in ("X-Tenant", "sentry-trace", "baggage"):
        assert name not in seen.headers
