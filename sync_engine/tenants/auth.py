"""Check a request's `source_id` + secret; same answer and same work whatever is wrong.

Wrong secret, missing secret, unknown or malformed source id: all the same `Unauthorized`.
The secret is checked against exactly two hashes every time (the current one and the
previous one during a rotation's grace period, padded with a dummy hash; a dummy pair for
unknown sources), so timing does not tell which sources exist.

Secrets issued now are stored as salted SHA-256 (credentials.py): checked on the event
loop in microseconds, nothing queues. Secrets issued before schema 4 are scrypt hashes
until the source's secret is rotated. While any source has one, the dummies are scrypt
hashes too (`slow_dummies`), so that a made-up id costs what a real one does, as before;
checking against a scrypt hash is ~50 ms of CPU, so:

- a secret that verified is remembered in memory by an HMAC fingerprint (keyed per
  process) together with the hash it matched; the memory is consulted only while that hash
  is still valid, so rotation and grace expiry take effect at once. A request with a
  remembered secret never waits for a check.
- the other checks run in a small executor of their own (not the event loop's default one,
  which the replicator's fsyncs use), at most `concurrency` at a time. Identical checks
  waiting at once (a proxy's many requests with the same secret after a restart) share one.
- checks waiting for a thread take turns by source (every unknown source id counts as one),
  so a flood of wrong secrets for one source, or for made-up ids, queues behind itself, not
  in front of another source's new client;
- and the queue is bounded: past `max_waiting_per_source` checks of a source waiting or
  running, or `max_waiting` in all, a request is refused at once (`Overloaded`, a 503 with
  Retry-After), so a flood cannot grow memory or the wait without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from .credentials import hash_secret, is_slow, new_secret, verify_secret
from .store import SourceRecord

_CACHE_MAX = 10_000
#: Waiting slow checks allowed per source (every unknown id counts as one source) and in all.
MAX_WAITING_PER_SOURCE = 32
MAX_WAITING = 256


class Overloaded(Exception):
    """Too many slow secret checks are waiting: refuse the request now, ask for a retry."""


class SourceAuth:
    def __init__(
        self,
        concurrency: int = 2,
        max_waiting_per_source: int | None = None,
        max_waiting: int | None = None,
    ) -> None:
        self._dummy: tuple[str, str] = (hash_secret(new_secret()), hash_secret(new_secret()))
        self._slow_dummy: tuple[str, str] | None = None
        #: Pad with scrypt dummies (set while a source has a scrypt hash: `SourceManager`)
        self.slow_dummies = False
        self._key = os.urandom(32)
        self._verified: dict[bytes, str] = {}
        self._concurrency = concurrency
        # (the module's values, read now: a test may lower them)
        self._max_per_source = (
            MAX_WAITING_PER_SOURCE if max_waiting_per_source is None else max_waiting_per_source
        )
        self._max_waiting = MAX_WAITING if max_waiting is None else max_waiting
        self._running = 0
        # Slow checks not finished (waiting for a thread or in one), by source and in all
        self._active: dict[str, int] = {}
        self._active_total = 0
        self._executor: ThreadPoolExecutor | None = None
        # Waiting checks by source; the dict's order is the turn order (round robin).
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        # Slow checks in progress or waiting, by what they check: shared by identical ones.
        self._inflight: dict[tuple[bytes, tuple[str, ...]], asyncio.Task[list[bool]]] = {}
        self._sharing: dict[asyncio.Task[list[bool]], int] = {}

    async def prepare(self) -> None:
        """Make the scrypt dummy hashes if they are used (scrypt work: in a thread, once)."""
        if self.slow_dummies and self._slow_dummy is None:
            self._slow_dummy = await asyncio.to_thread(_slow_dummies)

    def close(self) -> None:
        """Stop the check threads (checks still waiting are not run)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def check(
        self, record: SourceRecord | None, secret: str | None, now: float | None = None
    ) -> bool:
        """True when `secret` is a valid secret of `record` (None: unknown source) at `now`
        (`time.monotonic()`, default now)."""
        return await self.matched(record, secret, now) is not None

    async def matched(
        self, record: SourceRecord | None, secret: str | None, now: float | None = None
    ) -> str | None:
        """The hash of `record` that `secret` matches and that is valid now, else None.
        Raises `Overloaded` when the check would have to wait and too many already do."""
        now = time.monotonic() if now is None else now
        given = secret or ""
        source_id = record.source_id if record is not None else ""
        fp = hmac.new(
            self._key, f"{source_id}\0{given}".encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        valid = record.valid_hashes(now) if record is not None else []
        remembered = self._verified.get(fp)
        if remembered is not None and remembered in valid:
            return remembered
        await self.prepare()
        dummy = self._slow_dummy if self.slow_dummies and self._slow_dummy else self._dummy
        candidates = [*valid, *dummy][:2]
        if any(is_slow(h) for h in candidates):
            results = await self._slow_check(source_id, fp, given, candidates)
        else:
            results = _verify_all(given, candidates)
        matched = next((h for h, ok in zip(candidates, results, strict=True) if ok), None)
        if matched is None or matched not in valid or not secret:
            return None
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()
        self._verified[fp] = matched
        return matched

    def forget(self) -> None:
        self._verified.clear()

    @property
    def waiting(self) -> int:
        """Checks waiting for a worker thread."""
        return sum(len(q) for q in self._queues.values())

    @property
    def active(self) -> int:
        """Slow checks waiting or running."""
        return self._active_total

    async def _slow_check(
        self, bucket: str, fp: bytes, given: str, candidates: list[str]
    ) -> list[bool]:
        key = (fp, tuple(candidates))
        task = self._inflight.get(key)
        if task is None:
            if self._active_total >= self._concurrency and (
                self._active_total >= self._max_waiting
                or self._active.get(bucket, 0) >= self._max_per_source
            ):
                raise Overloaded()
            self._active[bucket] = self._active.get(bucket, 0) + 1
            self._active_total += 1
            task = asyncio.ensure_future(self._run(bucket, given, candidates))
            self._inflight[key] = task
            self._sharing[task] = 0

            def done(t: asyncio.Task[list[bool]]) -> None:
                if self._inflight.get(key) is t:
                    del self._inflight[key]

            task.add_done_callback(done)
        self._sharing[task] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done() and self._sharing[task] == 1:
                if self._inflight.get(key) is task:  # nobody else waits for it: give
                    del self._inflight[key]  # its place in the queue up
                task.cancel()
            raise
        finally:
            self._sharing[task] -= 1
            if self._sharing[task] == 0:
                del self._sharing[task]

    async def _run(self, bucket: str, given: str, candidates: list[str]) -> list[bool]:
        try:
            async with self._turn(bucket):
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self._concurrency, thread_name_prefix="secret-check"
                    )
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, _verify_all, given, candidates)
        finally:
            self._active_total -= 1
            left = self._active[bucket] - 1
            if left:
                self._active[bucket] = left
            else:
                del self._active[bucket]

    @asynccontextmanager
    async def _turn(self, bucket: str) -> AsyncIterator[None]:
        """One of the `concurrency` worker slots, given out a source at a time in turn."""
        if self._running < self._concurrency and not self._queues:
            self._running += 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queues.setdefault(bucket, deque()).append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # handed a slot just as it was cancelled: pass it on
                else:
                    queue = self._queues.get(bucket)
                    if queue is not None and waiter in queue:
                        queue.remove(waiter)
                        if not queue:
                            del self._queues[bucket]
                raise
        try:
            yield
        finally:
            self._release(bucket)

    def _release(self, bucket: str | None = None) -> None:
        """Hand the slot to the first waiter of the next source in turn, or free it; the
        source (`bucket`) that had it waits for the others' turns first."""
        if bucket is not None and bucket in self._queues:
            self._queues[bucket] = self._queues.pop(bucket)
        while self._queues:
            bucket = next(iter(self._queues))
            queue = self._queues.pop(bucket)
            waiter = queue.popleft()
            if queue:
                self._queues[bucket] = queue  # its next waiter, after the other sources'
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: `_running` stays
                return
        self._running -= 1


def _slow_dummies() -> tuple[str, str]:
    return hash_secret(new_secret(), slow=True), hash_secret(new_secret(), slow=True)


def _verify_all(secret: str, hashes: list[str]) -> list[bool]:
    return [verify_secret(secret, h) for h in hashes]


def parse_source_id(text: str | None) -> str | None:
    """The canonical form of a uuid source id, or None when it is not one."""
    if not text or len(text) > 64:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def canonical_source_id(text: str | None) -> str | None:
    """`text` when it is a source id written as the engine writes them (a lower-case uuid
    with hyphens), else None. `/v1/shape` takes only that spelling: another one of the same
    uuid (upper case, braces, `urn:uuid:`, no hyphens) makes another URL, and so another
    entry in a CDN's or browser's cache for the same shape of the same source, and a proxy
    matching ids as text could be made to treat one source as two. Electric compares its
    `database_id` as text too; a request naming another spelling gets the 401 of an
    unknown source. (The admin API accepts any spelling: it answers with this one.)"""
    sid = parse_source_id(text)
    return sid if sid == text else None
