"""Client-facing header rules of the proxy (CORS, `Vary`), as pure functions.

What passes between the proxy and the engine (request allowlist, response filtering,
`Cache-Control` rewriting) is in `proxy.upstream.headers`.
"""

from __future__ import annotations

from collections.abc import Iterable

#: What a browser may read cross-origin: Electric's list plus etag.
EXPOSED_HEADERS = (
    "electric-cursor",
    "electric-handle",
    "electric-has-data",
    "electric-offset",
    "electric-schema",
    "electric-up-to-date",
    "electric-internal-known-error",
    "electric-snapshot",
    "retry-after",
    "etag",
    "x-request-id",
)
ALLOWED_REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "if-none-match",
    "traceparent",
    "tracestate",
    "accept",
)
#: DELETE too: whether a shape may be deleted is the rule's decision, made per request.
ALLOWED_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"
NO_STORE = "no-store"


def merge_vary(values: Iterable[str], *extra: str) -> str:
    """One `Vary` value holding every token of `values` plus `extra`, without duplicates."""
    seen: dict[str, str] = {}
    for value in (*values, *extra):
        for token in value.split(","):
            token = token.strip()
            if token and token.lower() not in seen:
                seen[token.lower()] = token
    if "*" in seen:
        return "*"
    return ", ".join(seen.values())


def cors_headers(
    origin: str | None, allow_origins: Iterable[str], *, credentials: bool
) -> dict[str, str] | None:
    """CORS headers for an allowed `origin`; None when there is no Origin or it is not allowed."""
    if origin is None:
        return None
    allowed = set(allow_origins)
    if origin not in allowed and "*" not in allowed:
        return None
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
    }
    if credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def origin_allowed(origin: str | None, allow_origins: Iterable[str]) -> bool:
    """Requests without Origin (same-origin GET, servers) are fine; others need the allowlist."""
    if origin is None:
        return True
    allowed = set(allow_origins)
    return origin in allowed or "*" in allowed


def preflight_headers(max_age: int) -> dict[str, str]:
    return {
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ", ".join(ALLOWED_REQUEST_HEADERS),
        "Access-Control-Max-Age": str(max_age),
    }
