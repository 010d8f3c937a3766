"""A bounded in-memory cache of engine responses that the engine says may be shared.

Why it is safe to share: the key is the upstream request the proxy built *after* the policy
ran (the enforced `where` with its bound claim values is in the URL, plus the few request
headers that change the answer), so two users share an entry only when the engine would have
given them the same bytes. The engine never sees user identity, so its response headers are
not per-user either; the proxy's per-client headers (CORS, request id, Vary) are added per
response, after the lookup.

What is kept: complete `200` answers to GET requests whose `cache-control` is `public` with
a positive `s-maxage`/`max-age` (Electric's `offset=-1` snapshot chunks, non-live catch-up
chunks, and live answers), for that long and no longer; live answers at most `live_max_age`
(Electric sends 5 s; the cursor in the next URL moves on anyway). Never kept: errors, 409
must-refetch answers, `no-store`/`no-cache`/`private` answers, SSE, POST subsets, bodies larger
than the entry limit. Bounded by bytes (LRU among live entries), expired entries dropped on
read and as new ones arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import TLRUCache
from multidict import CIMultiDictProxy

from proxy.upstream.headers import client_response_headers

#: What identifies an upstream answer: (method, URL text, accept-encoding, accept, if-none-match).
CacheKey = tuple[str, str, str, str, str]

#: Rough fixed cost of an entry (objects, key, header tuples) added to its body size.
_ENTRY_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A complete upstream answer, with headers already filtered for clients."""

    status: int
    reason: str | None
    headers: tuple[tuple[str, str], ...]
    cache_control: str  # the client-facing value
    body: bytes
    stored_at: float
    expires_at: float
    #: `headers` plus `Cache-Control`, built once: each hit copies it in one C call.
    response_headers: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        headers = client_response_headers(self.headers, self.cache_control)
        object.__setattr__(self, "response_headers", headers)

    @property
    def size(self) -> int:
        return len(self.body) + _ENTRY_OVERHEAD + sum(len(k) + len(v) for k, v in self.headers)


class ResponseCache:
    """Byte-bounded LRU of `CachedResponse`, each entry expiring at its own time.

    Used from the event loop thread only, so no lock (cachetools objects are not thread-safe).
    """

    def __init__(
        self,
        max_bytes: int,
        max_entry_bytes: int,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._timer = timer
        self._entries: TLRUCache[CacheKey, CachedResponse] = TLRUCache(
            maxsize=max(max_bytes, 1),
            ttu=lambda _key, value, _now: value.expires_at,
            timer=timer,
            getsizeof=lambda value: value.size,
        )

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes_used(self) -> int:
        return int(self._entries.currsize)

    def now(self) -> float:
        return self._timer()

    def get(self, key: CacheKey) -> CachedResponse | None:
        if not self.enabled:
            return None
        return self._entries.get(key)

    def put(self, key: CacheKey, entry: CachedResponse) -> bool:
        """Keep `entry` unless it is too large or already expired; True when stored."""
        if not self.enabled or entry.size > self.max_entry_bytes:
            return False
        if entry.expires_at <= self._timer():
            return False
        self._entries.expire()
        self._entries[key] = entry
        return True

    def clear(self) -> None:
        self._entries.clear()
