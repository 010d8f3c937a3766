"""The rules a committed transaction goes through per shape, and the ack horizon (no Postgres)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sync_engine.replication.transactions import Fate, ParkedShapes, admit, sort_out
from sync_engine.replication.wal import Lsn, Xid
from sync_engine.shapes.changes import Change, ChangeKind


@dataclass
class FakeLog:
    last_lsn: int = 0


@dataclass(eq=False)
class FakeShape:
    """What the rules read and ask of a shape: parks while `horizon_known` is False; the
    snapshot holds the xids in `in_snapshot_xids`."""

    horizon_known: bool = True
    rotated: bool = False
    past_xmax: bool = False
    in_snapshot_xids: set[int] = field(default_factory=set)
    log: FakeLog = field(default_factory=FakeLog)
    parked: list[tuple[int, int, list[Change]]] = field(default_factory=list)

    def park(self, xid: int, lsn: int, changes: list[Change]) -> bool:
        if self.horizon_known:
            return False
        self.parked.append((xid, lsn, changes))
        return True

    def in_snapshot(self, xid: int) -> bool:
        return xid in self.in_snapshot_xids


CHANGES: list[Change] = [(ChangeKind.INSERT, None, {"id": "1"}, 0)]
OTHER: list[Change] = [(ChangeKind.DELETE, {"id": "2"}, None, 2)]


def _sort_out(*shapes: FakeShape, xid: int = 700, lsn: int = 5000) -> tuple[list[int], list[int]]:
    """`sort_out` of a transaction touching `shapes`, by their positions: (append, parked)."""
    touched = {shape: CHANGES if i % 2 == 0 else OTHER for i, shape in enumerate(shapes)}
    append, parked = sort_out(touched, Xid(xid), Lsn(lsn))
    for shape, changes in append:
        assert changes is touched[shape]
    return [shapes.index(s) for s, _ in append], [shapes.index(s) for s in parked]


def test_a_transaction_for_shapes_with_a_known_horizon_is_appended() -> None:
    assert _sort_out(FakeShape(), FakeShape()) == ([0, 1], [])


def test_a_gone_shape_gets_nothing_not_even_parked() -> None:
    gone = FakeShape(horizon_known=False, rotated=True)
    assert _sort_out(gone, FakeShape()) == ([1], [])
    assert gone.parked == []


def test_a_shape_whose_snapshot_is_running_parks_the_transaction() -> None:
    running = FakeShape(horizon_known=False)
    assert _sort_out(FakeShape(), running) == ([0], [1])
    assert running.parked == [(700, 5000, OTHER)]


def test_a_shape_past_its_snapshot_appends_or_replays_without_asking_the_snapshot() -> None:
    shape = FakeShape(past_xmax=True, in_snapshot_xids={700}, log=FakeLog(last_lsn=5000))
    assert _sort_out(shape, lsn=6000) == ([0], [])
    assert _sort_out(shape, lsn=5000) == ([], [])
    shape.rotated = True
    assert _sort_out(shape, lsn=6000) == ([], [])


def test_what_the_log_already_holds_is_a_replay() -> None:
    shape = FakeShape(log=FakeLog(last_lsn=5000))
    assert _sort_out(shape, lsn=5000) == ([], [])
    assert _sort_out(shape, lsn=4000) == ([], [])
    assert _sort_out(shape, lsn=5001) == ([0], [])
    assert admit(shape, Xid(700), Lsn(5000)) is Fate.REPLAYED


def test_what_the_snapshot_holds_is_not_appended_again() -> None:
    shape = FakeShape(in_snapshot_xids={700})
    assert _sort_out(shape, xid=700) == ([], [])
    assert _sort_out(shape, xid=701, lsn=6000) == ([0], [])
    assert admit(shape, Xid(700), Lsn(5000)) is Fate.IN_SNAPSHOT
    assert admit(shape, Xid(701), Lsn(6000)) is Fate.APPEND


def test_the_replay_check_comes_before_visibility() -> None:
    shape = FakeShape(in_snapshot_xids={700}, log=FakeLog(last_lsn=9000))
    assert admit(shape, Xid(700), Lsn(5000)) is Fate.REPLAYED


def test_ack_stops_before_the_oldest_parked_transaction() -> None:
    parked = ParkedShapes()
    shape = FakeShape(parked=[(700, 5000, []), (701, 6000, [])])
    parked.add(shape)
    assert parked.ack_horizon(Lsn(9000)) == 4999
    assert parked.ack_horizon(Lsn(3000)) == 3000


def test_the_oldest_over_all_shapes_holds_the_ack_back() -> None:
    parked = ParkedShapes()
    parked.add(FakeShape(parked=[(701, 6000, [])]))
    parked.add(FakeShape(parked=[(700, 5000, [])]))
    assert parked.ack_horizon(Lsn(9000)) == 4999


def test_released_or_rotated_shapes_no_longer_hold_the_ack_back() -> None:
    parked = ParkedShapes()
    released = FakeShape(parked=[])
    rotated = FakeShape(parked=[(1, 10, [])], rotated=True)
    parked.add(released)
    parked.add(rotated)
    assert parked.ack_horizon(Lsn(9000)) == 9000
    assert len(parked) == 0


def test_a_discarded_shape_no_longer_holds_the_ack_back() -> None:
    parked = ParkedShapes()
    shape = FakeShape(parked=[(700, 5000, [])])
    parked.add(shape)
    parked.discard(shape)
    assert parked.ack_horizon(Lsn(9000)) == 9000
