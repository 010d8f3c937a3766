"""`pg_current_snapshot()` parsed once: visibility of WAL xids, the batch's check, the forms
it is stored and sent in (pure)."""

from __future__ import annotations

import pytest

from sync_engine.log.entries import snapshot_end_message
from sync_engine.pg.xid_snapshot import XidSnapshot


def test_parse_reads_postgres_text() -> None:
    snap = XidSnapshot.parse("100:105:100,102")
    assert (snap.xmin, snap.xmax, snap.xip) == (100, 105, frozenset({100, 102}))
    assert str(snap) == "100:105:100,102"
    assert XidSnapshot.parse("7:7:") == XidSnapshot(7, 7, frozenset())


@pytest.mark.parametrize("text", ["", "1:2", "a:b:", "1:2:x"])
def test_parse_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        XidSnapshot.parse(text)


def test_json_round_trip() -> None:
    snap = XidSnapshot.parse("100:105:103,100")
    assert snap.to_json() == {"xmin": 100, "xmax": 105, "xip": [100, 103]}
    assert XidSnapshot.from_json(snap.to_json()) == snap
    with pytest.raises(TypeError):
        XidSnapshot.from_json({"xmin": "100", "xmax": 105, "xip": []})


def test_invisible_agrees_with_visible_across_wraparound() -> None:
    """The batch's fast check gives `visible`'s answer for every xid near a snapshot, the
    32-bit wraparound included."""
    for text in ("1000:1300:1005,1010", "4294967290:4294967400:4294967295,4294967300", "5:9:5,7"):
        snapshot = XidSnapshot.parse(text)
        base = snapshot.xmax & 0xFFFFFFFF
        xids = [(base + d) & 0xFFFFFFFF for d in range(-400, 200)]
        assert snapshot.invisible(xids) == [x for x in xids if not snapshot.visible(x)], text


def test_snapshot_end_message_lists_xip_in_order() -> None:
    end = snapshot_end_message(XidSnapshot.parse("100:105:102,100"))
    assert end == (
        b'{"headers":{"control":"snapshot-end","xmin":"100","xmax":"105","xip_list":["100","102"]}}'
    )
