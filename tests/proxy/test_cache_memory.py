"""The response cache's byte bound bounds the memory it holds, long URLs included (attack 11:12).

Each entry's counted size was its body, its headers and a fixed 1,024 bytes; the key (the
rewritten engine URL, up to the 8 KB target limit, e.g. a long `cache-buster`), the definition
string and the keys the per-handle / per-definition indexes keep until their next prune were
not counted. With 7.8 KB cache-busters the proxy held ~44 KB per entry while counting ~1.8 KB,
so a 64 MiB cap allowed ~1.5 GB. Measured here with tracemalloc around the cache alone: what
it holds after many such entries must stay within 1.5 times its cap (old code: 7.6x, now 0.65x).
"""

from __future__ import annotations

import gc
import tracemalloc

from proxy.upstream.cache import CachedResponse, ResponseCache

_HEADERS = (
    ("electric-handle", "12345678-1733400000000000"),
    ("electric-offset", "0_inf"),
    ("electric-schema", '{"id":{"type":"int4","pk_index":0},"title":{"type":"text"}}'),
    ("etag", '"12345678-1733400000000000:-1:0_inf"'),
    ("content-type", "application/json"),
)


def _entry(i: int, now: float) -> CachedResponse:
    return CachedResponse(
        status=200, reason="OK", headers=_HEADERS,
        cache_control="public, max-age=604800, s-maxage=3600",
        body=b'[{"key":"x","value":{"id":"1"},"headers":{"operation":"insert"}}]' * 5,
        stored_at=now, expires_at=now + 3600, handle="12345678-1733400000000000",
        definition=f'[null,"public.items","id = 1",null,null,null,"default","full",{i % 3}]',
        initial=True, etag='"12345678-1733400000000000:-1:0_inf"',
    )  # fmt: skip


def test_the_cap_bounds_what_long_url_entries_really_hold() -> None:
    cap = 2_000_000
    cache = ResponseCache(cap, cap, timer=lambda: 1.0)
    buster = "x" * 7_800
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i in range(3_000):
            url = f"http://engine/v1/shape?table=items&offset=-1&where=id%3D1&cache-buster={i:08d}{buster}"
            assert cache.put(("GET", url, "gzip", "*/*", ""), _entry(i, 1.0))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert cache.bytes_used <= cap
    assert held < 1.5 * cap, f"the cache holds {held / 1e6:.1f} MB for a cap of {cap / 1e6:.1f} MB"
