"""A reload that changes nothing leaves held live answers alone (twin 08:08, LOW/MEDIUM).

Every good reload ended every held long-poll (`[]`, no up-to-date: `upstream.held`) and SSE
stream, so a `touch` of the config file, a SIGHUP from tooling or a ConfigMap re-sync made
every live client on the proxy come back at the same moment, and a change written just then
reached them a round trip later than the engine gives it. A reload whose settings, rules and
resolved secrets are those already loaded grants nothing more and withdraws nothing: held
answers go on. One that changes anything still ends them (the reload tests elsewhere).

Real path: proxy (from a real config file, reloaded as the poll does) -> `sync-engine` ->
Postgres.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from tests.proxy.real_proxies import items_config
from tests.support.engine_process import EngineProcess, sync_through


@pytest.mark.parametrize("mode", ["collapsed", "direct"])
async def test_an_unchanged_reload_leaves_a_held_long_poll_alone(
    mode: str, items_engine: EngineProcess, db_url: str, idp_server: Any, reloadable_proxy: Any
) -> None:
    config = items_config(items_engine, idp_server, collapse=mode == "collapsed")
    proxy = await reloadable_proxy(config, fast_lane=False)
    token = proxy.tokens.make()
    _, handle, offset = await sync_through(proxy, token)

    async def long_poll() -> tuple[int, dict[str, str], bytes]:
        path = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&cursor=7"
        async with proxy.client.get(path, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, dict(r.headers), await r.read()

    held = asyncio.ensure_future(long_poll())
    await items_engine.until_parked(1)
    proxy.reload()  # the same file again
    await asyncio.sleep(0.3)
    assert not held.done(), held.result()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (50, 'org-a', 'after the reload')")
    status, headers, body = await asyncio.wait_for(held, 30)
    assert status == 200, body
    titles = [m["value"]["title"] for m in json.loads(body) if "value" in m]
    assert titles == ["after the reload"], body
    assert "electric-up-to-date" in {k.lower() for k in headers}
