"""Request collapsing and the response cache, against the fake engine (which counts requests).

Collapsing: identical upstream requests in flight together go to the engine once; every
waiting client gets the whole answer with its own per-client headers; different effective
shapes (different users' enforced filters) are never shared; failures reach every waiter; a
client leaving does not cancel the shared request while others wait, the last one does.
Cache: shareable complete answers are served from memory; errors and 409s are not kept.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from proxy.config.loader import build_config
from proxy.upstream.cache import CachedResponse, ResponseCache
from proxy.upstream.collapsing import WHOLE_BODY_LIMIT
from proxy.upstream.headers import shared_ttl
from tests.proxy.proxy_fakes import ORIGIN
from tests.support.waiting import wait_until_async

SHAPE = "/v1/shape?table=items&offset=-1"
LIVE = "/v1/shape?table=items&offset=0_0&handle=h-1&live=true&cursor=1"


def _live_requests(proxy: Any) -> list[Any]:
    return [r for r in proxy.engine.requests if r.url.query.get("live") == "true"]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _metrics(proxy: Any) -> str:
    return (await proxy.get("/metrics")).body.decode()


async def _until_joined(proxy: Any, count: int) -> None:
    """Wait until `count` clients joined an engine request already in flight."""

    async def joined() -> bool:
        return _metric(await _metrics(proxy), "shape_proxy_collapsed_requests_total") >= count

    await wait_until_async(joined, message=f"{count} clients joining the flight")


async def test_fifty_identical_long_polls_make_one_upstream_request(proxy: Any) -> None:
    proxy.engine.hold = 0.5
    token = proxy.tokens.make()
    replies = await asyncio.gather(*(proxy.get(LIVE, token=token) for _ in range(50)))
    assert len(_live_requests(proxy)) == 1
    assert all(r.status == 200 for r in replies)
    assert {r.body for r in replies} == {b'[{"headers":{"control":"up-to-date"}}]'}
    assert all(r.headers["electric-cursor"] == "123" for r in replies)
    # Each client has its own request id: the proxy's headers are per client.
    assert len({r.headers["X-Request-Id"] for r in replies}) == 50
    text = await _metrics(proxy)
    # Each of the 49 others joined the one engine request, or (one that came after its
    # answer, on a loaded machine) was served that answer from the cache.
    collapsed = _metric(text, "shape_proxy_collapsed_requests_total")
    hits = _metric(text, 'shape_proxy_response_cache_total{result="hit"}')
    assert collapsed + hits == 49, (collapsed, hits)
    assert _metric(text, "shape_proxy_upstream_requests_total") == 1


async def test_a_shared_engine_request_carries_no_clients_own_headers(proxy: Any) -> None:
    """A collapsed engine request went out with its first client's User-Agent and trace
    headers: behind a cache tier that refuses a 9 KB User-Agent (nginx), every client that
    joined got that refusal (attack 05:06). A request that others may join carries none of
    them (the engine reads none for its answer)."""
    proxy.engine.hold = 0.5
    token = proxy.tokens.make()
    own = {"User-Agent": "x" * 9000, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
           "tracestate": "a=b"}  # fmt: skip
    replies = await asyncio.gather(
        proxy.get(LIVE, token=token, headers=own), proxy.get(LIVE, token=token)
    )
    assert [r.status for r in replies] == [200, 200]
    (seen,) = _live_requests(proxy)
    assert not {"user-agent", "traceparent", "tracestate"} & {k.lower() for k in seen.headers}
    reply = await proxy.get(SHAPE, token=token, headers=own)  # (a flight too, if alone)
    assert reply.status == 200
    assert "User-Agent" not in proxy.engine.requests[-1].headers


async def test_a_clients_own_engine_request_carries_its_trace_context(
    make_proxy: Any, config_data: Any, environ: Any
) -> None:
    config_data["collapse"] = False
    config_data["cache"] = {"max_bytes": 0}
    proxy = await make_proxy(build_config(config_data, environ))
    trace = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "User-Agent": "app/1"}
    assert (await proxy.get(SHAPE, token=proxy.tokens.make(), headers=trace)).status == 200
    (seen,) = proxy.engine.requests
    assert seen.headers["traceparent"] == trace["traceparent"]
    assert seen.headers["User-Agent"] == "app/1"


async def test_users_with_the_same_effective_shape_share(proxy: Any) -> None:
    """Different tokens, same org claim: the upstream URL is the same, so one request."""
    proxy.engine.hold = 0.5
    alice = proxy.tokens.make(sub="alice", org_id="org-a")
    carol = proxy.tokens.make(sub="carol", org_id="org-a")
    await asyncio.gather(proxy.get(LIVE, token=alice), proxy.get(LIVE, token=carol))
    assert len(_live_requests(proxy)) == 1


async def test_different_orgs_are_never_collapsed_together(proxy: Any) -> None:
    proxy.engine.hold = 0.5
    alice = proxy.tokens.make(sub="alice", org_id="org-a")
    bob = proxy.tokens.make(sub="bob", org_id="org-b")
    calls = [proxy.get(LIVE, token=t) for t in (alice, bob) for _ in range(5)]
    replies = await asyncio.gather(*calls)
    assert all(r.status == 200 for r in replies)
    seen = _live_requests(proxy)
    assert len(seen) == 2
    assert sorted(r.url.query["params[1]"] for r in seen) == ["org-a", "org-b"]
    # ... nor served from each other's cache entries.
    await proxy.get(SHAPE, token=alice)
    await proxy.get(SHAPE, token=bob)
    initial = [r for r in proxy.engine.requests if r.url.query.get("offset") == "-1"]
    assert sorted(r.url.query["params[1]"] for r in initial) == ["org-a", "org-b"]


async def test_per_client_headers_are_not_shared(proxy: Any) -> None:
    proxy.engine.hold = 0.3
    token = proxy.tokens.make()
    with_origin, without = await asyncio.gather(
        proxy.get(
            LIVE, token=token, headers={"Origin": ORIGIN, "X-Request-Id": "client-a-request-0001"}
        ),
        proxy.get(LIVE, token=token, headers={"X-Request-Id": "client-b-request-0002"}),
    )
    assert len(_live_requests(proxy)) == 1
    assert with_origin.headers["X-Request-Id"] == "client-a-request-0001"
    assert without.headers["X-Request-Id"] == "client-b-request-0002"
    assert with_origin.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Access-Control-Allow-Origin" not in without.headers
    # (both vary with Origin under listed origins: the one without Origin has no CORS
    # headers because it had none, which a shared cache must not hand to a browser; attack
    # 07:51)
    assert "origin" in with_origin.headers["Vary"].lower()
    assert "origin" in without.headers["Vary"].lower()
    for reply in (with_origin, without):
        assert reply.headers["Cache-Control"].startswith("private")


async def test_upstream_failure_reaches_every_waiter(
    make_proxy: Any, config_data: Any, environ: Any
) -> None:
    config_data["upstream"]["first_byte_timeout"] = 0.5
    proxy = await make_proxy(build_config(config_data, environ))
    proxy.engine.delay_headers = 3
    token = proxy.tokens.make()
    replies = await asyncio.gather(*(proxy.get(SHAPE, token=token) for _ in range(10)))
    assert [r.status for r in replies] == [504] * 10
    assert all(r.json()["code"] == "upstream_timeout" for r in replies)
    assert len(proxy.engine.requests) == 1


async def test_engine_errors_reach_every_waiter_and_are_not_cached(proxy: Any) -> None:
    token = proxy.tokens.make()
    for status in (409, 400, 500):
        proxy.engine.requests.clear()
        proxy.engine.status = status
        proxy.engine.delay_headers = 0.2  # so the first wave overlaps
        first = await asyncio.gather(*(proxy.get(SHAPE, token=token) for _ in range(5)))
        assert [r.status for r in first] == [status] * 5
        assert len(proxy.engine.requests) == 1
        proxy.engine.delay_headers = 0
        again = await proxy.get(SHAPE, token=token)
        assert again.status == status
        assert len(proxy.engine.requests) == 2, f"{status} was served from the cache"
    text = await _metrics(proxy)
    assert _metric(text, 'shape_proxy_response_cache_total{result="hit"}') == 0


async def test_a_client_leaving_does_not_cancel_the_shared_request(proxy: Any) -> None:
    proxy.engine.hold = 1.0
    headers = {"Authorization": f"Bearer {proxy.tokens.make()}"}
    url = proxy.client.make_url(LIVE)
    async with aiohttp.ClientSession() as leaver, aiohttp.ClientSession() as stayer:
        gone = asyncio.create_task(leaver.get(url, headers=headers))
        kept = asyncio.create_task(stayer.get(url, headers=headers))
        await asyncio.wait_for(proxy.engine.started.wait(), 5)
        await _until_joined(proxy, 1)  # one started the engine request, the other joined it
        gone.cancel()
        await leaver.close()
        async with await kept as resp:
            assert resp.status == 200
            assert await resp.read() == b'[{"headers":{"control":"up-to-date"}}]'
    assert proxy.engine.cancelled == []
    assert len(_live_requests(proxy)) == 1


async def test_the_last_client_leaving_cancels_the_shared_request(proxy: Any) -> None:
    proxy.engine.hold = 30
    headers = {"Authorization": f"Bearer {proxy.tokens.make()}"}
    url = proxy.client.make_url(LIVE)
    session = aiohttp.ClientSession()
    tasks = [asyncio.create_task(session.get(url, headers=headers)) for _ in range(3)]
    await asyncio.wait_for(proxy.engine.started.wait(), 5)
    await _until_joined(proxy, 2)
    for task in tasks:
        task.cancel()
    await session.close()
    for _ in range(100):
        if proxy.engine.cancelled:
            break
        await asyncio.sleep(0.05)
    assert len(proxy.engine.cancelled) == 1
    assert len(_live_requests(proxy)) == 1


async def test_large_chunk_is_streamed_to_every_waiter(proxy: Any) -> None:
    # Twice the size read whole: streamed to the waiters as it comes (an engine chunk is
    # ~10 MiB; any body past WHOLE_BODY_LIMIT takes the same path, at a fifth of the cost).
    proxy.engine.body_size = 2 * WHOLE_BODY_LIMIT
    proxy.engine.delay_headers = 0.2
    token = proxy.tokens.make()
    replies = await asyncio.gather(*(proxy.get(SHAPE, token=token) for _ in range(5)))
    assert len(proxy.engine.requests) == 1
    assert all(r.status == 200 for r in replies)
    assert len(replies[0].body) > 2 * WHOLE_BODY_LIMIT
    assert len({r.body for r in replies}) == 1
    assert replies[0].body.endswith(b'{"headers": {"control": "up-to-date"}}]')
    # The chunk is now cached (it fits under max_entry_bytes): the next client costs the
    # engine a conditional request (is h-1 still the shape's handle?) and a body-less 304.
    again = await proxy.get(SHAPE, token=token)
    assert again.body == replies[0].body and len(proxy.engine.requests) == 2
    assert proxy.engine.requests[-1].headers["If-None-Match"] == '"h-1:-1:0_0"'


async def test_second_client_of_initial_chunk_is_served_from_cache(proxy: Any) -> None:
    alice = proxy.tokens.make(sub="alice")
    carol = proxy.tokens.make(sub="carol")  # same org: same effective shape
    first = await proxy.get(SHAPE, token=alice)
    second = await proxy.get(SHAPE, token=carol, headers={"Origin": ORIGIN})
    assert first.status == second.status == 200
    assert first.body == second.body
    assert len(proxy.engine.requests) == 2  # the second one a conditional GET, answered 304
    assert "If-None-Match" not in proxy.engine.requests[0].headers
    assert proxy.engine.requests[1].headers["If-None-Match"] == '"h-1:-1:0_0"'
    assert second.headers["electric-handle"] == "h-1"
    assert second.headers["Cache-Control"] == "private, max-age=60, stale-while-revalidate=60"
    assert second.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert second.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    text = await _metrics(proxy)
    assert _metric(text, 'shape_proxy_response_cache_total{result="hit"}') == 1
    assert _metric(text, "shape_proxy_upstream_requests_total") == 2


async def test_cache_key_includes_accept_encoding(proxy: Any) -> None:
    token = proxy.tokens.make()
    await proxy.get(SHAPE, token=token)
    await proxy.get(SHAPE, token=token, headers={"Accept-Encoding": "gzip"})
    assert len(proxy.engine.requests) == 2


async def test_switching_both_off_restores_one_upstream_request_per_client(
    make_proxy: Any, config_data: Any, environ: Any
) -> None:
    config_data["collapse"] = False
    config_data["cache"] = {"max_bytes": 0}
    # (20 held at once on a loaded 2-core CI machine: 3 of them passed the fakes' 3 s
    # first_byte_timeout behind a 0.5 s hold; what is counted here is engine requests)
    config_data["upstream"]["first_byte_timeout"] = 15
    proxy = await make_proxy(build_config(config_data, environ))
    proxy.engine.hold = 0.5
    token = proxy.tokens.make()
    replies = await asyncio.gather(*(proxy.get(LIVE, token=token) for _ in range(20)))
    assert all(r.status == 200 for r in replies)
    assert len(_live_requests(proxy)) == 20
    await proxy.get(SHAPE, token=token)
    await proxy.get(SHAPE, token=token)
    assert len([r for r in proxy.engine.requests if r.url.query.get("offset") == "-1"]) == 2
    text = await _metrics(proxy)
    assert _metric(text, "shape_proxy_collapsed_requests_total") == 0
    assert _metric(text, 'shape_proxy_response_cache_total{result="hit"}') == 0


async def test_cache_alone_without_collapsing(
    make_proxy: Any, config_data: Any, environ: Any
) -> None:
    config_data["collapse"] = False
    proxy = await make_proxy(build_config(config_data, environ))
    token = proxy.tokens.make()
    await proxy.get(SHAPE, token=token)
    second = await proxy.get(SHAPE, token=token)
    assert second.status == 200 and len(proxy.engine.requests) == 2
    assert "If-None-Match" in proxy.engine.requests[1].headers  # revalidated, not re-sent


async def test_sse_clients_of_one_shape_share_one_engine_stream(proxy: Any) -> None:
    proxy.engine.hold = 0.3
    token = proxy.tokens.make()
    path = LIVE + "&live_sse=true"
    replies = await asyncio.gather(*(proxy.get(path, token=token) for _ in range(3)))
    assert all(r.status == 200 for r in replies)
    assert {r.body for r in replies} == {b'data: {"n":0}\n\ndata: {"n":1}\n\ndata: {"n":2}\n\n'}
    assert len(_live_requests(proxy)) == 1


async def test_an_sse_error_is_shared_only_by_identical_requests(proxy: Any) -> None:
    """A 409 (or any non-stream answer) is the answer to that request: clients at another
    offset ask the engine themselves."""
    proxy.engine.status = 409
    token = proxy.tokens.make()
    sse_path = "/v1/shape?table=items&handle=h-1&live=true&live_sse=true&cursor=1&offset="
    paths = [sse_path + "5_0", sse_path + "5_0", sse_path + "7_2"]
    replies = await asyncio.gather(*(proxy.get(p, token=token) for p in paths))
    assert [r.status for r in replies] == [409, 409, 409]
    assert all(r.json() == [{"headers": {"control": "must-refetch"}}] for r in replies)
    offsets = sorted(r.url.query["offset"] for r in _live_requests(proxy))
    assert offsets in (["5_0", "7_2"], ["5_0", "5_0", "7_2"])  # never a 7_2 answer for 5_0


async def test_sse_is_not_shared_when_collapsing_is_off(
    make_proxy: Any, config_data: Any, environ: Any
) -> None:
    config_data["collapse"] = False
    proxy = await make_proxy(build_config(config_data, environ))
    proxy.engine.hold = 0.3
    token = proxy.tokens.make()
    path = LIVE + "&live_sse=true"
    replies = await asyncio.gather(*(proxy.get(path, token=token) for _ in range(3)))
    assert all(r.status == 200 for r in replies)
    assert len(_live_requests(proxy)) == 3


# --- the cache on its own, with a controllable clock --------------------------------------


def _entry(body: bytes, now: float, ttl: float) -> CachedResponse:
    return CachedResponse(
        status=200, reason="OK", headers=(("electric-handle", "h"),), cache_control="private",
        body=body, stored_at=now, expires_at=now + ttl,
    )  # fmt: skip


def test_shared_ttl_follows_cache_control() -> None:
    initial = ["public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"]
    assert shared_ttl(initial, live=False, live_max_age=5) == 3600  # s-maxage wins
    assert shared_ttl(["public, max-age=60"], live=False, live_max_age=5) == 60
    assert (
        shared_ttl(["public, max-age=5, stale-while-revalidate=5"], live=True, live_max_age=5) == 5
    )
    assert shared_ttl(["public, max-age=60"], live=True, live_max_age=5) == 5  # live capped
    assert shared_ttl(["no-store"], live=False, live_max_age=5) == 0
    assert shared_ttl(["private, max-age=60"], live=False, live_max_age=5) == 0
    assert shared_ttl(["max-age=60"], live=False, live_max_age=5) == 0  # not marked public
    assert shared_ttl([], live=False, live_max_age=5) == 0
    assert shared_ttl(["public, max-age=x"], live=False, live_max_age=5) == 0


def test_cache_expires_entries_and_bounds_bytes() -> None:
    clock = [1000.0]
    cache = ResponseCache(10_000, 5_000, timer=lambda: clock[0])
    key_a = ("GET", "a", "", "", "")
    key_b = ("GET", "b", "", "", "")
    key_c = ("GET", "c", "", "", "")
    assert cache.put(key_a, _entry(b"a" * 3000, clock[0], 5))
    clock[0] += 4.9
    assert cache.get(key_a) is not None
    clock[0] += 0.2
    assert cache.get(key_a) is None  # expired after its max-age
    assert not cache.put(key_a, _entry(b"a" * 6000, clock[0], 60))  # larger than one entry may be
    assert cache.put(key_a, _entry(b"a" * 3500, clock[0], 60))
    assert cache.put(key_b, _entry(b"b" * 3500, clock[0], 60))
    assert cache.get(key_a) is not None  # a is now the most recently used
    assert cache.put(key_c, _entry(b"c" * 3500, clock[0], 60))
    assert cache.get(key_b) is None  # evicted: least recently used, over the byte bound
    assert cache.get(key_a) is not None and cache.get(key_c) is not None
    assert cache.bytes_used <= 10_000


def test_disabled_cache_keeps_nothing() -> None:
    cache = ResponseCache(0, 1024)
    assert not cache.enabled
    assert not cache.put(("GET", "a", "", "", ""), _entry(b"x", 0.0, 60))


# --- coherence: answers of a rotated shape are dropped at once ----------------------------

CATCH_UP = "/v1/shape?table=items&offset=0_0&handle=h-1"


async def test_rotated_shape_initial_answer_is_replaced_on_the_next_request(proxy: Any) -> None:
    token = proxy.tokens.make()
    old = await proxy.get(SHAPE, token=token)
    assert old.headers["electric-handle"] == "h-1"
    proxy.engine.handle = "h-2"  # a TRUNCATE rotated the shape
    new = await proxy.get(SHAPE, token=token)
    assert new.status == 200 and new.headers["electric-handle"] == "h-2"
    assert "Age" not in new.headers
    # ...and h-2 is what is cached now: the next client is served it after a 304.
    again = await proxy.get(SHAPE, token=token)
    assert again.headers["electric-handle"] == "h-2"
    assert proxy.engine.requests[-1].headers["If-None-Match"] == '"h-2:-1:0_0"'


async def test_409_for_a_handle_evicts_its_answers(proxy: Any) -> None:
    token = proxy.tokens.make()
    await proxy.get(SHAPE, token=token)
    await proxy.get(CATCH_UP, token=token)
    await proxy.get(CATCH_UP, token=token)
    assert len(proxy.engine.requests) == 2  # the catch-up chunk is immutable: a plain hit
    proxy.engine.status = 409
    gone = await proxy.get(LIVE, token=token)
    assert gone.status == 409
    proxy.engine.status = 200
    proxy.engine.handle = "h-2"
    before = len(proxy.engine.requests)
    refetched = await proxy.get(CATCH_UP, token=token)  # not served from the dead handle
    assert len(proxy.engine.requests) == before + 1 and refetched.status == 200
    initial = await proxy.get(SHAPE, token=token)  # the initial answer went too: no 304 try
    assert initial.headers["electric-handle"] == "h-2"
    assert "If-None-Match" not in proxy.engine.requests[-1].headers
    text = await _metrics(proxy)
    assert _metric(text, 'shape_proxy_response_cache_total{result="evict"}') >= 2


async def test_delete_evicts_the_definitions_answers(
    make_proxy: Any, config_data: Any, environ: Any
) -> None:
    config_data["tables"]["items"]["allow"][0]["delete"] = True
    proxy = await make_proxy(build_config(config_data, environ))
    admin = proxy.tokens.make(role="admin")
    await proxy.get(SHAPE, token=admin)
    await proxy.get(CATCH_UP, token=admin)
    deleted = await proxy.request("DELETE", "/v1/shape?table=items", token=admin)
    assert deleted.status == 202
    before = len(proxy.engine.requests)
    await proxy.get(CATCH_UP, token=admin)
    await proxy.get(SHAPE, token=admin)
    fresh = proxy.engine.requests[before:]
    assert len(fresh) == 2 and all("If-None-Match" not in r.headers for r in fresh)


def _shape_entry(handle: str, *, initial: bool, definition: str = "d") -> CachedResponse:
    return CachedResponse(
        status=200, reason="OK", headers=(("electric-handle", handle),), cache_control="public",
        body=b"[]", stored_at=0.0, expires_at=60.0, handle=handle, definition=definition,
        initial=initial, etag=f'"{handle}:-1:0_0"' if initial else None,
    )  # fmt: skip


def test_retiring_a_handle_drops_its_answers_and_the_definitions_initial_ones() -> None:
    cache = ResponseCache(1_000_000, 100_000, timer=lambda: 1.0)
    keys = {name: ("GET", name, "", "", "") for name in ("init", "chunk", "other", "elsewhere")}
    cache.put(keys["init"], _shape_entry("h1", initial=True))
    cache.put(keys["chunk"], _shape_entry("h1", initial=False))
    cache.put(keys["other"], _shape_entry("h0", initial=False))  # an older handle's chunk
    cache.put(keys["elsewhere"], _shape_entry("x1", initial=True, definition="e"))
    assert cache.retire("d", "h1") == 2
    assert cache.get(keys["init"]) is None and cache.get(keys["chunk"]) is None
    assert cache.get(keys["other"]) is not None  # not named by the 409: kept
    assert cache.get(keys["elsewhere"]) is not None  # another shape: untouched
    assert not cache.put(keys["chunk"], _shape_entry("h1", initial=False))  # dead: never again
    # A new handle seen for the definition drops the answers of every other handle.
    assert cache.evict_definition("d", keep_handle="h2") == 1
    assert cache.get(keys["other"]) is None


def test_a_409_for_a_handle_named_with_another_definition_leaves_its_shape_cached() -> None:
    """Bob names Alice's handle with his own definition: the engine's 409 (a mismatch) must
    neither drop Alice's cached answers nor stop them being cached (it did: retired by
    handle alone, any caller who learnt a handle could turn the cache off for its shape)."""
    cache = ResponseCache(1_000_000, 100_000, timer=lambda: 1.0)
    alice = ("GET", "alice-chunk", "", "", "")
    cache.put(alice, _shape_entry("h-alice", initial=False, definition="alice"))
    assert cache.retire("bob", "h-alice") == 0
    assert cache.get(alice) is not None
    later = ("GET", "alice-next", "", "", "")
    assert cache.put(later, _shape_entry("h-alice", initial=False, definition="alice"))
    assert cache.retire("alice", "h-alice") == 2  # the engine says so for Alice's definition
    assert not cache.put(later, _shape_entry("h-alice", initial=False, definition="alice"))


def test_a_handle_only_delete_retires_the_handle_under_every_definition() -> None:
    """`DELETE ?handle=H` names no definition: H's answers go whatever definition they were
    stored under, with those definitions' initial answers, and are never kept again."""
    cache = ResponseCache(1_000_000, 100_000, timer=lambda: 1.0)
    keys = {name: ("GET", name, "", "", "") for name in ("init", "live", "old", "elsewhere")}
    cache.put(keys["init"], _shape_entry("h1", initial=True))
    cache.put(keys["live"], _shape_entry("h1", initial=False))
    cache.put(keys["old"], _shape_entry("h0", initial=False))
    cache.put(keys["elsewhere"], _shape_entry("x1", initial=True, definition="e"))
    assert cache.retire_handle("h1") == 2
    assert cache.get(keys["init"]) is None and cache.get(keys["live"]) is None
    assert cache.get(keys["old"]) is not None and cache.get(keys["elsewhere"]) is not None
    assert cache.retired("d", "h1") and cache.retired("other", "h1")
    assert not cache.put(keys["live"], _shape_entry("h1", initial=False))


