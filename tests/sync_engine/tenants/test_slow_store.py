"""sources.db written slowly (a slow disk's fsync, another program holding its lock): the
admin request that writes waits, every source goes on serving meanwhile; and a rotation
in force in memory is the one on disk, whatever runs at the same time or is cut short.
sources.db was written on the event loop: a write held every source's requests with it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sync_engine.tenants import store as store_module
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import MultiEngine, make_items, sql

#: How long a held write waits for the test to let it go (the old code, which held the
#: event loop for that long, fails the test then instead of hanging)
HOLD = 15.0


async def _two_sources(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> tuple[MultiEngine, dict[str, Any], dict[str, Any], str]:
    url_a, url_b = make_db(), make_db()
    make_items(url_a, ["a1"])
    make_items(url_b, ["b1"])
    engine = await engines().start()
    a = await engine.add("alpha", url_a)
    b = await engine.add("beta", url_b)
    for src in (a, b):
        await engine.wait_state(src["source_id"], "active")
    return engine, a, b, url_b


async def _others_are_served(
    engine: MultiEngine, a: dict[str, Any], b: dict[str, Any], url_b: str, n: int
) -> None:
    """B's live client gets a new row, a new shape of B snapshots, A's secret still works."""
    sid, secret = b["source_id"], b["secret"]
    rows, handle, offset = await engine.sync(sid, secret, table="items")
    sql(url_b, "INSERT INTO items VALUES (%s, %s)", (n, f"b{n}"))
    while f"b{n}" not in [r["name"] for r in rows.values()]:
        offset = await engine.follow(sid, secret, handle, offset, rows, table="items")
    fresh, _, _ = await engine.sync(sid, secret, table="items", where=f"id = {n}")
    assert [r["name"] for r in fresh.values()] == [f"b{n}"]
    status, _, _ = await engine.get(a["source_id"], a["secret"], table="items", offset="-1")
    assert status == 200  # (A's rotation, if one is being written, is not answered yet)


def _hold(obj: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event,
                                                                          threading.Event]:  # fmt: skip
    """Make `obj.name` (a store write) wait, in whatever thread runs it, until the second
    event is set; the first is set when it starts waiting."""
    entered, gate = threading.Event(), threading.Event()
    real = getattr(obj, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        gate.wait(HOLD)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, held)
    return entered, gate


async def test_a_slow_store_write_does_not_stall_the_other_sources(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, a, b, url_b = await _two_sources(engines, make_db)
    sid = a["source_id"]
    store = engine.manager.store
    entered, gate = _hold(store, "rotate_secret", monkeypatch)
    rotating = asyncio.create_task(engine.api("POST", f"/api/sources/{sid}/rotate-secret", {}))
    try:
        await wait_until_async(entered.is_set, message="the rotation's write started")
        await _others_are_served(engine, a, b, url_b, 2)
        status, listing = await engine.api("GET", "/api/sources")  # the admin API reads too
        assert status == 200 and len(listing["sources"]) == 2
        assert not rotating.done(), "served only after the write was let go"
    finally:
        gate.set()
    status, body = await rotating
    assert status == 200, body
    assert (await engine.get(sid, a["secret"], table="items", offset="-1"))[0] == 401
    assert (await engine.get(sid, body["secret"], table="items", offset="-1"))[0] == 200


async def test_another_program_holding_the_store_does_not_stall_the_other_sources(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real write path: SQLite itself waits for the lock an sqlite3 shell holds."""
    monkeypatch.setattr(store_module, "BUSY_WAIT", HOLD)
    engine, a, b, url_b = await _two_sources(engines, make_db)
    sid = a["source_id"]
    other = sqlite3.connect(engine.data_dir / "sources.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        pausing = asyncio.create_task(engine.api("POST", f"/api/sources/{sid}/pause"))
        await _others_are_served(engine, a, b, url_b, 2)
        assert not pausing.done(), "served only after the lock was released"
        other.execute("ROLLBACK")
    finally:
        other.close()
    status, body = await pausing
    assert status == 200 and body["state"] == "paused", body


async def test_rotations_at_once_and_one_cut_short_leave_memory_and_store_agreeing(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two rotations at once: both answered, the later one's secret is the one that works,
    also after a restart. A rotation whose request is cancelled while its write is under
    way (its client gone, the engine stopping) still takes effect in memory as on disk: the
    old secret must not go on working until a restart."""
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    a = await engine.add("alpha", url)
    sid, first = a["source_id"], a["secret"]
    await engine.wait_state(sid, "active")
    manager = engine.manager
    assert manager.store is not None
    entered, gate = _hold(manager.store, "rotate_secret", monkeypatch)
    one = asyncio.create_task(engine.api("POST", f"/api/sources/{sid}/rotate-secret", {}))
    await wait_until_async(entered.is_set, message="the first rotation's write started")
    # (the first holds the lock: the second rotates after it, whenever it comes)
    two = asyncio.create_task(engine.api("POST", f"/api/sources/{sid}/rotate-secret", {}))
    gate.set()
    (s1, b1), (s2, b2) = await one, await two
    assert (s1, s2) == (200, 200), (b1, b2)
    got = {
        k: (await engine.get(sid, v, table="items", offset="-1"))[0]
        for k, v in {"first": first, "one": b1["secret"], "two": b2["secret"]}.items()
    }
    assert got == {"first": 401, "one": 401, "two": 200}, got

    # cut short: the request is cancelled while its write is held
    entered.clear()
    gate.clear()
    cut = asyncio.create_task(manager.rotate_secret(sid, 0))
    await wait_until_async(entered.is_set, message="the rotation's write started")
    cut.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await cut
    await wait_until_async(lambda: not manager._mutations, message="the rotation ended")
    assert (await engine.get(sid, b2["secret"], table="items", offset="-1"))[0] == 401

    await engine.close()
    engine = await engines(engine.data_dir).start()
    await engine.wait_state(sid, "active")
    for secret in (first, b1["secret"], b2["secret"]):
        assert (await engine.get(sid, secret, table="items", offset="-1"))[0] == 401
