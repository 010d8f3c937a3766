"""The same creation sent twice at once (a double submit, a retry before the first request
gave up): the second waits for the first's answer instead of replacing the secret under it.
It then gets a 409 (the first answer was sent) or the same answer (it was not)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import UNAUTHORIZED, MultiEngine, make_items


async def test_a_creation_sent_twice_at_once_keeps_the_first_answers_secret(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    body = {"name": "twice", "database_url": url}
    held = tmp_path / "held"
    monkeypatch.setenv("SHAPEGATE_TEST_HOLD_ADMIN", f"create:{held}")
    first = asyncio.create_task(engine.api("POST", "/api/sources", body))
    await wait_until_async(held.exists, timeout=30, message="the first answer is held")
    monkeypatch.delenv("SHAPEGATE_TEST_HOLD_ADMIN")
    (sid,) = engine.manager.records
    second = asyncio.create_task(engine.api("POST", "/api/sources", body))
    waiting = engine.manager._answering[sid]
    await wait_until_async(lambda: getattr(waiting, "_waiters", None), message="it waits")
    assert not second.done()
    held.unlink()  # the first answer goes out
    status, one = await first
    assert status == 201 and one["source_id"] == sid, one
    status, two = await second
    assert status == 409 and two["source_id"] == sid, two  # was: 201, another secret
    await engine.wait_state(sid, "active")
    rows, _, _ = await engine.sync(sid, one["secret"], table="items")  # the first one works
    assert [r["name"] for r in rows.values()] == ["a1"]


async def test_a_retry_waiting_for_an_answer_that_was_never_sent_takes_over(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    rec, lost, _ = await engine.manager.create("lost", url)  # its answer is "being sent"
    retry = asyncio.create_task(engine.api("POST", "/api/sources", {"name": "lost",
                                                                    "database_url": url}))  # fmt: skip
    waiting = engine.manager._answering[rec.source_id]
    await wait_until_async(lambda: getattr(waiting, "_waiters", None), message="it waits")
    engine.manager.answer_ended(rec.source_id)  # the request is over, nothing sent
    status, got = await retry
    # the same secret: whoever may hold the first answer keeps a working one
    assert status == 201 and got["source_id"] == rec.source_id and got["secret"] == lost
    await engine.wait_state(rec.source_id, "active")
    rows, _, _ = await engine.sync(rec.source_id, lost, table="items")
    assert [r["name"] for r in rows.values()] == ["a1"]
    status, _, body = await engine.get(rec.source_id, "x" + lost, table="items", offset="-1")
    assert (status, body) == (401, UNAUTHORIZED)
    status, got = await engine.api("POST", "/api/sources", {"name": "lost", "database_url": url})
    assert status == 409 and got["source_id"] == rec.source_id, got  # delivered now


async def test_a_secret_used_counts_as_delivered(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """A creation whose answer was not recorded as sent, whose secret a client then uses:
    the client has it, so the source counts as delivered from then on (its sealed copy is
    erased from sources.db, a retry of the creation is a 409) rather than keeping a copy of
    the secret on disk until someone retries."""
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    rec, secret, _ = await engine.manager.create("used", url)
    engine.manager.answer_ended(rec.source_id)  # the request is over, not recorded as sent
    assert engine.manager.records[rec.source_id].pending_secret is not None
    await engine.wait_state(rec.source_id, "active")
    rows, _, _ = await engine.sync(rec.source_id, secret, table="items")
    assert [r["name"] for r in rows.values()] == ["a1"]

    async def delivered() -> bool:
        status, body = await engine.api("GET", f"/api/sources/{rec.source_id}")
        return bool(body["secret_delivered"])

    await wait_until_async(delivered, message="counted as delivered")
    store = engine.manager.store
    assert store is not None
    await wait_until_async(lambda: store.get(rec.source_id).pending_secret is None,
                           message="the sealed copy erased")  # fmt: skip
    status, got = await engine.api("POST", "/api/sources", {"name": "used", "database_url": url})
    assert status == 409 and got["source_id"] == rec.source_id, got
