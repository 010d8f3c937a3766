"""A Postgres snapshot (`pg_current_snapshot()`): which transactions it sees.

A new shape's rows come from one snapshot; the replication stream then skips every
transaction already visible in it, and a snapshot must see every transaction the stream
already delivered. Both questions are answered here, on the one parsed form of the
snapshot's text `xmin:xmax:xip,...` (64-bit xid8 values; WAL carries 32-bit xids).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_XID32 = 0xFFFFFFFF
_HALF = 1 << 31


@dataclass(frozen=True, slots=True)
class XidSnapshot:
    """`pg_current_snapshot()`: everything below `xmin` and below `xmax` but not in `xip`
    is visible."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> XidSnapshot:
        """From Postgres's text form, `xmin:xmax:xip1,xip2,...` (raises ValueError)."""
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in sorted(self.xip))}"

    def visible(self, xid32: int) -> bool:
        """Whether a WAL transaction (32-bit xid) is already in the snapshot's data.

        The 32-bit xid is widened into the epoch of `xmax` (wraparound-aware, as the
        client and Electric do), then Postgres's own visibility rule applies.
        """
        full = self.widen(xid32)
        return full < self.xmin or (full < self.xmax and full not in self.xip)

    def widen(self, xid32: int) -> int:
        """The xid8 of a 32-bit WAL xid: the one nearest to `xmax` (within 2^31)."""
        diff = (xid32 - self.xmax) & _XID32
        if diff >= _HALF:
            diff -= 1 << 32
        return self.xmax + diff

    def invisible(self, xids: Iterable[int]) -> list[int]:
        """The 32-bit WAL xids among `xids` the snapshot does not see (in progress, or at
        or past its xmax): `visible` for each, in a form cheap enough for 256 xids."""
        xmax32 = self.xmax & _XID32
        running = {x & _XID32 for x in self.xip}
        return [x for x in xids if x in running or (x - xmax32) & _XID32 < _HALF]

    def to_json(self) -> dict[str, object]:
        return {"xmin": self.xmin, "xmax": self.xmax, "xip": sorted(self.xip)}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> XidSnapshot:
        """From `to_json`'s form (raises ValueError or TypeError when it is not that)."""
        xip = data["xip"]
        if not isinstance(xip, list):
            raise TypeError("xip is not a list")
        return cls(_int(data["xmin"]), _int(data["xmax"]), frozenset(_int(x) for x in xip))


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"not an xid: {value!r}")
    return value