def test_cache_indexes_forget_entries_the_lru_dropped() -> None:
    cache = ResponseCache(20_000, 2_000, timer=lambda: 1.0)
    for i in range(2_000):
        cache.put(("GET", str(i), "", "", ""), _shape_entry(f"h{i}", initial=False))
    assert len(cache._by_handle) < 100  # pruned as entries fall out of the byte bound


async def test_an_answer_kept_for_everyone_is_not_served_to_a_private_rule(
    make_proxy: Any, config_data: Any, environ: Any
) -> None:
    """Two rules sending the same engine URL, one whose answer every caller shares (anonymous,
    all rows: the engine's public cache headers) and one that depends on who asks (members:
    made private): each gets its own cache entry and engine request, never the other's
    headers. A member was served the anonymous rule's cached answer, `public` (a CDN would
    then serve that URL to callers the member rule distinguishes)."""
    config_data["tables"]["items"] = {
        "allow": [{"name": "member", "when": {"role": "member"}, "all_rows": True}]
    }
    config_data["shapes"] = {
        "all-items": {
            "table": "items",
            "allow": [{"name": "anyone", "anonymous": True, "all_rows": True}],
        }
    }
    proxy = await make_proxy(build_config(config_data, environ))
    anonymous = await proxy.get("/shapes/all-items?offset=-1")
    assert anonymous.status == 200, anonymous.body
    assert anonymous.headers["Cache-Control"].startswith("public")
    member = await proxy.get(SHAPE, token=proxy.tokens.make(role="member"))
    assert member.status == 200, member.body
    assert not member.headers["Cache-Control"].startswith("public"), member.headers
    assert len([r for r in proxy.engine.requests if r.url.query.get("offset") == "-1"]) == 2
    again = await proxy.get("/shapes/all-items?offset=-1")  # (still kept for its callers)
    assert again.headers["Cache-Control"] == anonymous.headers["Cache-Control"]
