"""Requests waiting on a shape (`Shape.wait_until`): one wake-up for all, each its own timeout.

A long-poll at the tip, a request for a snapshot chunk not yet written and an SSE stream all
wait here; a waiter that times out or whose client goes away must not disturb the others.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sync_engine.log.files import ShapeLog
from sync_engine.pg.catalog import ColumnInfo, TableInfo
from sync_engine.shapes.definition import ShapeDefinition
from sync_engine.shapes.shape import Shape, ShapeHandle
from tests.support.waiting import wait_until_async

COLUMNS = (ColumnInfo("id", 1, 23, "int4", None, "b", -1, 0, True, 0),)
TABLE = TableInfo(16384, "public", "items", COLUMNS, ("id",))


def make_shape(tmp_path: Path) -> Shape:
    definition = ShapeDefinition(TABLE.oid, "public", "items", None, ("id",))
    log = ShapeLog(tmp_path / "1-1", 1 << 20, fsync=False)
    return Shape(ShapeHandle("1-1"), definition, TABLE, None, COLUMNS, log)


async def test_one_notify_wakes_every_waiter_and_a_timeout_or_cancel_leaves_the_others(
    tmp_path: Path,
) -> None:
    shape = make_shape(tmp_path)
    ready = False
    short = asyncio.create_task(shape.wait_until(lambda: ready, 0.05))
    gone = asyncio.create_task(shape.wait_until(lambda: ready, 30))
    stays = [asyncio.create_task(shape.wait_until(lambda: ready, 30)) for _ in range(3)]
    await wait_until_async(lambda: shape.waiting == 5, message="five requests waiting")

    assert await short is False  # its own timeout, nothing changed
    gone.cancel()  # its client went away
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled()
    assert shape.waiting == 3 and not any(t.done() for t in stays)

    ready = True
    shape.notify()
    assert await asyncio.wait_for(asyncio.gather(*stays), 5) == [True, True, True]
    assert shape.waiting == 0


async def test_a_change_that_does_not_meet_the_condition_keeps_waiting(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    seen = 0
    waiter = asyncio.create_task(shape.wait_until(lambda: seen >= 2, 30))
    await wait_until_async(lambda: shape.waiting == 1, message="the request waits")
    seen = 1
    shape.notify()
    await wait_until_async(lambda: shape.waiting == 1 and not waiter.done())
    seen = 2
    shape.notify()
    assert await asyncio.wait_for(waiter, 5) is True


async def test_poll_checks_what_the_shape_does_not_announce(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    moved = False
    waiter = asyncio.create_task(shape.wait_until(lambda: moved, 30, poll=0.01))
    await wait_until_async(lambda: shape.waiting == 1, message="the request waits")
    moved = True  # no notify: found by the next poll
    assert await asyncio.wait_for(waiter, 5) is True


async def test_a_condition_already_true_does_not_wait(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    assert await shape.wait_until(lambda: True, 0) is True
    assert await shape.wait_until(lambda: False, 0) is False
    assert shape.waiting == 0
