"""Cache-control, ETag, cursor and CORS values for shape responses (pure).

The cache-control matrix follows the request class (see the protocol sheet, 2.3): CDNs
depend on it to cache `-1` and catch-up chunks for long and live answers for seconds only.
"""

from __future__ import annotations

import random
import time

CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z
EXPOSE_HEADERS = (
    "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,"
    "electric-up-to-date,electric-internal-known-error,retry-after"
)
ALLOW_METHODS_SHAPE = "GET, POST, HEAD, DELETE, OPTIONS"


def next_cursor(request_cursor: int, long_poll_timeout: float, now: float | None = None) -> int:
    """A cursor that strictly increases past the request's, in long-poll-sized time buckets."""
    interval = max(1, int(long_poll_timeout))
    t = (now if now is not None else time.time()) - CURSOR_EPOCH
    value = -(-int(t) // interval) * interval
    if value <= request_cursor:
        return request_cursor + random.randint(1, 3600)
    return value


def cache_control(
    *,
    method: str,
    before_all: bool,
    live: bool,
    sse: bool,
    sse_timeout: float,
    max_age: int,
    stale_age: int,
) -> str:
    """The cache-control of a 200 shape response (errors: `errors.py`, 409 included)."""
    if method not in ("GET", "HEAD", "OPTIONS"):
        return "no-cache"
    if before_all:
        return "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
    if live and sse:
        return f"public, max-age={max(1, int(sse_timeout) - 1)}"
    if live:
        return "public, max-age=5, stale-while-revalidate=5"
    return f"public, max-age={max_age}, stale-while-revalidate={stale_age}"


def etag(handle: str, request_offset: str, response_offset: str, no_change: bool) -> str:
    tag = f"{handle}:{request_offset}:{response_offset}"
    if no_change:
        tag += f":{time.monotonic_ns()}"
    return f'"{tag}"'


def if_none_match_hits(header: str | None, tag: str) -> bool:
    if not header:
        return False
    if header == tag:  # (a client revalidating what it got: the tag as sent, alone)
        return True
    bare = tag.strip('"')
    return any(part.strip().strip('"') == bare for part in header.split(","))
