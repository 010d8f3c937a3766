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
than the entry limit, non-live answers that reach the tip (`electric-up-to-date`: the next
write makes them stale, while a full chunk never changes), and answers of a handle known to be
dead. Bounded by bytes (LRU among live entries), expired entries dropped on read and as new
ones arrive.

Coherence: entries are indexed by the engine's handle and by shape definition. An answer to
`offset=-1` (or `now`) is "initial": which handle it names depends on the engine's current
shape for the definition, which a TRUNCATE or DELETE changes, so the forwarder revalidates
it with the engine (`If-None-Match`, a 304 costs no body) before serving it. When the engine
shows a shape was rotated (a 409 for a handle, a DELETE, a different handle for the same
definition at `offset=-1`), `retire` / `evict_definition` drop every answer of the dead
handle and the initial answers of the definition at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache, TLRUCache
from multidict import CIMultiDictProxy

from proxy.upstream.headers import client_response_headers

#: What identifies an upstream answer: (method, and "private" when it is its caller's only;
#: URL text, accept-encoding, accept, if-none-match).
CacheKey = tuple[str, str, str, str, str]

#: Rough fixed cost of an entry (its objects, the LRU's and the indexes' slots) added to
#: the bytes it holds.
_ENTRY_OVERHEAD = 1024
#: A key's text counts this many times: the entry's own, and the keys of dropped entries the
#: indexes keep until their next prune (`_prune`: up to twice as many as there are entries).
_KEY_COPIES = 3
#: How many dead handles are remembered (handles are never reused; a few KB).
_RETIRED_HANDLES = 4096


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
    handle: str | None = None  # the engine's electric-handle
    definition: str | None = None  # `upstream.url.definition_key` of the request
    initial: bool = False  # an answer to offset=-1 / now: revalidate before serving
    etag: str | None = None
    #: `headers` plus `Cache-Control`, built once: each hit copies it in one C call.
    response_headers: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)
    #: What its key costs (`ResponseCache.put` sets it: the key is not part of the entry).
    key_bytes: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        headers = client_response_headers(self.headers, self.cache_control)
        object.__setattr__(self, "response_headers", headers)

    @property
    def size(self) -> int:
        """The bytes the entry holds, as the cache's bound counts them: body, headers twice
        (the tuples and `response_headers`), the strings it keeps, and its key. Counting the
        body and headers only, an entry with a 7.8 KB URL (a long cache-buster) held ~44 KB
        for ~1.8 KB counted, so the byte cap did not bound memory (attack 11:12)."""
        return (
            len(self.body)
            + _ENTRY_OVERHEAD
            + 2 * sum(len(k) + len(v) for k, v in self.headers)
            + len(self.cache_control)
            + len(self.definition or "")
            + len(self.handle or "")
            + len(self.etag or "")
            + self.key_bytes
        )


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
        # Indexes for eviction. Keys the LRU dropped on its own linger until the next prune.
        self._by_handle: dict[str, set[CacheKey]] = {}
        self._by_definition: dict[str, set[CacheKey]] = {}
        self._indexed = 0
        #: (definition, handle) pairs the engine said are gone (409, DELETE): their answers
        #: are never kept again. By pair, not by handle alone: a 409 answers a request that
        #: named a handle for a definition, and a caller who names another caller's handle
        #: with its own definition gets a 409 too (a mismatch), which says nothing about the
        #: other caller's shape and must not stop its answers being cached.
        self._retired: LRUCache[tuple[str | None, str], bool] = LRUCache(maxsize=_RETIRED_HANDLES)
        #: Handles deleted by a handle-only DELETE (`retire_handle`): gone whatever the
        #: definition their answers were stored under.
        self._retired_handles: LRUCache[str, bool] = LRUCache(maxsize=_RETIRED_HANDLES)

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
        """Keep `entry` unless it is too large, expired or of a dead handle; True when stored."""
        key_bytes = _KEY_COPIES * sum(len(part) for part in key)
        object.__setattr__(entry, "key_bytes", key_bytes)
        if not self.enabled or entry.size > self.max_entry_bytes:
            return False
        if entry.expires_at <= self._timer():
            return False
        if entry.handle is not None and (
            (entry.definition, entry.handle) in self._retired
            or entry.handle in self._retired_handles
        ):
            return False
        self._entries.expire()
        self._entries[key] = entry
        if entry.handle is not None:
            self._by_handle.setdefault(entry.handle, set()).add(key)
        if entry.definition is not None:
            self._by_definition.setdefault(entry.definition, set()).add(key)
        self._indexed += 1
        # (a small slack: with +256 a cache of few long-keyed entries kept 256 dropped keys)
        if self._indexed > 2 * len(self._entries) + 16:
            self._prune()
        return True

    def _drop(self, key: CacheKey) -> None:
        """Delete the entry of `key`, found alive a moment ago. Not `del`: cachetools'
        `TLRUCache.__delitem__` reads its clock again and raises KeyError (after deleting)
        for an entry that expired since the look, which escaped `Forwarder.head` as the
        engine's answer's failure: a 502 for every client collapsed on an engine 409 of a
        rotated shape, a 500 uncollapsed (chaos seed 979). `pop` reads the clock once:
        an entry expired by then is left for the cache's own expiry."""
        self._entries.pop(key, None)

    def retired(self, definition: str | None, handle: str) -> bool:
        return (definition, handle) in self._retired or handle in self._retired_handles

    def retire_handle(self, handle: str) -> int:
        """A handle-only DELETE (`DELETE /v1/shape?handle=H`, no definition) succeeded: the
        engine deleted H whatever its shape, so drop every answer of H under any definition,
        those definitions' initial answers (they name H), and never keep an answer of H
        again. `retire` keys by (definition, handle) and the DELETE's definition is a
        synthetic one no answer has, so it dropped nothing. Returns how many were dropped."""
        self._retired_handles[handle] = True
        dropped = 0
        definitions: set[str] = set()
        for key in list(self._by_handle.pop(handle, set())):
            entry = self._entries.get(key)
            if entry is None:
                continue
            self._drop(key)
            dropped += 1
            if entry.definition is not None:
                definitions.add(entry.definition)
        for definition in definitions:
            dropped += self.evict_definition(definition, initial_only=True)
        return dropped

    def retire(self, definition: str | None, handle: str) -> int:
        """The engine says `handle` of `definition` is gone: drop its answers and the
        definition's initial answers, and never keep an answer of it again. Answers of the
        handle under another definition (there are none, unless a request named a handle
        that was not its shape's) are left alone. Returns how many were dropped."""
        self._retired[(definition, handle)] = True
        dropped = 0
        keys = self._by_handle.get(handle, set())
        for key in list(keys):
            entry = self._entries.get(key)
            if entry is None:
                keys.discard(key)
            elif entry.definition == definition:
                self._drop(key)
                keys.discard(key)
                dropped += 1
        if not keys:
            self._by_handle.pop(handle, None)
        if dropped and definition is not None:
            dropped += self.evict_definition(definition, initial_only=True)
        return dropped

    def evict_definition(
        self, definition: str, *, keep_handle: str | None = None, initial_only: bool = False
    ) -> int:
        """Drop the answers of one shape definition: all of them, those of handles other than
        `keep_handle` (the engine's current one), or only the initial answers."""
        keys = self._by_definition.get(definition)
        if not keys:
            return 0
        dropped = 0
        for key in list(keys):
            entry = self._entries.get(key)
            if entry is None:
                keys.discard(key)
                continue
            if initial_only and not entry.initial:
                continue
            if keep_handle is not None and entry.handle == keep_handle:
                continue
            self._drop(key)
            keys.discard(key)
            dropped += 1
        if not keys:
            del self._by_definition[definition]
        return dropped

    def handles_of(self, definition: str) -> set[str]:
        """The handles of the cached answers of `definition`."""
        handles = set()
        for key in self._by_definition.get(definition, ()):
            entry = self._entries.get(key)
            if entry is not None and entry.handle is not None:
                handles.add(entry.handle)
        return handles

    def _prune(self) -> None:
        """Forget index entries whose answers the LRU or the TTL already dropped."""
        for index in (self._by_handle, self._by_definition):
            for name in list(index):
                alive = {key for key in index[name] if key in self._entries}
                if alive:
                    index[name] = alive
                else:
                    del index[name]
        self._indexed = len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._by_handle.clear()
        self._by_definition.clear()
        self._indexed = 0
