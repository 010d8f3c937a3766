"""Which shapes a replicated row may belong to: an index over equality / IN conditions.

A shape whose where clause has a top-level `col = const` or `col IN (...)` conjunct is filed
under (table, col, key); every other shape of the table is "unindexed" and always checked.
So a change that matches no shape costs a few dict look-ups, whatever the number of shapes.
Candidates still go through the full predicate; the index only narrows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .where import index_key

if TYPE_CHECKING:
    from ..pg.catalog import ColumnInfo
    from .shape import Shape


@dataclass(slots=True)
class _TableShapes:
    unindexed: set[Shape] = field(default_factory=set)
    # column -> (column info, key -> shapes)
    indexes: dict[str, tuple[ColumnInfo, dict[object, set[Shape]]]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.unindexed and not self.indexes


class ShapeRouter:
    def __init__(self) -> None:
        self._tables: dict[int, _TableShapes] = {}

    def tables(self) -> set[int]:
        return set(self._tables)

    def has_table(self, oid: int) -> bool:
        return oid in self._tables

    def shapes_of(self, oid: int) -> set[Shape]:
        t = self._tables.get(oid)
        if t is None:
            return set()
        out = set(t.unindexed)
        for _, by_key in t.indexes.values():
            for shapes in by_key.values():
                out |= shapes
        return out

    def add(self, shape: Shape) -> None:
        t = self._tables.setdefault(shape.definition.table_oid, _TableShapes())
        idx = shape.where.index if shape.where is not None else None
        if idx is None:
            t.unindexed.add(shape)
            return
        col, keys = idx
        info = shape.table.column(col)
        assert info is not None
        _, by_key = t.indexes.setdefault(col, (info, {}))
        for k in keys:
            by_key.setdefault(k, set()).add(shape)

    def remove(self, shape: Shape) -> None:
        oid = shape.definition.table_oid
        t = self._tables.get(oid)
        if t is None:
            return
        t.unindexed.discard(shape)
        for col in list(t.indexes):
            _, by_key = t.indexes[col]
            for k in list(by_key):
                by_key[k].discard(shape)
                if not by_key[k]:
                    del by_key[k]
            if not by_key:
                del t.indexes[col]
        if t.empty():
            del self._tables[oid]

    def candidates(
        self,
        oid: int,
        positions: dict[str, int],
        old: Sequence[object] | None,
        new: Sequence[object] | None,
    ) -> set[Shape]:
        """Shapes whose where clause may accept the old or the new row (tuples as decoded)."""
        t = self._tables.get(oid)
        if t is None:
            return set()
        out = set(t.unindexed) if t.unindexed else set()
        for col, (info, by_key) in t.indexes.items():
            pos = positions.get(col)
            if pos is None:
                continue
            for row in (old, new):
                if row is None:
                    continue
                v = row[pos]
                if not isinstance(v, str):
                    continue
                try:
                    key = index_key(info, v)
                except ValueError:
                    continue
                hit = by_key.get(key)
                if hit:
                    out |= hit
        return out
