"""One principal's subset snapshots cannot starve everyone else's (attack 05:15, MEDIUM).

The engine runs a source's subset queries on one pool of `max_concurrent_snapshots` (8)
connections, first come first served. Under the shipped defaults (`limits.max_subsets` off)
one signed-in user asking for dozens of slow subsets at once took all eight, and every other
user's subset waited behind the whole queue (30 s and more). Now a principal has at most
`max_subsets` (4 by default: half the engine's pool) subsets in flight; its others wait in
the proxy for one of its own places (`limits.subset_wait`), not in the engine's queue ahead
of everyone, and are served in turn: none is refused for arriving in a burst.

Slow subsets without timings: the big table is locked (ACCESS EXCLUSIVE), so every subset of
it waits in Postgres, holding its engine connection, until the test lets go. Real tokens, the
real proxy, a real engine and Postgres.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.real_proxies import ITEMS_SQL, items_config, waiting_on_lock
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

BURST = 12


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        *ITEMS_SQL,
        "CREATE TABLE big (id int PRIMARY KEY, n int NOT NULL)",
        "INSERT INTO big SELECT g, g % 7 FROM generate_series(1, 1000) g",
        args=("--no-fsync",),
    )


async def test_a_burst_of_slow_subsets_leaves_room_for_another_user(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    db_url: str,
) -> None:
    config = items_config(engine, idp_server, first_byte_timeout=120)
    config["tables"]["big"] = {"allow": [{"when": {"role": "admin"}, "all_rows": True}]}
    proxy = await make_proxy(build_config(config, environ))
    alice = proxy.tokens.make(sub="alice", role="admin")
    bob = proxy.tokens.make(sub="bob", role="member")
    # both shapes made before the lock (a new shape's own snapshot would wait on it too)
    assert (await proxy.get("/v1/shape?table=big&offset=-1", token=alice)).status == 200
    assert (await proxy.get("/v1/shape?table=items&offset=-1", token=bob)).status == 200

    lock = psycopg.connect(db_url)
    lock.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
    burst = [
        asyncio.create_task(
            proxy.get(
                f"/v1/shape?table=big&offset=-1&subset__where={quote(f'n <> {i}')}", token=alice
            )
        )
        for i in range(BURST)
    ]
    try:
        # alice's subsets are held in Postgres: as many as she may have in flight
        async def held() -> bool:
            return await asyncio.to_thread(waiting_on_lock, db_url, "big") >= 4

        await wait_until_async(held, timeout=60)
        # bob's subset of another table finds an engine connection and is answered while
        # every one of alice's waits on the lock (it waited behind them all before)
        reply = await asyncio.wait_for(
            proxy.get("/v1/shape?table=items&offset=-1&subset__where=id%20%3C%3E%201", token=bob),
            timeout=60,
        )
        assert reply.status == 200, reply.body
        assert [m["value"]["id"] for m in reply.json()["data"]] == ["3"]
        assert not any(task.done() for task in burst)
        assert await asyncio.to_thread(waiting_on_lock, db_url, "big") == 4
    finally:
        lock.rollback()
        lock.close()
    # the lock gone, all of alice's burst is served: none refused for arriving at once
    replies = await asyncio.gather(*burst)
    assert [r.status for r in replies] == [200] * BURST, [r.body[:100] for r in replies]
    for i, r in enumerate(replies):
        assert len(r.json()["data"]) == sum(1 for g in range(1, 1001) if g % 7 != i)
