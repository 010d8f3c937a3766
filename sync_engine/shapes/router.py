"""Which shapes a replicated row may belong to: an index over equality / IN conditions.

A shape whose where clause has a top-level `col = const` or `col IN (...)` conjunct is filed
under (table, col, key); every other shape of the table is "unindexed" and always checked.
So a change that matches no shape costs a few dict look-ups, whatever the number of shapes.
Candidates still go through the full predicate; the index only narrows.

The replicator's hot path does not call `candidates` for every row: it asks for a `RowPlan`
per table (the indexed columns' positions, key parsers and key dicts), decodes only those
columns straight from the pgoutput bytes and probes the dicts itself. `version` changes on
every add/remove so it knows when its plans are stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..pg import values as pgv

if TYPE_CHECKING:
    from ..pg.catalog import ColumnInfo, TableInfo
    from .shape import Shape

KeyParser = Callable[[str], object]
"""Column text -> index key; `None` in its place means the text is the key itself."""


def key_parser(info: ColumnInfo) -> KeyParser | None:
    """`index_key(info, text)` for non-NULL text, resolved once per column (None: identity).

    `index_key` looks the parser up on every call; per replicated row that look-up costs
    as much as the probe it feeds.
    """
    parser = pgv.output_parser(info.pg_type)
    return None if parser is pgv.identity else parser


@dataclass(slots=True)
class _ColumnIndex:
    info: ColumnInfo
    parse: KeyParser | None
    by_key: dict[object, set[Shape]] = field(default_factory=dict)


@dataclass(slots=True)
class _TableShapes:
    unindexed: set[Shape] = field(default_factory=set)
    indexes: dict[str, _ColumnIndex] = field(default_factory=dict)
    # every shape of the table, by the table description it was made with: what a
    # Relation message is checked against (once per description, not once per shape)
    by_info: dict[TableInfo, set[Shape]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.by_info


@dataclass(frozen=True, slots=True)
class RowPlan:
    """How to route rows of one table whose columns sit at given positions.

    `unindexed` is the table's live set of shapes every row must be checked against (when
    it is non-empty the row needs full decoding anyway); `probes` are
    `(position, key parser, key -> shapes)` per indexed column, sorted by position. Valid
    until `ShapeRouter.version` changes.
    """

    unindexed: set[Shape]
    probes: tuple[tuple[int, KeyParser | None, dict[object, set[Shape]]], ...]


class ShapeRouter:
    def __init__(self) -> None:
        self._tables: dict[int, _TableShapes] = {}
        self.version = 0
        #: Partitions and inheritance children of shaped tables -> their ancestors' oids:
        #: Postgres publishes a descendant's changes under its own relation, and the shapes
        #: of its ancestors (whose snapshot reads its rows) get them too (`routes`).
        self.ancestors: dict[int, frozenset[int]] = {}
        #: Shaped tables that are (or may become) parents: partitioned tables, and tables
        #: with inheritance children. While there are any, a relation the stream names for
        #: the first time is looked up (`TransactionAssembler`): a partition made later.
        self.parents: set[int] = set()

    def tables(self) -> set[int]:
        return set(self._tables)

    def has_table(self, oid: int) -> bool:
        return oid in self._tables

    def add_ancestors(self, oid: int, ancestors: frozenset[int]) -> None:
        """Route the changes of table `oid` to the shapes of `ancestors` too."""
        known = self.ancestors.get(oid, frozenset())
        if not ancestors <= known:
            self.ancestors[oid] = known | ancestors
            self.version += 1

    def set_families(self, families: dict[int, frozenset[int]], parents: set[int]) -> None:
        """Route by `families` (a table with shapes -> its descendants, as the catalog has
        them now, `Tables.check_families`) from now on: a descendant's changes go to the
        shapes of each table it is in the family of, and only those (a partition detached,
        a child no longer inheriting, no longer reach the old parent's shapes)."""
        ancestors: dict[int, set[int]] = {}
        for table, descendants in families.items():
            for d in descendants:
                ancestors.setdefault(d, set()).add(table)
        new = {d: frozenset(a) for d, a in ancestors.items()}
        if new != self.ancestors:
            self.ancestors = new
            self.version += 1
        self.parents = set(parents)

    def routes(self, oid: int) -> tuple[int, ...]:
        """Table `oid` and its ancestors: whose shapes a change of `oid` may belong to."""
        ancestors = self.ancestors.get(oid)
        return (oid, *ancestors) if ancestors else (oid,)

    def routed(self, oid: int) -> bool:
        """Whether some shape may want a change of table `oid` (its own, its ancestors')."""
        if oid in self._tables:
            return True
        ancestors = self.ancestors.get(oid)
        return ancestors is not None and any(a in self._tables for a in ancestors)

    def shapes_by_table_info(self, oid: int) -> list[tuple[TableInfo, set[Shape]]]:
        """The shapes of table `oid` grouped by the table description they were made with."""
        t = self._tables.get(oid)
        if t is None:
            return []
        return [(info, set(shapes)) for info, shapes in t.by_info.items()]

    def add(self, shape: Shape) -> None:
        self.version += 1
        t = self._tables.setdefault(shape.definition.table_oid, _TableShapes())
        t.by_info.setdefault(shape.table, set()).add(shape)
        idx = shape.where.index if shape.where is not None else None
        if idx is None:
            t.unindexed.add(shape)
            return
        col, keys = idx
        index = t.indexes.get(col)
        if index is None:
            info = shape.table.column(col)
            assert info is not None
            index = t.indexes[col] = _ColumnIndex(info, key_parser(info))
        by_key = index.by_key
        for k in keys:
            by_key.setdefault(k, set()).add(shape)

    def remove(self, shape: Shape) -> None:
        """Forget `shape`: touches only its own keys (rotating every shape of a table with
        100k shapes must not walk all keys once per shape)."""
        oid = shape.definition.table_oid
        t = self._tables.get(oid)
        if t is None:
            return
        self.version += 1
        members = t.by_info.get(shape.table)
        if members is not None:
            members.discard(shape)
            if not members:
                del t.by_info[shape.table]
        t.unindexed.discard(shape)
        idx = shape.where.index if shape.where is not None else None
        if idx is not None:
            col, keys = idx
            index = t.indexes.get(col)
            if index is not None:
                by_key = index.by_key
                for k in keys:
                    shapes = by_key.get(k)
                    if shapes is not None:
                        shapes.discard(shape)
                        if not shapes:
                            del by_key[k]
                if not by_key:
                    del t.indexes[col]
        if t.empty():
            del self._tables[oid]

    def plan(self, oid: int, positions: dict[str, int]) -> RowPlan | None:
        """The `RowPlan` of table `oid` for the given column positions; None if no shape."""
        t = self._tables.get(oid)
        if t is None:
            return None
        probes = sorted(
            (
                (positions[col], index.parse, index.by_key)
                for col, index in t.indexes.items()
                if col in positions
            ),
            key=lambda probe: probe[0],
        )
        return RowPlan(t.unindexed, tuple(probes))

    def shapes_of(self, oid: int) -> set[Shape]:
        """Every shape of table `oid` and of its ancestors (`routes`): what a change whose
        old row was not sent may belong to (the index cannot be probed with it)."""
        out: set[Shape] = set()
        for o in self.routes(oid):
            t = self._tables.get(o)
            if t is not None:
                for shapes in t.by_info.values():
                    out |= shapes
        return out

    def plan_for(self, oid: int, positions: dict[str, int]) -> RowPlan | None:
        """`plan` of table `oid` merged with its ancestors' (`routes`), all with its column
        positions (a descendant has its ancestors' columns, maybe in another order)."""
        plans = [p for o in self.routes(oid) if (p := self.plan(o, positions)) is not None]
        if len(plans) <= 1:
            return plans[0] if plans else None
        unindexed: set[Shape] = set().union(*(p.unindexed for p in plans))
        probes = sorted((pr for p in plans for pr in p.probes), key=lambda probe: probe[0])
        return RowPlan(unindexed, tuple(probes))

    def candidates_for(
        self,
        oid: int,
        positions: dict[str, int],
        old: Sequence[object] | None,
        new: Sequence[object] | None,
    ) -> set[Shape]:
        """`candidates` of table `oid` and of its ancestors (`routes`)."""
        out = self.candidates(oid, positions, old, new)
        for ancestor in self.ancestors.get(oid, ()):
            out |= self.candidates(ancestor, positions, old, new)
        return out

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
        for col, index in t.indexes.items():
            pos = positions.get(col)
            if pos is None:
                continue
            parse = index.parse
            by_key = index.by_key
            for row in (old, new):
                if row is None:
                    continue
                v = row[pos]
                if not isinstance(v, str):
                    continue
                if parse is None:
                    key: object = v
                else:
                    try:
                        key = parse(v)
                    except ValueError:
                        # A value Postgres holds and the key cannot (a timestamptz past
                        # year 9999 in UTC, `UnrepresentableValue`): any shape of this
                        # column may accept it (`'9999-12-31 23:59:59-12'` is the same
                        # instant), so each one's where says, or asks Postgres. Skipped, the
                        # row was dropped from shapes that match it (wherefuzz 10:55).
                        for shapes in by_key.values():
                            out |= shapes
                        continue
                hit = by_key.get(key)
                if hit:
                    out |= hit
        return out
