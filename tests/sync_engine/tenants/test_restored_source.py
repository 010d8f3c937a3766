"""One registered source's Postgres gone back in time (its data restored from a disk or VM
snapshot, the slot with it) under a running engine with other sources.

The engine notices it as that source's stream starts again (`Source._went_back_while_running`)
and retires that source's shapes. It used to stop the whole engine process (status 1), and so
every other source's clients, until a supervisor started it again. Now only that source starts
afresh from its data dir: its old handle gets a 409, a refetch is exact (the restored history,
and the changes written after it), and the other source's live client never sees an error.

Real path: two sources in one engine, the restored one on a private Postgres cluster whose
data directory is copied while it is stopped and put back later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sync_engine import stopping
from tests.faults.cluster import FaultCluster
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN, MultiEngine, make_items, sql
from tests.sync_engine.tenants.test_faults_across_sources import Follower


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("quick_retries")
async def test_one_restored_source_starts_afresh_and_the_others_serve_on(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries")
    stops: list[str] = []  # (the old engine stopped its process here: this one, pytest's)
    monkeypatch.setattr(stopping, "stop_process", stops.append)
    cluster = FaultCluster()
    followers: list[Follower] = []
    try:
        cluster.start()
        url_a, url_b = cluster.url, make_db()
        make_items(url_a, ["a1", "a2", "a3"])
        make_items(url_b, ["b1"])
        engine = await engines().start()
        a = await engine.add("restored", url_a)
        b = await engine.add("steady", url_b)
        for src in (a, b):
            await engine.wait_state(src["source_id"], "active")
        fb = Follower(engine, b["source_id"], b["secret"], table="items")
        followers.append(fb)
        await fb.start()
        await engine.sync(a["source_id"], a["secret"], table="items")  # (published)

        # the disk's snapshot of A, then changes A's shape gets and the restore loses
        copy = await asyncio.to_thread(cluster.disk_copy)
        sql(url_a, "UPDATE items SET name = 'lost' WHERE id = 1")
        sql(url_a, "DELETE FROM items WHERE id = 3")

        async def a_synced() -> tuple[str, str] | None:
            rows, handle, offset = await engine.sync(a["source_id"], a["secret"], table="items")
            names = sorted(r["name"] for r in rows.values())
            return (handle, offset) if names == ["a2", "lost"] else None

        handle, offset = await wait_until_async(a_synced, timeout=30, message="A's changes")
        await asyncio.to_thread(cluster.put_back, copy)

        async def old_handle_refused() -> bool:
            status, _, body = await engine.get(a["source_id"], a["secret"], table="items",
                                               handle=handle, offset=offset)  # fmt: skip
            assert status in (200, 409, 503), (status, body)  # (503: starting again)
            return status == 409

        # (the old engine kept serving the lost rows with a 200 until it went down)
        await wait_until_async(old_handle_refused, timeout=60, message="A's old handle 409")
        assert stops == []
        # B's client went on meanwhile, never refused
        sql(url_b, "INSERT INTO items VALUES (2, 'b2')")
        await fb.until_has("b2")
        # A is served afresh: the restored rows, and a change of the new history streamed
        await engine.wait_state(a["source_id"], "active")
        fa = Follower(engine, a["source_id"], a["secret"], table="items")
        followers.append(fa)
        await fa.start()
        assert fa.names() == ["a1", "a2", "a3"]
        sql(url_a, "UPDATE items SET name = 'new' WHERE id = 2")
        await fa.until_has("new")
        assert fa.names() == ["a1", "a3", "new"]
        assert fb.names() == ["b1", "b2"]
        assert set(fb.statuses) == {200}, fb.statuses
        assert stops == []
    finally:
        for f in followers:
            await f.stop()
        cluster.stop()
