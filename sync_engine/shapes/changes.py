"""One replicated row change -> the log entries it becomes in one shape (pure).

This is where the protocol's change semantics live:
- `replica=default`: updates carry the primary key plus the changed columns, deletes the key;
  `replica=full`: updates carry the whole new row and `old_value` of the changed columns,
  deletes the whole old row;
- an update whose old row is outside the `where` and new row inside becomes an insert, the
  reverse a delete; an update that changes no selected column is dropped;
- a primary-key change becomes a delete (`key_change_to`) at op `n` and an insert
  (`key_change_from`) at op `n + 1`, which is why ops are numbered 0, 2, 4 ...

`convert_change` runs for every change a shape gets (the replicator's "matches one" cost),
so it appends plain `ChangeEntry` tuples to the caller's list, which `log.entries` then
serialises a transaction at a time: no object per entry, no list per change.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from ..log.entries import ChangeEntry, build_key

if TYPE_CHECKING:
    from .shape import Shape

__all__ = ["Change", "ChangeEntry", "ChangeKind", "Row", "convert_change", "moved_onto_held_key"]


class ChangeKind(enum.StrEnum):
    """What a row change did (`Change`'s first field)."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


# Read once: on Python 3.11 reading a member off its Enum class costs ~1 µs, and these are
# compared (by identity) for every change a shape gets.
_INSERT: Final = ChangeKind.INSERT
_DELETE: Final = ChangeKind.DELETE

Row = Mapping[str, str | None]
#: One row change of a transaction, as the replicator collects it: (kind, old row, new row,
#: its op position). An insert has no old row, a delete no new row.
Change = tuple[ChangeKind, Row | None, Row | None, int]


def convert_change(
    shape: Shape,
    kind: ChangeKind,
    old: Row | None,
    new: Row | None,
    op: int,
    out: list[ChangeEntry],
    matches: Callable[[Row], bool] | None = None,
) -> None:
    """Append the entries (none, one, or two for a key change) the change produces in
    `shape` to `out`; `log.entries.change_messages` serialises them. `matches`: whether a
    row is in the shape, if not the where clause's own `matches` (which raises
    `UnrepresentableValue` on a value the engine cannot read exactly)."""
    where = shape.where
    if where is not None and matches is None:
        matches = where.matches
    if kind is _INSERT:
        assert new is not None
        if matches is None or matches(new):
            out.append(_insert(shape, op, new, None))
        return
    if kind is _DELETE:
        assert old is not None
        if matches is None or matches(old):
            out.append(_delete(shape, op, old, None))
        return
    assert old is not None and new is not None
    old_in = matches is None or matches(old)
    new_in = matches is None or matches(new)
    if not old_in:
        if new_in:
            out.append(_insert(shape, op, new, None))
        return
    if not new_in:
        out.append(_delete(shape, op, old, None))
        return
    prefix = shape.key_prefix
    pk = shape.pk
    old_key = build_key(prefix, pk, old)
    new_key = build_key(prefix, pk, new)
    if old_key != new_key:
        out.append(_delete(shape, op, old, old_key, key_change_to=new_key))
        out.append(_insert(shape, op + 1, new, new_key, key_change_from=old_key))
        return
    cols = shape.column_names
    changed = [c for c in cols if old.get(c) != new.get(c)]
    if not changed:
        return
    if shape.definition.replica == "full":
        value = {c: new.get(c) for c in cols}
        out.append((op, new_key, "update", value, {c: old.get(c) for c in changed}, None, None))
    else:
        value = {c: new.get(c) for c in pk}
        for c in changed:
            value[c] = new.get(c)
        out.append((op, new_key, "update", value, None, None, None))


def moved_onto_held_key(entries: list[ChangeEntry], start: int, moved_in: set[str]) -> bool:
    """Whether `entries[start:]`, read on from a transaction's earlier entries for a shape
    (`moved_in`: the keys an insert landed on so far, updated here), delete a key an insert
    landed on earlier in it. Under a DEFERRABLE primary key two rows may hold one key inside
    a transaction (a swap `SET id = 3 - id`, a shift, a row moved onto a key whose row then
    leaves), and the per-change messages put the second row on a key the client still held,
    whose later delete then removed it: every client a row short (wherefuzz 08:13, review
    08:41). Such a transaction cannot be told as changes; its shape is retired instead. Only
    asked for such tables (`TableInfo.pk_deferrable`): under an immediate key the order is
    always one a client applies right. (An insert then a delete of one row in a transaction
    counts too: a needless refetch, never a wrong row.)"""
    for i in range(start, len(entries)):
        entry = entries[i]
        operation = entry[2]
        if operation == "insert":
            moved_in.add(entry[1])
        elif operation == "delete" and entry[1] in moved_in:
            return True
    return False


def _insert(
    shape: Shape, op: int, new: Row, key: str | None, key_change_from: str | None = None
) -> ChangeEntry:
    if key is None:
        key = build_key(shape.key_prefix, shape.pk, new)
    value = {c: new.get(c) for c in shape.column_names}
    return (op, key, "insert", value, None, None, key_change_from)


def _delete(
    shape: Shape, op: int, old: Row, key: str | None, key_change_to: str | None = None
) -> ChangeEntry:
    if key is None:
        key = build_key(shape.key_prefix, shape.pk, old)
    cols = shape.column_names if shape.definition.replica == "full" else shape.pk
    return (op, key, "delete", {c: old.get(c) for c in cols}, None, key_change_to, None)
