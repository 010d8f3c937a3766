"""The slot is never confirmed past a transaction that is only parked in memory."""

from __future__ import annotations

from typing import Any

from sync_engine.replication.replicator import Replicator
from sync_engine.shapes.router import ShapeRouter


class FakeShape:
    """Just what the ack rule reads of a shape."""

    def __init__(self, pending: list[Any] | None, rotated: bool = False) -> None:
        self.pending = pending
        self.rotated = rotated


def _replicator() -> Replicator:
    return Replicator("", "", "", registry=None, router=ShapeRouter())  # type: ignore[arg-type]


def test_ack_stops_before_the_oldest_parked_transaction() -> None:
    rep = _replicator()
    parked: Any = FakeShape([(700, 5000, []), (701, 6000, [])])
    rep._parked.add(parked)
    assert rep._ackable(9000) == 4999
    assert rep._ackable(3000) == 3000


def test_released_or_rotated_shapes_no_longer_hold_the_ack_back() -> None:
    rep = _replicator()
    released: Any = FakeShape(None)
    rotated: Any = FakeShape([(1, 10, [])], rotated=True)
    rep._parked |= {released, rotated}
    assert rep._ackable(9000) == 9000
    assert not rep._parked
