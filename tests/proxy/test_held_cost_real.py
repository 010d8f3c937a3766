"""What a held client costs the proxy: no loop timer of its own for its token's `exp`, no
copy of its shared SSE stream's key.

Issue 13 bounds the proxy's memory per held client (bar 2: <= 10 KB, bar 4: a held long-poll
<= 8 KB). Ending held answers at the token's `exp` (`proxy.upstream.held`) first did it with an
`asyncio.wait(..., timeout=)` per held long-poll and per shared SSE client: a timer, a waiter
future, a done-callback and two coroutine frames each, ~2.5 KB per held client (S8: 7.4 ->
9.9 KB per held long-poll, 9.3 -> 11.4 KB per SSE client). Now every held answer whose
deadline falls in the same tenth of a second shares one timer (`held.Deadlines`); clients of
one user share a token, hence one. The count of loop timers is what this test checks (a
count, not a size or a time: it cannot flake); that the holds still end at `exp` is
test_held_expiry_real.py's and tests/node/token-expiry.test.mjs's.

Real path: proxy (collapsing on) -> `sync-engine` (20 s long-polls) -> Postgres.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

import aiohttp
import pytest

from proxy.config.loader import build_config
from proxy.upstream.held import Deadlines
from tests.proxy.proxy_fakes import base_config, now
from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until_async

#: Held clients of each kind (long-poll, SSE), one token for all.
CLIENTS = 25


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1')",
        args=("--no-fsync",),  # (the engine's default 20 s long-polls: held throughout)
    )


def _timers() -> int:
    """Loop timers scheduled now (asyncio's or uvloop's `TimerHandle`), but the test's own
    aiohttp client's (a timeout per request)."""
    count = 0
    for o in gc.get_objects():
        if type(o).__name__ != "TimerHandle" or getattr(o, "_cancelled", False):
            continue
        callback = getattr(o, "_callback", None)
        if not getattr(callback, "__module__", "").startswith("aiohttp."):
            count += 1
    return count


def _subscribed(forwarder: Any) -> int:
    """SSE clients reading a shared stream now."""
    streams = forwarder._streams._streams.values()
    return sum(len(s.subscribers) + len(s._ahead) for s in streams)


async def test_held_clients_with_one_token_share_one_deadline_timer(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=30)
    config["tables"]["items"]["allow"][1]["sse"] = True
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make(exp=now() + 120)
    _, handle, offset = await sync_through(proxy, token)
    live = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&cursor=5"
    forwarder = proxy.app.forwarder
    headers = {"Authorization": f"Bearer {token}"}
    gc.collect()
    before = _timers()

    async def poll() -> int:
        async with proxy.client.get(live, headers=headers) as resp:
            await resp.read()
            return resp.status

    polls = [asyncio.create_task(poll()) for _ in range(CLIENTS)]
    streams: list[aiohttp.ClientResponse] = []
    try:
        await wait_until_async(
            lambda: sum(f.waiters for f in forwarder._flights._flights.values()) == CLIENTS,
            message="every long-poll held on the shared engine request",
        )
        for _ in range(CLIENTS):
            resp = await asyncio.wait_for(
                proxy.client.get(
                    f"{live}&live_sse=true", headers={**headers, "Accept": "text/event-stream"}
                ),
                10,
            )
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            streams.append(resp)
        await wait_until_async(
            lambda: _subscribed(forwarder) == CLIENTS, message="every SSE client on the stream"
        )
        assert forwarder.shared_streams == 1
        # Each SSE client refers to its stream's key, not to a copy of its own (a tuple of
        # the shape's parameters, ~0.4 KB per client; the old code kept one per client).
        (stream,) = forwarder._streams._streams.values()
        assert sys.getrefcount(stream.key) > CLIENTS
        gc.collect()
        # One deadline timer for all of them (and the engine requests' own: a handful);
        # the old code had one per held client.
        assert _timers() - before <= 5, (before, _timers())
        assert not any(task.done() for task in polls)
    finally:
        for resp in streams:
            resp.close()
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)


