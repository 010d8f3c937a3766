"""Header rules of the proxy, as pure functions over header lists.

Upstream requests carry only an allowlist of client headers (never `Authorization`,
`Cookie`, `Origin` or forwarding headers). Responses lose hop-by-hop and upstream CORS
headers, keep `Content-Encoding` (the body is passed on raw; `Content-Length` is set from the
body actually sent), get a merged
`Vary`, and a `Cache-Control` that no shared cache may store: the rows depend on the token,
which is not part of the client's URL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

#: Client request headers forwarded to the engine.
FORWARDED_REQUEST_HEADERS = (
    "accept",
    "accept-encoding",
    "content-type",
    "if-none-match",
    "traceparent",
    "tracestate",
    "user-agent",
)

#: Response headers never passed back (hop-by-hop, RFC 9110 §7.6.1), plus those we own.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "server",
        "date",
        "cache-control",
        "vary",
        "x-request-id",
        "content-length",  # set per response from the body actually sent
    }
)

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
ALLOWED_METHODS = "GET, POST, OPTIONS"
NO_STORE = "no-store"


def upstream_request_headers(client: Mapping[str, str], request_id: str) -> dict[str, str]:
    """Allowlisted client headers plus the request id; nothing identifying the user."""
    headers = {name: client[name] for name in FORWARDED_REQUEST_HEADERS if name in client}
    headers["x-request-id"] = request_id
    return headers


def upstream_response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response headers to copy: drop hop-by-hop, upstream CORS, and what we rewrite.

    On every forwarded response, so each name is lower-cased once.
    """
    kept = []
    for name, value in upstream:
        lower = name.lower()
        if lower not in _DROPPED_RESPONSE_HEADERS and not lower.startswith("access-control-"):
            kept.append((name, value))
    return kept


def client_response_headers(
    headers: Iterable[tuple[str, str]], cache_control: str
) -> CIMultiDictProxy[str]:
    """An upstream answer's client-facing headers plus its rewritten `Cache-Control`.

    Built once per answer: every client it is sent to (a flight's waiters, cache hits) gets
    a copy in one C-level call instead of a dozen header insertions.
    """
    built = CIMultiDict(headers)
    built["Cache-Control"] = cache_control
    return CIMultiDictProxy(built)


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


def private_cache_control(values: Iterable[str], max_age_cap: int | None) -> str:
    """Make an upstream `Cache-Control` safe for a per-user response.

    `public` becomes `private`, shared-cache directives (`s-maxage`, `proxy-revalidate`,
    `immutable`) go, and `max-age` / `stale-*` are capped. `no-store`/`no-cache` survive, so
    errors and POST responses keep Electric's semantics. No header becomes `private, no-cache`.
    """
    out: list[str] = []
    for value in values:
        for directive in value.split(","):
            directive = directive.strip()
            if not directive:
                continue
            name, _, arg = directive.partition("=")
            name = name.strip().lower()
            if name in ("public", "private", "s-maxage", "proxy-revalidate", "immutable"):
                continue
            if (
                name in ("max-age", "stale-while-revalidate", "stale-if-error")
                and max_age_cap is not None
            ):
                try:
                    seconds = min(int(arg.strip().strip('"')), max_age_cap)
                except ValueError:
                    continue
                directive = f"{name}={seconds}"
            out.append(directive)
    if not out:
        out.append("no-cache")
    if "no-store" not in out:
        out.insert(0, "private")
    return ", ".join(out)


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
