"""A non-live answer (a subset, GET or POST; a new shape's snapshot) whose token expires while
the engine works on it is not delivered: its headers, coming after the token's `exp` plus its
issuer's leeway, make the proxy authorise the request again, and the caller gets the usual 401
`token_expired` (`upstream.forward.Target.answer_by`; attack round 8, 00:08 `subexp.py`, LOW:
the answers came 200 with rows 31 s after `exp`). A token accepted within its leeway is not
sent round that loop to a 503: its slow answer is delivered.

Real path: proxy -> `sync-engine` -> Postgres, collapsing on, off, and on the fast lane. A
Postgres transaction holds ACCESS EXCLUSIVE on `items`, so the engine's queries wait (as a slow
query on a big table does); the requests are waited for in `pg_stat_activity`, the token's
expiry by a fresh request's 401, and the answers for as long as they take. Nothing is timed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import quote

import psycopg

from proxy.upstream.held import MIN_HOLD
from tests.proxy.proxy_fakes import now
from tests.proxy.real_proxies import by_mode, items_config, waiting_on_lock
from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until_async

#: Seconds the first test's token lives: its requests reach the engine before then.
TOKEN_LIFE = 15

Answer = tuple[int, bytes]


def _config(engine: EngineProcess, idp_server: Any, leeway: int, collapse: bool) -> dict[str, Any]:
    config = items_config(
        engine, idp_server, collapse=collapse, first_byte_timeout=600, leeway=leeway
    )
    # (subsets under `max_subsets`, 4 by default, never take the fast lane: lifted here, so
    # the fast lane's GET subset is one of the answers in flight when the token expires)
    config["limits"] = {"max_subsets": "unlimited"}
    return config


def _requests(proxy: Any, token: str, name: str, handle: str, offset: str) -> list[Any]:
    """A GET subset and a POST subset (a where of its own per proxy, so each is its own
    engine query); through the collapsing proxy, a new shape's snapshot too (one only: the
    engine takes its new shapes' snapshots a few at a time, and a third one waits for a
    connection, not on the lock)."""
    base = f"/v1/shape?table=items&handle={handle}&offset={offset}"
    auth = {"Authorization": f"Bearer {token}"}
    where = f"title <> '{name}'"

    async def get_subset() -> Answer:
        url = f"{base}&subset__where={quote(where)}&subset__order_by=id&subset__limit=10"
        async with proxy.client.get(url, headers=auth) as resp:
            return resp.status, await resp.read()

    async def post_subset() -> Answer:
        body = {"where": where, "order_by": "id", "limit": 10}
        async with proxy.client.post(base, headers=auth, json=body) as resp:
            return resp.status, await resp.read()

    async def new_shape() -> Answer:
        async with proxy.client.get(
            f"/v1/shape?table=items&offset=-1&where={quote(where)}", headers=auth
        ) as resp:
            return resp.status, await resp.read()

    return (
        [get_subset, post_subset, new_shape] if name == "collapsed" else [get_subset, post_subset]
    )


async def _in_flight(
    proxies: dict[str, Any],
    token: str,
    db_url: str,
    before_release: Callable[[], Awaitable[None]],
) -> dict[str, list[Answer]]:
    """Each proxy's three requests, sent while `items` is locked and answered once
    `before_release` is done and the lock is gone."""
    calls: dict[str, list[Any]] = {}
    for name, proxy in proxies.items():
        _, handle, offset = await sync_through(proxy, token)
        calls[name] = _requests(proxy, token, name, handle, offset)
        if name == "fast":  # (the fast lane takes a request authorised before)
            assert (await calls[name][0]())[0] == 200
    lock = psycopg.connect(db_url)
    tasks: dict[str, list[asyncio.Task[Answer]]] = {}
    try:
        lock.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        tasks = {
            name: [asyncio.create_task(call()) for call in group] for name, group in calls.items()
        }
        everyone = [task for group in tasks.values() for task in group]
        # Every request is authorised and waits in the engine's query, behind the lock.
        await wait_until_async(
            lambda: waiting_on_lock(db_url) >= len(everyone) or any(t.done() for t in everyone),
            timeout=120,
            message="every request waits on the lock",
        )
        assert not any(task.done() for task in everyone), [
            task.result() for task in everyone if task.done()
        ]
        await before_release()
    finally:
        lock.rollback()
        lock.close()
    return {name: list(await asyncio.gather(*group)) for name, group in tasks.items()}


async def test_an_answer_that_comes_after_its_token_expired_is_a_401(
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    proxies = await by_mode(reloadable_proxy, partial(_config, items_engine, idp_server, 0))
    exp = now() + TOKEN_LIFE
    token = proxies["direct"].tokens.make(exp=exp)

    async def expired() -> None:
        # The token is refused to a new request (past `exp`; leeway 0), and the requests
        # waiting were authorised more than `MIN_HOLD` ago.
        authorised_by = time.time()
        for proxy in proxies.values():
            await wait_until_async(
                partial(_refused, proxy, token),
                timeout=TOKEN_LIFE + 60,
                message="the token expires",
            )
        await _until(authorised_by + MIN_HOLD)

    answers = await _in_flight(proxies, token, db_url, expired)
    assert any("subset__where" in path for path in fast_lane_taken), fast_lane_taken
    for name, group in answers.items():
        for status, body in group:
            # On the old code: 200 with the rows, read after the token had expired.
            assert status == 401, (name, status, body)
            assert json.loads(body)["code"] == "token_expired", (name, body)


async def _until(wall_clock: float) -> None:
    """Let the wall clock pass `wall_clock` (the proxy reads the same clock)."""
    await asyncio.sleep(max(0.0, wall_clock - time.time()) + 0.2)


async def _refused(proxy: Any, token: str) -> bool:
    async with proxy.client.get(
        "/v1/shape?table=items&offset=-1", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        await resp.read()
        return resp.status == 401


async def test_a_slow_answer_to_a_token_within_its_leeway_is_delivered(
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
) -> None:
    """Past `exp` but within the issuer's leeway: the request is accepted, and its answer,
    coming after `exp` and more than `MIN_HOLD` after it was authorised, is delivered (were it
    authorised again at `exp`, that would pass, and the request would go round to the 503)."""
    proxies = await by_mode(reloadable_proxy, partial(_config, items_engine, idp_server, 300))
    del proxies["fast"]  # (the fast lane takes no request whose token is past its `exp`)
    token = proxies["direct"].tokens.make(exp=now() - 1, iat=now() - 60)

    async def held() -> None:
        authorised_by = time.time()
        await _until(authorised_by + MIN_HOLD)

    answers = await _in_flight(proxies, token, db_url, held)
    for name, group in answers.items():
        for status, body in group:
            assert status == 200, (name, status, body)
            answer = json.loads(body)
            items = answer["data"] if isinstance(answer, dict) else answer
            values = [item["value"] for item in items if "value" in item]
            assert values and all(v["org_id"] == "org-a" for v in values), (name, body)