class _Item:
    def __init__(self) -> None:
        self.expired = 0

    def expire(self) -> None:
        self.expired += 1


async def test_deadlines_share_a_tick_and_drop_what_needs_no_ending() -> None:
    deadlines = Deadlines()
    at = time.time() + 0.05
    items = [_Item() for _ in range(3)]
    keys = {deadlines.add(at, item) for item in items}
    assert len(keys) == 1 and len(deadlines) == 3  # one bucket, one timer
    deadlines.discard(keys.pop(), items[0])  # answered before its deadline
    gone = _Item()
    deadlines.discard(deadlines.add(at + 10, gone), gone)  # (its bucket lingers, empty)
    await wait_until_async(lambda: items[1].expired == 1, message="the deadline")
    assert [i.expired for i in items] == [0, 1, 1] and gone.expired == 0
    assert len(deadlines) == 0


async def test_a_lone_clients_next_live_request_reuses_its_deadline_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client's live requests one after another (same token: same tick) share one timer:
    each made and cancelled a loop timer (~5.5 us of the fast lane's ~38, perf)."""
    loop = asyncio.get_running_loop()
    timers: list[object] = []
    make = loop.call_later

    def counted(*args: Any) -> asyncio.TimerHandle:
        timers.append(args)
        return make(*args)

    monkeypatch.setattr(loop, "call_later", counted)
    deadlines, item, at = Deadlines(), _Item(), time.time() + 3600
    for _ in range(5):
        deadlines.discard(deadlines.add(at, item), item)
    assert len(timers) == 1 and len(deadlines) == 0


def _chain(coro: Any) -> list[str]:
    """The coroutine frames a task holds while it waits, outermost first."""
    names = []
    while coro is not None and hasattr(coro, "cr_frame"):
        names.append(coro.cr_code.co_qualname)
        coro = coro.cr_await
    return names


async def test_a_held_long_poll_keeps_no_frame_or_string_it_need_not(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """What every held long-poll keeps while it waits, counted, not sized (it cannot flake):
    its task's chain of coroutine frames (~300 B each) has no frame that only hands on
    another's answer (`ProxyApp.handle` returns `answer`'s coroutine, `_route` the handler's,
    `authorise_and_forward` forwards itself), and the header names
    and short values of the held requests are one string each for all of them, not a copy
    per request (~50 B a header). On 01d93aac: the chain is three frames longer
    (`ProxyApp.handle`, `ProxyApp._route`, `_forward`), and each request has its own `Host`
    name and value strings."""
    from proxy.http.wire import Request

    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=30)
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make(exp=now() + 120)
    _, handle, offset = await sync_through(proxy, token)
    live = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&cursor=5"
    forwarder = proxy.app.forwarder
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def poll() -> int:
        async with proxy.client.get(live, headers=headers) as resp:
            await resp.read()
            return resp.status

    polls = [asyncio.create_task(poll()) for _ in range(CLIENTS)]
    try:
        await wait_until_async(
            lambda: sum(f.waiters for f in forwarder._flights._flights.values()) == CLIENTS,
            message="every long-poll held on the shared engine request",
        )
        held = [o for o in gc.get_objects() if isinstance(o, Request) and "live=true" in o.raw_path]
        assert len(held) == CLIENTS
        for name in ("Host", "Accept"):
            keys = {id(k) for r in held for k in r.headers if k == name}
            values = {id(r.headers[name]) for r in held}
            assert len(keys) == 1 and len(values) == 1, name
        chains = [_chain(task.get_coro()) for task in asyncio.all_tasks()]
        chains = [c for c in chains if c[:1] == ["Connection._answer"]]
        assert len(chains) == CLIENTS
        # (no frame that only awaits another's answer: `handle`, `_route`, `_forward`)
        assert chains[0][:4] == [
            "Connection._answer",
            "ProxyApp.answer",
            "serve",
            "authorise_and_forward",
        ], chains[0]
        assert chains[0][4] == "Forwarder.forward", chains[0]
    finally:
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
