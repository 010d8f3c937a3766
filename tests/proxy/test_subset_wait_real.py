"""A subset snapshot whose query runs longer than `upstream.first_byte_timeout` is the engine's
answer, not the proxy's 504: the engine sends a subset's answer only once its query ended,
and lets the query run for `--snapshot-timeout` (300 s by default), where the proxy's
first-byte timeout (75 s by default) cut it (carried-over LOW: a slow but legitimate answer
cut before the engine would give up). Now waited for at least `SUBSET_WAIT`.

Real path: proxy -> `sync-engine` -> Postgres. A transaction holds ACCESS EXCLUSIVE on
`items`, so the engine's subset queries wait in Postgres (as a slow query on a big table
does) past the proxy's first-byte timeout, set to 1 s here; then the lock goes. The wait is
no assertion: only the answers are checked.
"""

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

FIRST_BYTE_TIMEOUT = 1


@pytest.mark.parametrize("collapse", [True, False], ids=["collapsed", "direct"])
async def test_a_subset_slower_than_the_first_byte_timeout_is_the_engines_answer(
    collapse: bool,
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
) -> None:
    config = items_config(
        items_engine, idp_server, collapse=collapse, first_byte_timeout=FIRST_BYTE_TIMEOUT
    )
    proxy = await reloadable_proxy(config, fast_lane=False)
    token = proxy.tokens.make()
    _, handle, offset = await sync_through(proxy, token)
    base = f"/v1/shape?table=items&handle={handle}&offset={offset}"
    auth = {"Authorization": f"Bearer {token}"}

    async def get_subset() -> tuple[int, bytes]:
        where = quote("title <> 'none'")
        url = f"{base}&subset__where={where}&subset__order_by=id&subset__limit=10"
        async with proxy.client.get(url, headers=auth) as resp:
            return resp.status, await resp.read()

    async def post_subset() -> tuple[int, bytes]:
        body = {"where": "title <> 'none'", "order_by": "id", "limit": 10}
        async with proxy.client.post(base, headers=auth, json=body) as resp:
            return resp.status, await resp.read()

    lock = psycopg.connect(db_url)
    tasks: list[asyncio.Task[tuple[int, bytes]]] = []
    try:
        lock.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        tasks = [asyncio.create_task(f()) for f in (get_subset, post_subset)]
        await wait_until_async(
            lambda: waiting_on_lock(db_url) >= 2, timeout=120, message="both queries wait"
        )
        # (past the proxy's first-byte timeout: on c84a9df5 both were 504 upstream_timeout)
        await asyncio.sleep(FIRST_BYTE_TIMEOUT + 2)
    finally:
        lock.rollback()
        lock.close()
    answers = await asyncio.gather(*tasks)
    for status, body in answers:
        assert status == 200, body
        answer = json.loads(body)
        items = answer["data"] if isinstance(answer, dict) else answer
        # the member's org-a rows, in the subset's order
        assert [item["value"]["id"] for item in items if "value" in item] == ["1", "3"], body


async def test_a_repeated_subset_waits_as_long(
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    """The same GET subset asked again (a request the proxy authorised before, which the fast
    lane may take when `max_subsets` is unlimited) waits as long (review 22:55: the fast lane
    sent it with `first_byte_timeout`, and it was a 504 after 1 s). Probe test by review."""
    config = items_config(
        items_engine, idp_server, collapse=False, first_byte_timeout=FIRST_BYTE_TIMEOUT
    )
    config["limits"] = {"max_subsets": "unlimited"}
    proxy = await reloadable_proxy(config)  # (the fast lane on)
    token = proxy.tokens.make()
    _, handle, offset = await sync_through(proxy, token)
    where = quote("title <> 'none'")
    url = (
        f"/v1/shape?table=items&handle={handle}&offset={offset}"
        f"&subset__where={where}&subset__order_by=id&subset__limit=10"
    )
    auth = {"Authorization": f"Bearer {token}"}

    async def get() -> tuple[int, bytes]:
        async with proxy.client.get(url, headers=auth) as resp:
            return resp.status, await resp.read()

    assert (await get())[0] == 200  # authorised: its repeat may take the fast lane
    lock = psycopg.connect(db_url)
    try:
        lock.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(get())
        await wait_until_async(lambda: waiting_on_lock(db_url) >= 1, timeout=60, message="waits")
        await asyncio.sleep(FIRST_BYTE_TIMEOUT + 2)
    finally:
        lock.rollback()
        lock.close()
    status, body = await task
    assert status == 200, body  # (on d4dedaf2: 504 upstream_timeout, from the fast lane)
    answer = json.loads(body)
    items = answer["data"] if isinstance(answer, dict) else answer
    assert [item["value"]["id"] for item in items if "value" in item] == ["1", "3"], body
