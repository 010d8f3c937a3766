"""Held answers that end before the engine would end them: at the caller's token expiry, or
when access granted before may have been withdrawn (a config reload, an issuer's key change).

A long-poll (`live=true`, not SSE) is held by the engine until a change comes or its
long-poll timeout (20 s by default) passes. A caller whose token expires meanwhile must not
be served a change that arrives after its `exp`, nor one that arrives after a reload took
its access away. The proxy then ends the long-poll the way the engine ends one that timed
out, which every client takes in its stride: a 200 naming the request's own handle and
offset, a fresh cursor, `electric-up-to-date`, and a body of one up-to-date message. The
client's next request is the same live request with a fresh token from its headers function
(its place kept: nothing skipped, nothing repeated); an expired token there gets the usual
401, a withdrawn rule its 403.

`Hold` bounds one held request's wait: its deadline (the token's `exp` on the wall clock)
and a revocation future (`Forwarder.end_streams`). A request whose token is already past its
`exp` (accepted within its issuer's leeway) is still held `MIN_HOLD` seconds, so a client
without a fresh token does not spin on answers that end at once; and so that a request the
engine refuses (a 409 for a rotated handle, a 400) gets the engine's own answer.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable
from typing import TypeVar

from yarl import URL

from proxy.http.wire import Response
from proxy.upstream.headers import Head, upstream_response_headers

#: Seconds a held request is held at least (see the module doc).
MIN_HOLD = 2.0
#: The engine's Cache-Control on a long-poll's answer (Electric's too).
LIVE_CACHE_CONTROL = "public, max-age=5, stale-while-revalidate=5"
#: The engine's cursor interval, its default long-poll timeout (`sync_engine/http/headers.py`).
CURSOR_INTERVAL = 20
CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z, the engine's

_OFFSET = re.compile(r"(\d+)_(\d+|inf)")

T = TypeVar("T")


class Hold:
    """How long one held request may wait for the engine: until `deadline` (wall clock; None:
    no token) or until `revoked` is done, whichever comes first."""

    __slots__ = ("_at", "revoked")

    def __init__(self, deadline: float | None, revoked: asyncio.Future[None] | None) -> None:
        self.revoked = revoked
        self._at: float | None = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._at = loop.time() + max(deadline - time.time(), MIN_HOLD)

    @property
    def bounded(self) -> bool:
        """Whether anything but its answer ends the wait."""
        return self._at is not None or self.revoked is not None

    def over(self) -> bool:
        """Whether the hold has ended (its deadline passed, or access was revoked)."""
        if self.revoked is not None and self.revoked.done():
            return True
        return self._at is not None and asyncio.get_running_loop().time() >= self._at

    async def wait(self, waiting: Awaitable[T]) -> bool:
        """Wait for `waiting` (a future or task) within the hold: True if it is done, False
        if the hold ended first (`waiting` is then left to the caller, not cancelled)."""
        future = asyncio.ensure_future(waiting)
        if future.done():
            return True
        watched: set[asyncio.Future[object]] = {future}  # type: ignore[arg-type]
        if self.revoked is not None:
            watched.add(self.revoked)  # type: ignore[arg-type]
        timeout = None
        if self._at is not None:
            timeout = max(0.0, self._at - asyncio.get_running_loop().time())
        await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return future.done()


def ended_long_poll(url: URL, method: str, cache_control: str) -> Response | None:
    """The engine's answer to a long-poll at `url` that timed out with nothing new (see
    `sync_engine/http/shape.py`, `_serve_log`): None if `url` names no handle and log offset
    (the engine holds no such request). `cache_control` is the client-facing value of
    `LIVE_CACHE_CONTROL` (`Forwarder.cache_control`)."""
    query = url.query
    handle = query.get("handle")
    match = _OFFSET.fullmatch(query.get("offset", ""))
    if not handle or match is None:
        return None
    tx = int(match.group(1))
    op = match.group(2)
    offset = f"{tx}_{op if op == 'inf' else int(op)}"
    try:
        cursor = int(query.get("cursor", "0") or "0")
    except ValueError:
        cursor = 0
    body = (
        b'[{"headers":{"control":"up-to-date","global_last_seen_lsn":"' + str(tx).encode() + b'"}}]'
    )
    engine_headers = [
        ("electric-handle", handle),
        ("electric-offset", offset),
        ("electric-has-data", "false"),
        ("electric-cursor", str(next_cursor(cursor))),
        ("electric-up-to-date", ""),
        ("etag", f'"{handle}:{offset}:{offset}:{time.monotonic_ns()}"'),
        ("content-type", "application/json; charset=utf-8"),
    ]
    head = Head(
        status=200,
        reason="OK",
        headers=tuple(upstream_response_headers(engine_headers)),
        content_length=len(body),
        cache_control=cache_control,
        ttl=0.0,
    )
    response = Response(status=200, reason="OK", body=b"" if method == "HEAD" else body,
                        headers=head.response_headers)  # fmt: skip
    if method == "HEAD":
        response.headers["Content-Length"] = str(len(body))
    return response


def next_cursor(request_cursor: int, now: float | None = None) -> int:
    """The engine's cursor rule: the time in long-poll-sized buckets, always past the
    request's."""
    t = (now if now is not None else time.time()) - CURSOR_EPOCH
    value = -(-int(t) // CURSOR_INTERVAL) * CURSOR_INTERVAL
    if value <= request_cursor:
        return request_cursor + random.randint(1, 3600)
    return value
