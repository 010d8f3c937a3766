"""A rotated-out secret's grace period and the wall clock being stepped (NTP, an operator,
a VM resumed): the grace period is counted by the monotonic clock while the engine runs,
and across a restart from what was recorded, never lengthened by a clock set back.

It was counted by the wall clock: a clock stepped forward an hour cut every grace period
under way short at once (clients still using the old secret got 401 although the
operator had given them an hour), and one stepped back kept a rotated-out secret working
for that much longer (after a leak, the operator's "5 minutes" became hours)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sync_engine.tenants.store import SourceStore
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import MultiEngine, make_items

URL = "postgresql://app:pw@db.example.com:5432/shop"


def _step(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Step the wall clock (`time.time`) by `seconds` from the real one."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


async def test_a_clock_step_while_running_neither_cuts_nor_lengthens_a_grace_period(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    src = await engine.add("shop", url)
    sid, first = src["source_id"], src["secret"]
    await engine.wait_state(sid, "active")
    await engine.sync(sid, first, table="items")  # (its snapshot made: later requests are quick)
    status, body = await engine.api("POST", f"/api/sources/{sid}/rotate-secret",
                                    {"grace_period_seconds": 2})  # fmt: skip
    assert status == 200, body

    async def first_works() -> bool:
        return (await engine.get(sid, first, table="items", offset="-1"))[0] == 200

    with monkeypatch.context() as m:
        _step(m, 3600)  # forward an hour: the grace period goes on (was: 401 at once)
        assert await first_works()
        status, body = await engine.api("GET", f"/api/sources/{sid}")
        assert body["previous_secret_expires_at"] is not None, body
    _step(monkeypatch, -3600)  # back an hour: it still ends in about 2 s (was: an hour more)
    assert await first_works()
    await wait_until_async(lambda: _expired(engine, sid, first), timeout=30, interval=0.2,
                           message="the grace period ends")  # fmt: skip
    status, body = await engine.api("GET", f"/api/sources/{sid}")
    assert body["previous_secret_expires_at"] is None, body


async def _expired(engine: MultiEngine, sid: str, secret: str) -> bool:
    return (await engine.get(sid, secret, table="items", offset="-1"))[0] == 401


def test_a_restart_counts_the_grace_from_what_was_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across a restart only the wall clock is left: the time since the grace period was
    last recorded is counted by it, but never as less than 0, so a clock set back while the
    engine was stopped lengthens nothing; set forward, it shortens (it cannot be told from
    time passing)."""
    path = tmp_path / "sources.db"
    reg = SourceStore(path)
    rec = reg.create("shop", URL, "h1")
    reg.rotate_secret(rec.source_id, "h2", 100)
    reg.close()

    def left_after_restart(step: float) -> float:
        with monkeypatch.context() as m:
            _step(m, step)
            store = SourceStore(path)
            got = store.get(rec.source_id).grace_left()
            store.close()
        return got

    assert 95 < left_after_restart(0) <= 100
    assert 95 < left_after_restart(-86400) <= 100  # set back a day: not a day more (was)
    assert 65 < left_after_restart(30) <= 70
    assert left_after_restart(101) == 0

    # what a running engine records (every minute, and when it stops) is counted from
    store = SourceStore(path)
    store.record_grace(rec.source_id, 40)
    store.close()
    assert 35 < left_after_restart(-3600) <= 40  # (the rotation's 100 s no longer count)
    assert 25 < left_after_restart(10) <= 30
