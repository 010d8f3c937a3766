"""A source paused while its clients are live, and a source deleted then registered again
on the same database: clear answers, never a hang, never the old shape's rows as good."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.engine_process import apply_messages
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import UNAUTHORIZED, MultiEngine, make_items, sql


async def _sse(engine: MultiEngine, sid: str, secret: str, **params: Any) -> tuple[int, bytes]:
    assert engine.client is not None
    q = {k: str(v) for k, v in params.items()}
    q |= {"source_id": sid, "secret": secret, "live": "true", "live_sse": "true"}
    resp = await engine.client.get("/v1/shape", params=q)
    return resp.status, await resp.read()


@pytest.mark.usefixtures("quick_cutoff")
async def test_a_source_paused_while_clients_are_live_answers_them_then_resumes_losing_nothing(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url = make_db()
    make_items(url, ["a1"])
    # held requests must still be held when the pause comes, however loaded the machine
    engine = await engines(long_poll_timeout=60.0, sse_timeout=60.0).start()
    a = await engine.add("alpha", url)
    sid, secret = a["source_id"], a["secret"]
    await engine.wait_state(sid, "active")
    rows, handle, offset = await engine.sync(sid, secret, table="items")
    long_poll = asyncio.create_task(engine.get(sid, secret, table="items", offset=offset,
                                               handle=handle, live="true"))  # fmt: skip
    stream = asyncio.create_task(_sse(engine, sid, secret, table="items", offset=offset,
                                      handle=handle))  # fmt: skip
    await engine.until_parked(sid, 2)

    status, body = await asyncio.wait_for(engine.api("POST", f"/api/sources/{sid}/pause"), 30)
    assert status == 200 and body["state"] == "paused", body
    # the held requests are answered at once: the long-poll the 503, the stream ends whole
    # (they were cut off after 5 s, their clients got no answer)
    done, _ = await asyncio.wait({long_poll, stream}, timeout=30)
    assert done == {long_poll, stream}, "a held request of the paused source hangs"
    status, _, got = long_poll.result()
    assert status == 503 and got["code"] == "source_paused", (status, got)
    status, streamed = stream.result()
    assert status == 200 and b"a1" not in streamed  # no row is sent as new
    # while paused: every request of the source gets the same 503, written rows wait
    sql(url, "INSERT INTO items VALUES (2, 'a2')")
    for params in ({"offset": offset, "handle": handle, "live": "true"}, {"offset": "-1"}):
        status, h, got = await asyncio.wait_for(engine.get(sid, secret, table="items",
                                                           **params), 30)  # fmt: skip
        assert status == 503 and got["code"] == "source_paused", (params, status, got)

    status, body = await engine.api("POST", f"/api/sources/{sid}/resume")
    assert status == 200
    await engine.wait_state(sid, "active")
    # the client goes on from where it was: the row written during the pause arrives
    for _ in range(20):
        status, h, got = await engine.get(sid, secret, table="items", offset=offset,
                                          handle=handle, live="true")  # fmt: skip
        assert status == 200, (status, got)
        apply_messages(rows, got)
        offset = h["electric-offset"]
        if "a2" in [r["name"] for r in rows.values()]:
            break
    assert sorted(r["name"] for r in rows.values()) == ["a1", "a2"]


async def test_a_source_registered_again_on_the_same_database_after_its_deletion(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """Same name, same database URL, after a delete: a new source (id, secret, slot); the old
    id and secret stay refused; the old shape's handle is a 409 on the new source, never its
    rows as current; the new source serves the database as it is now."""
    url = make_db()
    make_items(url, ["a1", "a2"])
    engine = await engines().start()
    old = await engine.add("alpha", url)
    await engine.wait_state(old["source_id"], "active")
    rows, handle, offset = await engine.sync(old["source_id"], old["secret"], table="items")
    assert len(rows) == 2
    status, _ = await engine.api("DELETE", f"/api/sources/{old['source_id']}")
    assert status == 200
    sql(url, "DELETE FROM items WHERE id = 1")
    sql(url, "INSERT INTO items VALUES (3, 'a3')")

    new = await engine.add("alpha", url)
    assert new["source_id"] != old["source_id"] and new["secret"] != old["secret"]
    await engine.wait_state(new["source_id"], "active")
    slots = sql(url, "SELECT slot_name FROM pg_replication_slots")
    assert [s for (s,) in slots] == [new["slot_name"]]

    for sid, secret in ((old["source_id"], old["secret"]), (old["source_id"], new["secret"]),
                        (new["source_id"], old["secret"])):  # fmt: skip
        status, _, got = await engine.get(sid, secret, table="items", offset=offset,
                                          handle=handle)  # fmt: skip
        assert (status, got) == (401, UNAUTHORIZED)
    # the old handle and offset on the new source: must-refetch, not the old rows
    status, _, got = await engine.get(new["source_id"], new["secret"], table="items",
                                      offset=offset, handle=handle)  # fmt: skip
    assert status == 409, (status, got)
    fresh, _, _ = await engine.sync(new["source_id"], new["secret"], table="items")
    assert sorted(r["name"] for r in fresh.values()) == ["a2", "a3"]


async def test_a_source_paused_and_deleted_in_the_middle_of_a_snapshot(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """A big initial sync in progress when its source is paused: the request ends (not a
    hang), after resume a client gets every row exactly once; deleted in the middle of one:
    the deletion drops the slot and publication without a warning."""
    url = make_db()
    sql(url, "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    sql(url, "INSERT INTO items SELECT g, 'row ' || g || repeat('x', 200) FROM"
             " generate_series(1, 75000) g")  # fmt: skip
    engine = await engines().start()
    a = await engine.add("big", url)
    sid, secret = a["source_id"], a["secret"]
    await engine.wait_state(sid, "active")

    async def started() -> bool:
        return engine.manager.running[sid].initial_syncs_in_progress() > 0

    first = asyncio.create_task(engine.get(sid, secret, table="items", offset="-1"))
    await wait_until_async(started, message="the snapshot runs")
    status, body = await asyncio.wait_for(engine.api("POST", f"/api/sources/{sid}/pause"), 60)
    assert status == 200, body
    done, _ = await asyncio.wait({first}, timeout=30)
    assert done, "the snapshot's request hangs after the pause"
    status, _, body = first.result()
    assert status == 503, (status, body)  # (paused mid-snapshot: not served in part)
    status, body = await engine.api("POST", f"/api/sources/{sid}/resume")
    assert status == 200
    await engine.wait_state(sid, "active")
    rows, _, _ = await engine.sync(sid, secret, table="items")
    assert len(rows) == 75000
    assert sorted(int(r["id"]) for r in rows.values()) == list(range(1, 75001))

    second = asyncio.create_task(engine.get(sid, secret, table="items", where="id > 5",
                                            offset="-1"))  # fmt: skip
    await wait_until_async(started, message="another snapshot runs")
    status, body = await asyncio.wait_for(engine.api("DELETE", f"/api/sources/{sid}"), 60)
    assert status == 200 and body["warnings"] == [], body
    done, _ = await asyncio.wait({second}, timeout=30)
    assert done, "the snapshot's request hangs after the deletion"
    # (deleted mid-snapshot: no answer that ends the snapshot; its first chunk may have been
    # whole, durable and sent before the deletion, as a page of it, and the next is refused:
    # ci3, at load 1.5, the 75,000-row snapshot's first chunk beat the DELETE)
    status, headers, _ = second.result()
    assert status != 200 or "electric-up-to-date" not in headers, (status, headers)
    assert sql(url, "SELECT slot_name FROM pg_replication_slots") == []
    assert sql(url, "SELECT pubname FROM pg_publication") == []


async def test_two_sources_on_one_database_deleting_one_leaves_the_other_streaming(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """Each source has its own slot and publication: deleting one drops only its own, and
    the other's live client gets the next change."""
    url = make_db()
    make_items(url, ["x1"])
    engine = await engines(long_poll_timeout=60.0).start()
    one = await engine.add("one", url)
    two = await engine.add("two", url)
    for src in (one, two):
        await engine.wait_state(src["source_id"], "active")
    await engine.sync(one["source_id"], one["secret"], table="items")
    rows, handle, offset = await engine.sync(two["source_id"], two["secret"], table="items")
    live = asyncio.create_task(engine.follow(two["source_id"], two["secret"], handle, offset,
                                             rows, table="items"))  # fmt: skip
    await engine.until_parked(two["source_id"])
    status, body = await engine.api("DELETE", f"/api/sources/{one['source_id']}")
    assert status == 200 and body["warnings"] == [], body
    assert [s for (s,) in sql(url, "SELECT slot_name FROM pg_replication_slots")] == [
        two["slot_name"]
    ]
    assert [p for (p,) in sql(url, "SELECT pubname FROM pg_publication")] == [
        two["publication_name"]
    ]
    sql(url, "INSERT INTO items VALUES (2, 'x2')")
    await asyncio.wait_for(live, 30)
    assert sorted(r["name"] for r in rows.values()) == ["x1", "x2"]
