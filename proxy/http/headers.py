"""Client-facing header rules of the proxy (CORS, `Vary`), as pure functions.

What passes between the proxy and the engine (request allowlist, response filtering,
`Cache-Control` rewriting) is in `proxy.upstream.headers`.
"""

from __future__ import annotations

import re
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
#: The request headers a preflight is answered with when it names no others (and, without
#: an Origin, the only ones it may name): the token, a POST's JSON, revalidation, tracing.
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


#: A header name (RFC 9110 5.1: a `token`, 5.6.2); anything else a preflight names is not
#: reflected (a browser never asks for one, so it fails its own check, as it should).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Bounds on what a preflight's answer reflects: Chromium lists each name a page's request
#: carries beyond the CORS-safelisted ones, a handful in practice (Authorization, Sentry's
#: sentry-trace and baggage, an app's X-Tenant); a longer list or name is not a page's.
MAX_REFLECTED_HEADERS = 32
MAX_HEADER_NAME = 100


def reflected_request_headers(requested: str) -> list[str]:
    """The names of a preflight's `Access-Control-Request-Headers` an allowed Origin may send:
    each valid header name (lowercased, once), at most `MAX_REFLECTED_HEADERS`.

    Why reflect rather than a fixed list: a page's ShapeStream `headers` option (an app's
    X-Tenant) or a tracing SDK (sentry-trace, baggage) adds names no fixed list foresees, and
    a browser refuses the whole request when one is not allowed (the client retries it
    forever as a network error). Allowing a name lets the browser send it, nothing more: the
    engine still gets only `proxy.upstream.headers.FORWARDED_REQUEST_HEADERS`, as from any
    other client. This is what express's `cors` and hono's `cors()` answer by default."""
    names: dict[str, None] = {}
    for item in requested.split(","):
        name = item.strip(" \t").lower()
        if len(name) <= MAX_HEADER_NAME and _TOKEN.fullmatch(name):
            names[name] = None
            if len(names) == MAX_REFLECTED_HEADERS:
                break
    return list(names)


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
