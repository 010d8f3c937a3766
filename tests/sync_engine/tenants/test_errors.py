"""Sources in error: actionable reasons, recovery on their own, isolation, per-source limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest

from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import Cluster, MultiEngine, free_port, sql


@pytest.mark.usefixtures("quick_retries")
async def test_reasons_for_bad_databases_then_fixed(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str], replica_cluster: Cluster
) -> None:
    """wal_level replica, a role without REPLICATION, an unreachable server: each source says
    why and what to do, none holds back a good one, and the fixed ones become active on
    their own (retried every second here, every 10 s by default: `quick_retries`)."""
    good_url = make_db()
    sql(good_url, "CREATE TABLE items (id int PRIMARY KEY)")
    sql(good_url, "INSERT INTO items VALUES (1)")
    replica_cluster.sql("CREATE TABLE items (id int PRIMARY KEY)")
    replica_cluster.sql("INSERT INTO items VALUES (7)")
    url = make_db()
    role = f"norepl_{free_port()}"
    sql(url, f"CREATE ROLE {role} LOGIN")
    dbname = url.rsplit("/", 1)[1]
    sql(url, f"ALTER DATABASE {dbname} OWNER TO {role}")
    norepl_url = url.replace("postgres@", f"{role}@")
    engine = await engines().start()
    broken = await engine.add("replica-only", replica_cluster.url)
    good = await engine.add("good", good_url)
    nope = await engine.add("nowhere", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    norepl = await engine.add("norepl", norepl_url)

    body = await engine.wait_state(broken["source_id"], "error", code="wal_level")
    assert "wal_level is replica, not logical" in body["error"]
    assert "restart" in body["error"]
    status, headers, shape = await engine.get(broken["source_id"], broken["secret"],
                                              table="items", offset="-1")  # fmt: skip
    assert status == 503 and "wal_level" in shape["message"] and headers["retry-after"]
    body = await engine.wait_state(nope["source_id"], "error", code="unreachable")
    assert "cannot reach postgres@127.0.0.1" in body["error"]
    body = await engine.wait_state(norepl["source_id"], "error", code="no_replication_role")
    assert f"ALTER ROLE {role} WITH REPLICATION" in body["error"]

    # the broken sources do not hold back the good one
    await engine.wait_state(good["source_id"], "active")
    rows, _, _ = await engine.sync(good["source_id"], good["secret"], table="items")
    assert list(rows.values()) == [{"id": "1"}]

    async def recorded_error() -> str:
        status, listing = await engine.api("GET", "/api/sources")
        assert status == 200, listing
        error = {s["name"]: s for s in listing["sources"]}["replica-only"]["last_error"]
        return str(error) if error else ""

    # the state watcher (every second) records the error for the listing
    last_error = await wait_until_async(recorded_error, message="the error in the listing")
    assert "wal_level" in last_error

    # fix them the way an operator would (restart Postgres for wal_level): active on their own
    sql(url, f"ALTER ROLE {role} WITH REPLICATION")
    replica_cluster.sql("ALTER SYSTEM SET wal_level = logical")
    replica_cluster.restart()
    await engine.wait_state(norepl["source_id"], "active", timeout=40)
    await engine.wait_state(broken["source_id"], "active", timeout=40)
    rows, _, _ = await engine.sync(broken["source_id"], broken["secret"], table="items")
    assert list(rows.values()) == [{"id": "7"}]
    # deleting a source whose database never came up still works
    status, body = await engine.api("DELETE", f"/api/sources/{nope['source_id']}")
    # (it never made a slot or publication: no warning, the quiet retries are 040c562d's)
    assert status == 200 and body["deleted"] and body["warnings"] == [], body


@pytest.mark.usefixtures("quick_retries")
async def test_too_few_replication_slots(engines: Callable[..., MultiEngine]) -> None:
    cluster = Cluster("logical")
    try:
        with open(cluster.dir / "data" / "postgresql.conf", "a") as f:
            f.write("max_replication_slots = 1\n")
        cluster.start()
        cluster.sql("SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')")
        engine = await engines().start()
        src = await engine.add("crowded", cluster.url)
        body = await engine.wait_state(src["source_id"], "error", code="no_replication_slots")
        assert "max_replication_slots" in body["error"]
        cluster.sql("SELECT pg_drop_replication_slot('someone_else')")
        await engine.wait_state(src["source_id"], "active", timeout=40)
        await engine.close()
    finally:
        cluster.stop()


async def test_per_source_limits_answer_503_with_retry_after(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url = make_db()
    sql(url, "CREATE TABLE items (id int PRIMARY KEY, g int)")
    sql(url, "INSERT INTO items SELECT i, i % 5 FROM generate_series(1, 100000) i")
    engine = await engines().start()
    src = await engine.add("limited", url, max_initial_syncs=1, max_shapes=4)
    sid, secret = src["source_id"], src["secret"]
    assert src["limits"] == {"max_shapes": 4, "max_initial_syncs": 1}
    await engine.wait_state(sid, "active")
    await engine.sync(sid, secret, table="items", where="g = 0")  # publishes the table

    # Three new shapes at once: one initial sync may run, the others are told to retry;
    # the existing shape is served meanwhile. A lock held elsewhere keeps the one running
    # sync from finishing before the others arrive (it only blocks its COPY).
    locker = psycopg.connect(url)
    locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
    try:
        tasks = [
            asyncio.create_task(engine.get(sid, secret, table="items", where=f"g = {g}",
                                           offset="-1"))
            for g in (1, 2, 3)
        ] + [asyncio.create_task(engine.get(sid, secret, table="items", where="g = 0",
                                            offset="-1"))]  # fmt: skip
        for _ in range(200):
            if sum(t.done() for t in tasks) >= 3:
                break
            await asyncio.sleep(0.05)
    finally:
        locker.rollback()
        locker.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    statuses = [r[0] for r in results]
    assert statuses[3] == 200
    assert statuses[:3].count(200) == 1 and statuses[:3].count(503) == 2, statuses
    for status, headers, body in results[:3]:
        if status == 503:
            assert body["code"] == "too_many_initial_syncs" and int(headers["retry-after"]) > 0
    # once that sync is done, the others go through (one at a time)
    for g in (1, 2, 3):
        for _ in range(100):
            status, headers, body = await engine.get(sid, secret, table="items",
                                                     where=f"g = {g}", offset="-1")  # fmt: skip
            if status == 200:
                break
            assert status == 503 and body["code"] == "too_many_initial_syncs", body
            await asyncio.sleep(0.1)
        assert status == 200
    # the shape limit: four exist now, each requested in the last 60 s (a client may be
    # paging through it): a fifth waits, told when to retry
    for _ in range(100):
        status, headers, body = await engine.get(sid, secret, table="items", where="g = 4",
                                                 offset="-1")  # fmt: skip
        if body.get("code") != "too_many_initial_syncs":  # (g = 3's may still run)
            break
        await asyncio.sleep(0.1)
    assert status == 503 and body["code"] == "shape_limit_reached", body
    assert int(headers["retry-after"]) > 0
    # none read at this moment nor lately (min_idle 0 here: 60 s in the engine), a fifth
    # retires the least recently requested one (g = 0) and is served; g = 0's clients refetch
    registry = engine.manager.running[sid].registry
    registry.min_idle = 0
    registry._room_at = 0.0  # (the refused pass's "none may go before", 60 s away)
    g0 = results[3][1]["electric-handle"]
    for _ in range(100):
        status, headers, body = await engine.get(sid, secret, table="items", where="g = 4",
                                                 offset="-1")  # fmt: skip
        if status == 200:
            break
        assert status == 503 and body["code"] == "too_many_initial_syncs", body
        await asyncio.sleep(0.1)
    assert status == 200, body
    for _ in range(100):  # (its new shape's initial sync waits for g = 4's)
        status, headers, body = await engine.get(sid, secret, table="items", where="g = 0",
                                                 handle=g0, offset="0_0")  # fmt: skip
        if status != 503:
            break
        assert body["code"] == "too_many_initial_syncs", body
        await asyncio.sleep(0.1)
    assert status == 409, (status, body)
