from __future__ import annotations

from proxy.http.headers import cors_headers, merge_vary
from proxy.logs import redact, redact_query
from proxy.upstream.headers import (
    private_cache_control,
    upstream_request_headers,
    upstream_response_headers,
)


def test_cache_control_made_private_and_capped() -> None:
    v = private_cache_control(
        ["public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"], 60
    )
    assert v == "private, max-age=60, stale-while-revalidate=60"
    assert private_cache_control(["public, max-age=5, immutable"], None) == "private, max-age=5"
    assert private_cache_control(["no-store"], 60) == "no-store"
    assert private_cache_control(["no-cache"], 60) == "private, no-cache"
    assert private_cache_control([], 60) == "private, no-cache"


def test_vary_merged_not_overwritten() -> None:
    assert merge_vary(["Accept-Encoding", "origin"], "Origin", "Authorization") == (
        "Accept-Encoding, origin, Authorization"
    )
    assert merge_vary(["*"], "Authorization") == "*"


def test_request_headers_allowlisted() -> None:
    out = upstream_request_headers(
        {
            "authorization": "Bearer x",
            "cookie": "a",
            "origin": "o",
            "if-none-match": '"e"',
            "x-forwarded-for": "1.2.3.4",
        },
        "rid",
    )
    assert out == {"if-none-match": '"e"', "x-request-id": "rid"}


def test_response_headers_filtered() -> None:
    kept = upstream_response_headers(
        [
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Access-Control-Allow-Origin", "*"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", "12"),
            ("electric-handle", "h"),
            ("Cache-Control", "public"),
        ]
    )
    assert kept == [("Content-Encoding", "gzip"), ("electric-handle", "h")]


def test_cors() -> None:
    h = cors_headers("https://a", ["https://a"], credentials=False)
    assert h is not None and h["Access-Control-Allow-Origin"] == "https://a"
    assert "electric-offset" in h["Access-Control-Expose-Headers"]
    assert "*" not in h["Access-Control-Expose-Headers"]
    assert cors_headers("https://b", ["https://a"], credentials=False) is None


def test_redaction() -> None:
    assert "abc" not in redact("GET /v1/shape?table=x&secret=abc&y=1")
    assert "tok" not in redact("Authorization: Bearer tok")
    assert "eyJ" not in redact("x eyJhbGciOi.eyJzdWIi.sig y")
    assert redact_query([("secret", "s"), ("table", "t")]) == "secret=[REDACTED]&table=t"
