"""Which WAL transactions a shape's snapshot already contains (Postgres's rule, xid8-aware)."""

from sync_engine.pg.xid_snapshot import XidSnapshot


def test_visibility_rule() -> None:
    snap = XidSnapshot.parse("100:105:100,102")
    assert snap.visible(99)  # committed before the snapshot
    assert not snap.visible(100)  # in progress
    assert snap.visible(101)
    assert not snap.visible(102)
    assert snap.visible(104)
    assert not snap.visible(105)  # started after
    assert not snap.visible(4000)


def test_visibility_across_an_epoch_boundary() -> None:
    epoch = 1 << 32
    snap = XidSnapshot(xmin=epoch + 5, xmax=epoch + 10, xip=frozenset())
    assert snap.visible(2)  # epoch+2: before xmin
    assert not snap.visible(11)  # after xmax
    assert snap.visible(0xFFFFFFF0)  # previous epoch, long ago
    assert snap.widen(0xFFFFFFF0) == epoch - 16
    late = XidSnapshot(xmin=epoch - 20, xmax=epoch - 10, xip=frozenset())
    assert not late.visible(3)  # wrapped past 2^32: a later transaction
    assert late.widen(3) == epoch + 3
