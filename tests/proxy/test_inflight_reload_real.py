"""A subset snapshot (GET `subset__*` and POST) or a snapshot in flight at a reload that narrows
its rule is not answered under the old rule (attack round 8, 00:02, HIGH): the engine's answer,
read after the reload, is dropped and the request is authorised again under the new config
(`upstream.forward.Reauthorise`). Test by attack (r8b), taken by proxy: the reload is made
directly (no poll), collapsing on and off, and a new shape's snapshot added.

Real path: proxy -> `sync-engine` -> Postgres; a real config file rewritten (atomic rename) and
reloaded by the poll. A Postgres transaction holds ACCESS EXCLUSIVE on `items`, so the engine's
subset queries wait (as a slow query on a big table does); a member's GET and POST subsets are
authorised under the member rule (columns id, org_id, title), reach the engine and wait there;
the reload narrows the rule to (id, title); the lock is released. On w-lead df85dfc both answers
came 200 with `org_id`, the column the new rule hides. Nothing is timed: the requests are
waited for in Postgres, the answers for as long as they take."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.proxy.real_proxies import items_config, waiting_on_lock
from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until_async


@pytest.mark.parametrize("mode", ["collapsed", "direct", "fast"])
async def test_a_subset_in_flight_at_a_narrowing_reload_gets_no_hidden_column(
    mode: str,
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    config = items_config(
        items_engine, idp_server, collapse=mode == "collapsed", first_byte_timeout=600
    )
    # (subsets under `max_subsets`, 4 by default, never take the fast lane: lifted here, so
    # the fast lane's subset is still the one in flight at the reload)
    config["limits"] = {"max_subsets": "unlimited"}
    proxy = await reloadable_proxy(config, fast_lane=mode == "fast")
    token = proxy.tokens.make()
    rows, handle, offset = await sync_through(proxy, token)
    assert all("org_id" in row for row in rows.values())  # the member rule's columns, for now
    base = f"/v1/shape?table=items&handle={handle}&offset={offset}"
    auth = {"Authorization": f"Bearer {token}"}
    where = quote("title <> 'none'")

    async def get_subset() -> tuple[int, bytes]:
        url = f"{base}&subset__where={where}&subset__order_by=id&subset__limit=10"
        async with proxy.client.get(url, headers=auth) as resp:
            return resp.status, await resp.read()

    async def post_subset() -> tuple[int, bytes]:
        body = {"where": "title <> 'none'", "order_by": "id", "limit": 10}
        async with proxy.client.post(base, headers=auth, json=body) as resp:
            return resp.status, await resp.read()

    async def new_shape() -> tuple[int, bytes]:
        url = f"/v1/shape?table=items&offset=-1&where={where}"
        async with proxy.client.get(url, headers=auth) as resp:
            return resp.status, await resp.read()

    if mode == "fast":  # (the fast lane takes a request authorised before)
        assert (await get_subset())[0] == 200
    lock = psycopg.connect(db_url)
    tasks: list[asyncio.Task[tuple[int, bytes]]] = []
    try:
        lock.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        tasks = [asyncio.create_task(f()) for f in (get_subset, post_subset, new_shape)]
        # All are authorised and wait in the engine's queries, behind the lock.
        await wait_until_async(
            lambda: waiting_on_lock(db_url) >= 3, timeout=120, message="all three wait"
        )
        member = config["tables"]["items"]["allow"][1]
        member["columns"] = ["id", "title"]
        proxy.reload()
    finally:
        lock.rollback()
        lock.close()
    answers = await asyncio.gather(*tasks)
    # (the GET subset's second time)
    assert len(fast_lane_taken) == (1 if mode == "fast" else 0), fast_lane_taken
    # The subsets name the old shape's handle: under the new rule (another shape) the engine
    # answers 409 must-refetch, as to any request made after the reload; the new shape's
    # snapshot is the new rule's.
    assert [status for status, _ in answers] == [409, 409, 200], answers
    for _, body in answers[2:]:
        answer = json.loads(body)
        items = answer["data"] if isinstance(answer, dict) else answer
        values = [item["value"] for item in items if "value" in item]
        assert values, body  # (the rows, under the new rule)
        assert all("org_id" not in value for value in values), body
