"""Transactions a shape holds while Postgres evaluates its where clause on a row
(`Shape.hold`): commit order, each once, also when the slot sends them again."""

from __future__ import annotations

from pathlib import Path

from tests.sync_engine.shapes.test_waiting import make_shape


def test_held_transactions_stay_in_commit_order_and_are_held_once(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    assert shape.hold(700, 5000, [])
    assert shape.hold(702, 7000, [])
    assert not shape.hold(700, 5000, [])  # sent again (a reconnect): held already
    # one whose append was cut back (a failed flush) comes again: it goes first
    assert shape.hold(699, 4000, [])
    assert shape.hold(701, 6000, [])
    assert [lsn for _, lsn, _ in shape.held] == [4000, 5000, 6000, 7000]
    first = shape.held[0]
    shape.release_held(first)
    assert [lsn for _, lsn, _ in shape.held] == [5000, 6000, 7000]
    shape.release_held(first)  # (released once)
    assert len(shape.held) == 3


def test_a_retired_shape_holds_nothing(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    shape.hold(700, 5000, [])
    shape.retire()
    assert shape.held == []
    assert not shape.hold(701, 6000, [])
