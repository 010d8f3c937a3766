"""`--max-shapes`: a new shape retires the least recently requested idle shapes, as
Electric expires least recently used shapes, instead of refusing every new shape for good.

It was a 503 "Shape limit reached" with `Retry-After: 10` once the limit was reached, and
since the engine never expired a shape, retrying never helped: one user of the proxy who
asked for a few hundred distinct `where=id=N` shapes locked every other user out of every
new shape (found by the attack probe). Now the idle shapes go (their clients get a 409 and
refetch), the shapes clients are reading now stay, and the 503 remains only when every
shape is in use.

A shape requested in the last `ShapeRegistry.min_idle` seconds counts as in use too: a client
paging through a shape (its first sync, one chunk request after another) was retired between
two of its requests by another user's new shapes, and its refetch refused 503 while the held
shapes stayed held; its first sync never finished (chaos, attack: one principal creating ~90
new shapes a second through the proxy). The new shape waits (503, Retry-After) instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine, apply

LIMIT = 3


@pytest.fixture(params=["aged"])
async def limited(
    request: Any, aiohttp_client: Any, db_url: str, tmp_path: Path
) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        max_shapes=LIMIT,
        max_log_bytes=1 << 40,  # (passed on to the source as max_shapes is: checked below)
        long_poll_timeout=20.0,  # (held requests stay held while the test runs)
        chunk_bytes=16 * 1024,  # (a client pages through a few thousand rows)
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    if request.param == "aged":  # (these cases are about which shapes go, not when)
        engine.source.registry.min_idle = 0.0
    yield engine


async def test_idle_shapes_make_room_and_held_ones_stay(limited: Engine) -> None:
    engine = limited
    # (the engine's limits reach its source: `--max-log-bytes` did nothing in database mode)
    assert engine.source.config.max_shapes == LIMIT
    assert engine.source.config.max_log_bytes == 1 << 40
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("CREATE TABLE todos (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 20) i")
    engine.sql("INSERT INTO todos VALUES (1, 'bob''s todo')")

    # bob follows todos live: his long-poll is held at the tip
    rows, bob_handle, bob_offset = await engine.sync(table="todos")
    bob_live = asyncio.create_task(
        engine.get(table="todos", handle=bob_handle, offset=bob_offset, live="true")
    )
    await engine.until_parked(1)

    # alice asks for more distinct shapes than the limit, one after the other
    alice: dict[int, str] = {}
    for i in range(1, 9):
        status, h, body = await engine.get(table="items", where=f"id = {i}", offset="-1")
        assert status == 200, body  # (was a 503 from the third on)
        alice[i] = h["electric-handle"]
        assert len(engine.source.registry) <= LIMIT

    # bob's held shape was not taken: his long-poll gets the next change, no 409
    engine.sql("INSERT INTO todos VALUES (2, 'next')")
    status, h, body = await asyncio.wait_for(bob_live, timeout=30)
    assert status == 200, body
    assert [m["value"]["id"] for m in body if "value" in m] == ["2"]

    # and bob's new shape is served too
    status, h, body = await engine.get(table="todos", where="id = 1", offset="-1")
    assert status == 200, body
    assert len(engine.source.registry) <= LIMIT

    # an evicted shape's client is told to refetch, and refetching gives the right rows
    status, h, body = await engine.get(table="items", where="id = 1", handle=alice[1], offset="0_0")
    assert status == 409, (status, body)
    rows, _, _ = await engine.sync(table="items", where="id = 1")
    assert [r["title"] for r in rows.values()] == ["item 1"]


async def test_a_new_shape_is_refused_only_while_every_shape_is_in_use(limited: Engine) -> None:
    engine = limited
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 9) i")
    held = []
    for i in range(1, LIMIT + 1):
        _, handle, offset = await engine.sync(table="items", where=f"id = {i}")
        held.append(
            asyncio.create_task(
                engine.get(
                    table="items", where=f"id = {i}", handle=handle, offset=offset, live="true"
                )
            )
        )
    await engine.until_parked(LIMIT)

    status, h, body = await engine.get(table="items", where="id = 9", offset="-1")
    assert status == 503, (status, body)
    assert body["code"] == "shape_limit_reached" and int(h["retry-after"]) > 0, (h, body)
    assert "max_shapes" in body["message"]

    # once one of them is no longer read, it makes room
    held[0].cancel()
    await asyncio.gather(held[0], return_exceptions=True)
    for _ in range(100):
        if engine.parked() < LIMIT:
            break
        await asyncio.sleep(0.05)
    status, h, body = await engine.get(table="items", where="id = 9", offset="-1")
    assert status == 200, (status, body)
    assert [m["value"]["id"] for m in body if "value" in m] == ["9"]
    engine.sql("UPDATE items SET title = 'changed' WHERE id IN (2, 3)")  # (wakes the others)
    for task in held[1:]:
        status, _, body = await asyncio.wait_for(task, timeout=30)
        assert status == 200, body  # (still theirs: not evicted while held)


@pytest.mark.parametrize("limited", ["fresh"], indirect=True)
async def test_a_client_paging_through_a_shape_keeps_it_while_new_shapes_wait(
    limited: Engine,
) -> None:
    engine = limited
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, 2000) i")
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 9) i")

    # carol's first sync of `big`: her first answer is one chunk of many
    rows: dict[str, dict[str, Any]] = {}
    status, h, body = await engine.get(table="big", offset="-1")
    assert status == 200 and "electric-up-to-date" not in h, h
    apply(rows, body)
    handle, offset = h["electric-handle"], h["electric-offset"]
    shape = engine.source.shape(handle)
    await wait_until_async(lambda: shape.log.snapshot_complete, message="snapshot taken")

    # between two of her requests, dave asks for new shapes, one after another
    answers = [await engine.get(table="items", where=f"id = {i}", offset="-1") for i in range(1, 5)]
    assert [status for status, _, _ in answers[: LIMIT - 1]] == [200] * (LIMIT - 1), answers
    for status, h, body in answers[LIMIT - 1 :]:  # (the registry is full of shapes in use)
        assert status == 503, (status, body)  # (was 200: carol's shape retired for it)
        assert body["code"] == "shape_limit_reached" and int(h["retry-after"]) > 0, (h, body)
        assert "max_shapes" in body["message"], body

    # carol pages on to the end of her first sync: no 409, every row
    statuses = []
    while "electric-up-to-date" not in h:
        status, h, body = await engine.get(table="big", handle=handle, offset=offset)
        statuses.append(status)
        assert status == 200, (statuses, body)
        apply(rows, body)
        offset = h["electric-offset"]
    assert len(statuses) > 1, statuses
    assert sorted(int(r["id"]) for r in rows.values()) == list(range(1, 2001))


@pytest.mark.parametrize("limited", ["fresh"], indirect=True)
async def test_a_client_whose_definition_changed_is_told_to_refetch_even_without_room(
    limited: Engine,
) -> None:
    """A policy narrowed at the proxy (or a client's where changed): each client asks with
    its old handle and the new definition. With no room for the new shape it got 503 for
    up to `min_idle` (60 s) and its client went on showing, as up to date, the rows of the
    old definition (chaos seed 3102). It gets its 409 must-refetch now, and the shape it
    left makes room unless another client still uses it."""
    engine = limited
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("CREATE TABLE todos (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 9) i")
    engine.sql("INSERT INTO todos VALUES (1, 'a'), (2, 'b')")

    # bob follows todos live (held: in use), alice and carol follow items under their
    # policies: the registry is full of shapes used just now
    _, bob_handle, bob_offset = await engine.sync(table="todos")
    bob_live = asyncio.create_task(
        engine.get(table="todos", handle=bob_handle, offset=bob_offset, live="true")
    )
    await engine.until_parked(1)
    _, alice_handle, alice_offset = await engine.sync(table="items", where="id <= 8")
    _, carol_handle, carol_offset = await engine.sync(table="items", where="id <= 7")
    assert len(engine.source.registry) == LIMIT

    # the policy narrows: alice asks for `id <= 2` with her old handle, and is told to
    # refetch (was a 503: she kept rows 3-8), at the shape made where hers was
    status, h, body = await engine.get(
        table="items", where="id <= 2", handle=alice_handle, offset=alice_offset
    )
    assert status == 409, (status, body)
    assert body == [{"headers": {"control": "must-refetch"}}]
    assert h["electric-handle"] != alice_handle
    rows, handle, _ = await engine.sync(table="items", where="id <= 2")
    assert handle == h["electric-handle"] and sorted(rows) == [
        '"public"."items"/"1"',
        '"public"."items"/"2"',
    ]

    # carol moves there too (a shape that exists): her old shape may go for another's new
    # one (was a 503: it counted as used for 60 s)
    status, h, body = await engine.get(
        table="items", where="id <= 2", handle=carol_handle, offset=carol_offset
    )
    assert status == 409 and h["electric-handle"] == handle, (status, body)
    status, h, body = await engine.get(table="items", where="id = 9", offset="-1")
    assert status == 200, (status, body)

    # a second client of bob's held shape moves: that shape is in use, so there is no
    # room; still a 409 (no handle to name), and its refetch waits with the 503
    status, h, body = await engine.get(
        table="todos", where="id = 1", handle=bob_handle, offset=bob_offset
    )
    assert status == 409 and "electric-handle" not in h, (status, h, body)
    assert body == [{"headers": {"control": "must-refetch"}}]
    status, h, body = await engine.get(table="todos", where="id = 1", offset="-1")
    assert status == 503 and body["code"] == "shape_limit_reached", (status, body)
    assert int(h["retry-after"]) > 0

    engine.sql("INSERT INTO todos VALUES (3, 'c')")  # (bob's long-poll: still his shape)
    status, _, body = await asyncio.wait_for(bob_live, timeout=30)
    assert status == 200, body

    # bob moves too (his client asks no more for the old definition): once nothing is held
    # on the shape its clients left, it makes room within Retry-After (it counted as used
    # for 60 s from the end of that long-poll: chaos seed 3102, clients empty for a minute)
    async def refetched() -> bool:
        status, h, body = await engine.get(table="todos", where="id = 1", offset="-1")
        assert status in (200, 503), (status, body)
        assert status == 200 or int(h["retry-after"]) <= 1, h
        return status == 200

    await wait_until_async(refetched, timeout=10, message="the left shape made room")
