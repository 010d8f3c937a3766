"""LSNs in Postgres's text form."""

from __future__ import annotations

import pytest

from sync_engine.replication.wal import format_lsn, parse_lsn


@pytest.mark.parametrize(
    ("lsn", "text"),
    [
        (0, "0/0"),
        (0x16B3748, "0/16B3748"),
        ((0xA << 32) | 0xFF, "A/FF"),
        ((1 << 64) - 1, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_lsn_round_trip(lsn: int, text: str) -> None:
    assert format_lsn(lsn) == text
    assert parse_lsn(text) == lsn
    assert parse_lsn(text.lower()) == lsn


@pytest.mark.parametrize(
    "bad", ["", "0", "/1", "1/", "x/1", "1/2/3", "123456789/0", "0/-1", "0x1/0", "1_0/0"]
)
def test_parse_lsn_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_lsn(bad)


def test_format_lsn_range() -> None:
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(1 << 64)
