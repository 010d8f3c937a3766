"""Real path, cache on: an entry of the response cache that expires between the cache's look at
it and its delete must not turn the engine's answer into a 5xx.

cachetools' `TLRUCache.__delitem__` deletes an entry and then raises KeyError if it had expired
by its own reading of the clock (its `get` and `pop` read it once for the whole operation; a
`get` then a `del` read it twice). So an entry that `ResponseCache.retire` (the engine's 409 for
a rotated shape) found alive and that expired by the time it was deleted raised KeyError out of
`Forwarder.head`: the shared engine request's task died, and every client collapsed on it got
a 502 `upstream_error` where the engine (and a direct client) answered 409 (chaos seed 979,
`--proxy`: two live GETs 0.45 s after the engine rotated their shape, "Task exception was
never retrieved ... KeyError" in the proxy's log). On the direct path the same was a 500.

The race is made deterministic with the cache's clock: real time, except that the reading
cachetools takes in `__delitem__` is `_SKEW` seconds later, past every live answer's
lifetime, as if the entry expired just between the look and the delete.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from proxy.upstream.cache import ResponseCache
from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess

#: Seconds later that cachetools' delete sees the time (live answers are kept 5 s).
_SKEW = 60.0


def _skewed_clock() -> float:
    """`time.monotonic()`, or `_SKEW` seconds later when cachetools reads it to delete an
    entry (its `_Timer` entered from `__delitem__`, not within an operation that holds one
    reading for all its steps)."""
    now = time.monotonic()
    caller = sys._getframe(2)
    if caller.f_globals.get("__name__") == "cachetools" and caller.f_code.co_name == "__delitem__":
        return now + _SKEW
    return now


@pytest.fixture
def engine_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 5) g")
    engine = EngineProcess(
        db_url, tmp_path / "data", "--long-poll-timeout", "1", "--no-fsync", "--allow-delete"
    )
    engine.start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture(params=["collapsed", "direct"])
async def open_proxy(request: Any, engine_url: str, make_proxy: Any) -> Any:
    """config/examples/open.yaml (cache on; collapsing on, or off: one engine request per
    client), its cache on `_skewed_clock`."""
    proxy = await make_proxy(open_config(engine_url, collapse=request.param == "collapsed"))
    forwarder = proxy.app.forwarder
    old = forwarder.cache
    forwarder.cache = ResponseCache(old.max_bytes, old.max_entry_bytes, timer=_skewed_clock)
    return proxy


async def _cache_hits(proxy: Any) -> float:
    for line in (await proxy.get("/metrics")).body.decode().splitlines():
        if line.startswith('shape_proxy_response_cache_total{result="hit"}'):
            return float(line.split()[1])
    return 0.0


async def _direct(engine_url: str, method: str, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{engine_url}{path}") as resp:
            return resp.status, await resp.read()


async def test_a_rotated_shape_is_a_409_while_its_cached_answers_expire(
    open_proxy: Any, engine_url: str
) -> None:
    first = await open_proxy.get("/v1/shape?table=items&offset=-1")
    assert first.status == 200
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    tip = (await open_proxy.get(f"/v1/shape?table=items&offset={offset}&handle={handle}")).headers[
        "electric-offset"
    ]
    live = f"/v1/shape?table=items&offset={tip}&handle={handle}&live=true"
    # A live answer (the long-poll ends empty after 1 s), kept for its 5 s.
    assert (await open_proxy.get(f"{live}&cursor=1")).status == 200
    hits = await _cache_hits(open_proxy)
    assert (await open_proxy.get(f"{live}&cursor=1")).status == 200
    assert await _cache_hits(open_proxy) == hits + 1

    status, _ = await _direct(engine_url, "DELETE", f"/v1/shape?table=items&handle={handle}")
    assert status == 202  # the engine rotated the shape; the proxy has not seen it yet
    direct_status, direct_body = await _direct(engine_url, "GET", f"{live}&cursor=2")
    assert direct_status == 409

    # Two clients collapsed on one engine request, as in chaos seed 979: its 409 retires the
    # handle's cached answers, which expire as they are deleted.
    both = await asyncio.gather(*(open_proxy.get(f"{live}&cursor=3") for _ in range(2)))
    for reply in both:
        assert reply.status == 409, reply.body
        assert reply.body == direct_body


async def test_a_rotated_shapes_sse_request_is_a_409_while_its_cached_answers_expire(
    open_proxy: Any, engine_url: str
) -> None:
    """The same on the SSE path (a shared stream when collapsing is on)."""
    first = await open_proxy.get("/v1/shape?table=items&offset=-1")
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    tip = (await open_proxy.get(f"/v1/shape?table=items&offset={offset}&handle={handle}")).headers[
        "electric-offset"
    ]
    live = f"/v1/shape?table=items&offset={tip}&handle={handle}&live=true"
    assert (await open_proxy.get(f"{live}&cursor=1")).status == 200  # kept for its 5 s

    status, _ = await _direct(engine_url, "DELETE", f"/v1/shape?table=items&handle={handle}")
    assert status == 202
    sse = f"{live}&live_sse=true&cursor=2"
    direct_status, direct_body = await _direct(engine_url, "GET", sse)
    assert direct_status == 409
    reply = await open_proxy.get(sse)
    assert reply.status == 409, reply.body
    assert reply.body == direct_body


async def test_a_new_shape_is_a_200_while_the_old_ones_cached_answers_expire(
    open_proxy: Any, engine_url: str
) -> None:
    """The engine's fresh initial answer naming a new handle drops the old handle's cached
    answers (`evict_definition`): the same race there was a 5xx where the engine sent a 200."""
    first = await open_proxy.get("/v1/shape?table=items&offset=-1")
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    tip = (await open_proxy.get(f"/v1/shape?table=items&offset={offset}&handle={handle}")).headers[
        "electric-offset"
    ]
    live = f"/v1/shape?table=items&offset={tip}&handle={handle}&live=true&cursor=1"
    assert (await open_proxy.get(live)).status == 200  # kept for its 5 s

    status, _ = await _direct(engine_url, "DELETE", f"/v1/shape?table=items&handle={handle}")
    assert status == 202
    fresh = await open_proxy.get("/v1/shape?table=items&offset=-1")
    assert fresh.status == 200, fresh.body
    assert fresh.headers["electric-handle"] != handle
