"""Deleting a source, then stopping the engine, while their Postgres answers nothing (every
process stopped, SIGSTOP): each finishes within a bounded time (`stopping.cancel_and_wait`,
`Tables.close`, `Source.destroy`'s `DROP_WAIT`), and once Postgres is back the next start
drops the deleted source's slot and serves the other source again."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import MultiEngine

#: Seconds a deletion or an engine stop may take against a silent Postgres: their own
#: waits add up to about 50 s at worst (requests 10, tasks 10, subset pool 5, catalog 17,
#: connecting to drop the slot 5).
STOP_WITHIN = 90.0

T = TypeVar("T")


async def _within(what: str, coro: Awaitable[T]) -> T:
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=STOP_WITHIN)
    assert done, f"{what} did not finish within {STOP_WITHIN:g} s"
    return task.result()


@pytest.mark.timeout(300)
async def test_a_source_deleted_and_the_engine_stopped_while_postgres_is_silent(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    cluster.query("CREATE DATABASE other")
    other_url = cluster.url.rsplit("/", 1)[0] + "/other"
    with_items = "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)"
    with psycopg.connect(other_url, autocommit=True) as conn:
        conn.execute(with_items)
        conn.execute("INSERT INTO items VALUES (1, 1)")
    engine = await MultiEngine(tmp_path / "data", long_poll_timeout=60.0).start()
    stopped: list[int] = []
    try:
        a = await engine.add("deleted", cluster.url)
        b = await engine.add("kept", other_url)
        for src in (a, b):
            await engine.wait_state(src["source_id"], "active")
        _, handle, offset = await engine.sync(a["source_id"], a["secret"], table="items")
        await engine.sync(b["source_id"], b["secret"], table="items")
        poll = asyncio.create_task(
            engine.get(a["source_id"], a["secret"], table="items", handle=handle,
                       offset=offset, live="true")
        )  # fmt: skip
        await engine.until_parked(a["source_id"])
        _, info = await engine.api("GET", f"/api/sources/{a['source_id']}")
        slot = info["slot_name"]

        stopped = cluster.pids()
        cluster.signal(stopped, signal.SIGSTOP)
        status, body = await _within(
            "the deletion", engine.api("DELETE", f"/api/sources/{a['source_id']}")
        )
        assert status == 200 and body["deleted"] is True, body
        assert any("replication slot" in w for w in body["warnings"]), body
        poll_status, _, _ = await asyncio.wait_for(poll, 10)
        assert poll_status in (401, 409), poll_status
        await _within("the engine's stop", engine.close())
    finally:
        cluster.signal(stopped, signal.SIGCONT)
        await asyncio.wait_for(engine.close(), STOP_WITHIN)

    # Postgres back, the engine started again: the deleted source's slot is dropped (its
    # cleanup is retried at start) and the other source is served.
    engine = await MultiEngine(tmp_path / "data").start()
    try:
        await wait_until_async(
            lambda: (
                not cluster.query(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                )
            ),
            timeout=60,
            interval=0.5,
            message="the deleted source's slot dropped",
        )
        await engine.wait_state(b["source_id"], "active")
        rows, _, _ = await engine.sync(b["source_id"], b["secret"], table="items")
        assert list(rows.values()) == [{"id": "1", "v": "1"}]
    finally:
        await asyncio.wait_for(engine.close(), STOP_WITHIN)
