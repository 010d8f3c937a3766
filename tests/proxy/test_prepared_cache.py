"""`Runtime.prepared` (`PreparedCache`) forgets what `cachetools.LRUCache` forgot (pure).

The fast lane reads a hit as `cache[key]` then `cache.move_to_end(key)`; the slow path uses
`get` and `cache[key] = ...`. Random reads and writes both ways, against an `LRUCache` of the
same size: the same answers, and the same entries kept, in the same order of use.
"""

from __future__ import annotations

import random

import pytest
from cachetools import LRUCache

from proxy.runtime import PreparedCache


@pytest.mark.parametrize("seed", range(4))
def test_the_same_entries_as_an_lru_cache(seed: int) -> None:
    rng = random.Random(seed)
    ours: PreparedCache = PreparedCache(8)
    theirs: LRUCache[tuple[bytes, str, str], object] = LRUCache(maxsize=8)
    for step in range(3000):
        key = (b"digest", "", f"q={rng.randrange(14)}")
        action = rng.random()
        if action < 0.4:
            value = object()
            ours[key] = value  # type: ignore[assignment]
            theirs[key] = value
        elif action < 0.7:
            assert ours.get(key) is theirs.get(key), step
        elif action < 0.98:  # (as `proxy.http.fastlane` reads it)
            try:
                got = ours[key]
            except KeyError:
                got = None
            else:
                ours.move_to_end(key)
            try:
                expected = theirs[key]
            except KeyError:
                expected = None
            assert got is expected, step
        else:
            ours.clear()
            theirs.clear()
        assert len(ours) == len(theirs) <= 8
        # The order of use: the next evicted first.
        assert list(ours) == list(theirs._LRUCache__order), step  # type: ignore[attr-defined]
