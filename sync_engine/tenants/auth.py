"""Check a request's `source_id` + secret; same answer and same work whatever is wrong.

Wrong secret, missing secret, unknown or malformed source id: all the same `Unauthorized`.
The secret is checked against exactly two scrypt hashes every time (the current one and
the previous one during a rotation's grace period, padded with a dummy hash; a dummy pair
for unknown sources), so timing does not tell which sources exist.

scrypt is deliberately slow, and a proxy sends the secret on every request, so a secret that
verified is remembered in memory by an HMAC fingerprint (keyed per process) together with
the hash it matched; the memory is consulted only while that hash is still valid, so
rotation and grace expiry take effect at once. Checks that miss this memory run in worker
threads, at most `concurrency` at a time, so a flood of wrong secrets costs bounded CPU and
does not block the event loop or requests with known-good secrets. Checks waiting for a
thread take turns by source (every unknown source id counts as one): a flood of wrong
secrets for one source, or for made-up ids, queues behind itself, not in front of the first
request of another source's new client.
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
from contextlib import asynccontextmanager

from .credentials import hash_secret, new_secret, verify_secret
from .store import SourceRecord

_CACHE_MAX = 10_000


class SourceAuth:
    def __init__(self, concurrency: int = 2) -> None:
        self._dummy: tuple[str, str] | None = None
        self._key = os.urandom(32)
        self._verified: dict[bytes, str] = {}
        self._concurrency = concurrency
        self._running = 0
        # Waiting checks by source; the dict's order is the turn order (round robin).
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}

    async def prepare(self) -> None:
        """Make the dummy hashes (scrypt work, so in a thread and once)."""
        if self._dummy is None:
            self._dummy = await asyncio.to_thread(_dummy_hashes)

    async def check(
        self, record: SourceRecord | None, secret: str | None, now: float | None = None
    ) -> bool:
        """True when `secret` is a valid secret of `record` (None: unknown source)."""
        return await self.matched(record, secret, now) is not None

    async def matched(
        self, record: SourceRecord | None, secret: str | None, now: float | None = None
    ) -> str | None:
        """The hash of `record` that `secret` matches and that is valid now, else None."""
        now = time.time() if now is None else now
        given = secret or ""
        source_id = record.source_id if record is not None else ""
        fp = hmac.new(self._key, f"{source_id}\0{given}".encode(), hashlib.sha256).digest()
        valid = record.valid_hashes(now) if record is not None else []
        remembered = self._verified.get(fp)
        if remembered is not None and remembered in valid:
            return remembered
        await self.prepare()
        assert self._dummy is not None
        candidates = [*valid, *self._dummy][:2]
        async with self._turn(source_id):
            results = await asyncio.to_thread(_verify_all, given, candidates)
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


def _dummy_hashes() -> tuple[str, str]:
    return hash_secret(new_secret()), hash_secret(new_secret())


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
