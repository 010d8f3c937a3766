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

`Hold` bounds one held request's wait: its deadline (the token's `exp` on the wall clock,
kept by `Deadlines`: no timer or task per held request) and its revocation
(`Forwarder.end_streams`). A request whose token is already past its
`exp` (accepted within its issuer's leeway) is still held `MIN_HOLD` seconds, so a client
without a fresh token does not spin on answers that end at once; and so that a request the
engine refuses (a 409 for a rotated handle, a 400) gets the engine's own answer.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from typing import Any, Protocol

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


class Expiring(Protocol):
    """A held answer `Deadlines` ends at its deadline."""

    def expire(self) -> None: ...


#: Deadlines are kept in buckets of a tenth of a second (a held answer ends at most that much
#: after its token's `exp`): every held client whose token expires in the same tenth shares
#: one loop timer.
TICKS_PER_SECOND = 10
#: The furthest deadline kept (seconds from now): a held answer lasts seconds (a long-poll,
#: an SSE stream's life), so one whose token expires later than this is ended by the engine
#: or the client long before; the bound keeps a far `exp` a number of ticks an int holds.
HORIZON = 86400.0 * 366


class _Bucket:
    __slots__ = ("items", "timer")

    def __init__(self, timer: asyncio.TimerHandle) -> None:
        self.items: set[Expiring] = set()
        self.timer = timer


#: Empty buckets kept (each a timer and an empty set) while there are at most this many.
_LINGER = 64


class Deadlines:
    """Calls `expire()` on each registered held answer at its deadline (wall clock).

    Why not a loop timer, or an `asyncio.wait(..., timeout=)`, per held answer: at 10,000
    held clients every byte per client counts (issue 13, bars 2 and 4: RSS per held client
    <= 10 KB, a held long-poll <= 8 KB), and an `asyncio.wait` per held request (its coroutine
    frames, a waiter future, a timer, a done-callback) cost ~2.5 KB each (S8: 7.4 -> 9.9 KB per
    held long-poll, 9.3 -> 11.4 KB per SSE client). Here a held answer costs a set entry; one
    timer serves every answer whose deadline falls in the same tenth of a second (held clients
    of one user share a token, hence an `exp`). Event loop thread only.
    """

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}

    def add(self, at: float, item: Expiring) -> int:
        """Have `item.expire()` called at `at` (wall clock; rounded up to the next tick), or
        at `HORIZON` from now if that is sooner. Returns the key to `discard` it with.

        (A token's `exp` is any finite number when its issuer sets no `max_lifetime`: 1.7e308
        in tenths of a second is infinity, and every live request of that token was a 500.)"""
        key = math.ceil(min(at, time.time() + HORIZON) * TICKS_PER_SECOND)
        bucket = self._buckets.get(key)
        if bucket is None:
            delay = max(0.0, key / TICKS_PER_SECOND - time.time())
            timer = asyncio.get_running_loop().call_later(delay, self._fire, key)
            bucket = self._buckets[key] = _Bucket(timer)
        bucket.items.add(item)
        return key

    def discard(self, key: int, item: Expiring) -> None:
        """`item` no longer needs ending (answered, gone). A bucket left empty drops its timer
        once there are more than `_LINGER` buckets; until then it stays, timer and all, until
        its tick: a lone client's next live request (same token, same tick) made and
        cancelled a timer each time, ~5.5 of the fast lane's ~38 us (perf, issue 13 bar 4)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        bucket.items.discard(item)
        if not bucket.items and len(self._buckets) > _LINGER:
            del self._buckets[key]
            bucket.timer.cancel()

    def __len__(self) -> int:
        """Held answers registered now."""
        return sum(len(b.items) for b in self._buckets.values())

    def _fire(self, key: int) -> None:
        bucket = self._buckets.pop(key, None)
        if bucket is not None:
            for item in list(bucket.items):
                item.expire()


class HoldEnded(Exception):
    """A held request's hold ended before the engine answered it."""


class Hold:
    """One held request's wait for the engine: over at its token's expiry (`deadline`, wall
    clock; None: no token, never before `MIN_HOLD` from now), at `ceiling` (wall clock: the
    most a response may last, whatever the token) or at `expire()` (access revoked:
    `Forwarder.end_streams`), whichever comes first. Give it back with `release()`."""

    __slots__ = ("_deadlines", "_key", "over", "waking")

    def __init__(
        self, deadline: float | None, deadlines: Deadlines, ceiling: float | None = None
    ) -> None:
        #: Whether the hold has ended.
        self.over = False
        #: The future its request awaits now, completed when the hold ends.
        self.waking: asyncio.Future[Any] | None = None
        self._deadlines = deadlines
        self._key: int | None = None
        at = None if deadline is None else max(deadline, time.time() + MIN_HOLD)
        if ceiling is not None:
            at = ceiling if at is None else min(at, ceiling)
        if at is not None:
            self._key = deadlines.add(at, self)

    def expire(self) -> None:
        """End the hold: the request waiting within it is woken (`wait` returns False)."""
        self.over = True
        self.release()
        waking = self.waking
        if waking is not None and not waking.done():
            waking.set_result(None)

    def release(self) -> None:
        """The request no longer waits (answered, gone): its deadline is dropped."""
        if self._key is not None:
            self._deadlines.discard(self._key, self)
            self._key = None

    async def wait(self, waiting: asyncio.Future[Any]) -> bool:
        """Wait for `waiting` within the hold: True if it is done, False if the hold ended
        first (`waiting` is then left to the caller, not cancelled). (A waiter awaiting a
        future of its own sets `waking` to it instead: `collapsing.settled`.)"""
        if waiting.done():
            return True
        if self.over:
            return False
        self.waking = asyncio.get_running_loop().create_future()
        waiting.add_done_callback(self._woken)
        try:
            await self.waking
        finally:
            self.waking = None
            waiting.remove_done_callback(self._woken)
        return waiting.done()

    def _woken(self, _: asyncio.Future[Any]) -> None:
        waking = self.waking
        if waking is not None and not waking.done():
            waking.set_result(None)


def ended_long_poll(url: URL, method: str, cache_control: str) -> Response | None:
    """The answer to a long-poll at `url` the proxy ends itself (the token's `exp`, a
    reload that revoked it): no rows, its own handle and offset, a fresh cursor, and *no*
    up-to-date. None if `url` names no handle and log offset (the engine holds no such
    request). `cache_control` is the client-facing value of `LIVE_CACHE_CONTROL`
    (`Forwarder.cache_control`).

    Not the engine's timeout answer, which says up-to-date with `global_last_seen_lsn`: the
    engine says that only at its log's tip, where transactions are whole, and the proxy
    cannot tell the tip from an offset inside a transaction larger than a chunk (read live
    one chunk per request). Claimed there, the client showed half a transaction as up to
    date and pglite-sync, trusting the watermark, dropped the rest of it for good (chaos
    probe). Without it the client, still live, asks again from the same offset."""
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
    body = b"[]"
    engine_headers = [
        ("electric-handle", handle),
        ("electric-offset", offset),
        ("electric-has-data", "false"),
        ("electric-cursor", str(next_cursor(cursor))),
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
