"""Positions in the WAL and transaction ids, as the replication stream carries them.

Both are plain ``int`` at run time (the hot path compares millions of them); the types only
keep an LSN from being passed where an xid is expected, and say which one a field holds.
"""

from __future__ import annotations

import re
from typing import NewType

__all__ = ["Lsn", "Xid", "format_lsn", "parse_lsn"]

Lsn = NewType("Lsn", int)
"""A WAL position (``pg_lsn``): 64 bits, ``X/Y`` in Postgres's text form."""

Xid = NewType("Xid", int)
"""A transaction id as WAL carries it: the low 32 bits of the xid8 (see `XidSnapshot.widen`)."""

_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def format_lsn(lsn: int) -> str:
    """``0x16B3748`` -> ``'0/16B3748'`` (Postgres' text form of a pg_lsn)."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn!r}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> Lsn:
    """``'0/16B3748'`` -> ``0x16B3748``. Raises ``ValueError`` on anything else."""
    m = _LSN_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"invalid LSN: {text!r}")
    return Lsn((int(m[1], 16) << 32) | int(m[2], 16))
