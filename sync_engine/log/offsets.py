"""Log offsets: `<tx>_<op>` positions in a shape log, parsed, formatted and compared.

Electric's offsets order lexicographically on the integer pair `(tx, op)`:
- `-1` is the request-only "before everything";
- `0_k` are the virtual offsets of initial-snapshot chunks, `0_inf` the end of the snapshot;
- real offsets are `<commit LSN>_<op index>` with ops numbered 0, 2, 4 ... in a transaction.
`inf` is represented by a number larger than any real op index so plain tuple comparison works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INF_OP = 1 << 62

#: ASCII digits only: Python's `\d` (and `int`) read every script's digits, and `0_\u0663`
#: (an Arabic-Indic three) was served as `0_3`, one offset with many spellings (each its own
#: cache key; attack). Electric's `Integer.parse` reads ASCII digits only.
_OFFSET_RE = re.compile(r"\A([0-9]+)_([0-9]+|inf)\Z")


#: Significant digits of an offset's half that can still be below 2**64.
_MAX_DIGITS = 20


class InvalidOffset(ValueError):
    """The text is not an offset the protocol accepts."""


@dataclass(frozen=True, slots=True, order=True)
class LogOffset:
    tx: int
    op: int

    def __str__(self) -> str:
        if self.tx < 0:
            return "-1"
        return f"{self.tx}_{'inf' if self.op >= INF_OP else self.op}"

    @property
    def is_before_all(self) -> bool:
        return self.tx < 0

    @property
    def is_virtual(self) -> bool:
        """A snapshot-chunk offset (`0_k`) or the snapshot end (`0_inf`)."""
        return self.tx == 0

    @property
    def is_snapshot_end(self) -> bool:
        return self.tx == 0 and self.op >= INF_OP


BEFORE_ALL = LogOffset(-1, 0)
SNAPSHOT_END = LogOffset(0, INF_OP)


def parse_offset(text: str) -> LogOffset:
    """Parse `-1`, `-1_0`, `<tx>_<op>` or `<tx>_inf`; `now` is handled by callers."""
    if text in ("-1", "-1_0"):
        return BEFORE_ALL
    m = _OFFSET_RE.match(text)
    if not m or any(len(half.lstrip("0")) > _MAX_DIGITS for half in m.groups()):
        # (past 2**64 anyway: `int()` refuses over 4,300 digits, a ValueError, a 500)
        raise InvalidOffset(text)
    tx = int(m.group(1))
    op = INF_OP if m.group(2) == "inf" else int(m.group(2))
    if tx >= 1 << 64 or op > INF_OP:
        raise InvalidOffset(text)
    return LogOffset(tx, op)


def snapshot_chunk_offset(index: int) -> LogOffset:
    return LogOffset(0, index)
