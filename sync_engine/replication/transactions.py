"""What becomes of a committed transaction on its way into a shape's log: the rules, pure.

For each shape a transaction touched (see `sort_out`, and `admit` once a parked one is
released):

- the shape is gone (rotated): dropped;
- its snapshot's xid horizon is not known yet: *parked* on the shape, as only the horizon
  tells whether the snapshot's rows already hold the transaction (`Shape.park`);
- its log already holds the transaction, by commit LSN: the slot sent it again after a
  restart (*replay*), skipped;
- the snapshot's rows already hold it (*visibility*, by xid: `Shape.in_snapshot`): skipped;
- else it is appended.

Parked transactions are in no log yet, so the slot must not be confirmed past the oldest
of them, or a crash would lose them (`ParkedShapes.ack_horizon`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Final, Protocol, TypeVar

from ..shapes.changes import Change
from .wal import Lsn, Xid

__all__ = [
    "APPEND",
    "GONE",
    "IN_SNAPSHOT",
    "PARKED",
    "REPLAYED",
    "Fate",
    "ParkedShapes",
    "admit",
    "sort_out",
]


class Fate(enum.Enum):
    """What becomes of a transaction for one shape."""

    GONE = "gone"
    PARKED = "parked"
    REPLAYED = "replayed"
    IN_SNAPSHOT = "in_snapshot"
    APPEND = "append"


# The members, read once: on Python 3.11 reading a member off its Enum class costs about as
# much as the rest of a transaction's bookkeeping, and these run for each one a shape gets.
GONE: Final = Fate.GONE
PARKED: Final = Fate.PARKED
REPLAYED: Final = Fate.REPLAYED
IN_SNAPSHOT: Final = Fate.IN_SNAPSHOT
APPEND: Final = Fate.APPEND


class _Log(Protocol):
    @property
    def last_lsn(self) -> int: ...


class Target(Protocol):
    """What these rules read and ask of a shape (`shapes.shape.Shape`)."""

    @property
    def rotated(self) -> bool: ...

    @property
    def past_xmax(self) -> bool:
        """True once `in_snapshot` saw a transaction past the snapshot (then always False)."""
        ...

    @property
    def log(self) -> _Log: ...

    def park(self, xid: int, lsn: int, changes: list[Change]) -> bool: ...

    def in_snapshot(self, xid: int) -> bool: ...


_S = TypeVar("_S", bound=Target)


def sort_out(
    touched: Mapping[_S, list[Change]], xid: Xid, lsn: Lsn
) -> tuple[list[tuple[_S, list[Change]]], list[_S]]:
    """A transaction just read from the stream, with its changes per shape it touched: the
    shapes to append it to (with their changes), and those it was parked on (their horizon
    is unknown). Gone shapes, replays and what the snapshot holds are left out.

    One loop over the shapes, the rules of `admit` written out: a write to a table with
    many unindexed shapes (`ILIKE`, say) comes here with every one of them.
    """
    append: list[tuple[_S, list[Change]]] = []
    parked: list[_S] = []
    for shape, changes in touched.items():
        if shape.rotated:
            continue
        if shape.past_xmax:
            # The common case, without the calls: a shape that saw a transaction past its
            # snapshot is ACTIVE (`park` says False) and nothing later is in its snapshot.
            if lsn > shape.log.last_lsn:
                append.append((shape, changes))
        elif shape.park(xid, lsn, changes):
            parked.append(shape)
        elif lsn > shape.log.last_lsn and not shape.in_snapshot(xid):
            append.append((shape, changes))
    return append, parked


def admit(shape: Target, xid: Xid, lsn: Lsn) -> Fate:
    """`Fate.APPEND`, or why a shape whose horizon is known must not append the transaction
    (parked ones are handed to this once the horizon is known)."""
    if lsn <= shape.log.last_lsn:
        return REPLAYED
    if shape.in_snapshot(xid):
        return IN_SNAPSHOT
    return APPEND


class Parked(Protocol):
    """What the ack horizon reads of a shape."""

    @property
    def rotated(self) -> bool: ...

    @property
    def parked(self) -> Sequence[tuple[int, int, object]]:
        """(xid, commit LSN, changes) of its parked transactions, in commit order."""
        ...


class ParkedShapes:
    """The shapes that hold parked transactions, and how far the slot may be confirmed."""

    def __init__(self) -> None:
        self._shapes: set[Parked] = set()

    def add(self, shape: Parked) -> None:
        self._shapes.add(shape)

    def discard(self, shape: Parked) -> None:
        """`shape`'s parked transactions were taken (to be applied)."""
        self._shapes.discard(shape)

    def __len__(self) -> int:
        return len(self._shapes)

    def ack_horizon(self, lsn: Lsn) -> Lsn:
        """`lsn`, or just before the oldest transaction still parked on a shape.

        Shapes with nothing parked any more, or gone, are forgotten.
        """
        if not self._shapes:
            return lsn
        self._shapes = {s for s in self._shapes if s.parked and not s.rotated}
        if not self._shapes:
            return lsn
        oldest = min(s.parked[0][1] for s in self._shapes)
        return Lsn(min(lsn, oldest - 1))
