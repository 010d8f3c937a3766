"""One replicated row change -> the log entries it becomes in one shape (pure).

This is where the protocol's change semantics live:
- `replica=default`: updates carry the primary key plus the changed columns, deletes the key;
  `replica=full`: updates carry the whole new row and `old_value` of the changed columns,
  deletes the whole old row;
- an update whose old row is outside the `where` and new row inside becomes an insert, the
  reverse a delete; an update that changes no selected column is dropped;
- a primary-key change becomes a delete (`key_change_to`) at op `n` and an insert
  (`key_change_from`) at op `n + 1`, which is why ops are numbered 0, 2, 4 ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..log.entries import build_key, change_message

if TYPE_CHECKING:
    from .shape import Shape

Row = Mapping[str, str | None]
#: One row change of a transaction, as the replicator collects it: (kind, old row, new row,
#: its op position); `kind` is "insert", "update" or "delete".
Change = tuple[str, Row | None, Row | None, int]


@dataclass(slots=True)
class Message:
    """One log entry a change becomes in a shape, before it is serialised."""

    key: str
    operation: str
    value: dict[str, str | None]
    old_value: dict[str, str | None] | None = None
    key_change_to: str | None = None
    key_change_from: str | None = None


def _project(row: Row, columns: tuple[str, ...]) -> dict[str, str | None]:
    return {c: row.get(c) for c in columns}


def convert_change(
    shape: Shape,
    kind: str,
    old: Row | None,
    new: Row | None,
    *,
    op: int,
) -> list[tuple[int, Message]]:
    """The `(op, message)` a change produces in `shape`; serialised by `encode_entries`."""
    where = shape.where
    cols = shape.column_names
    if kind == "insert":
        assert new is not None
        if where is not None and not where.matches(new):
            return []
        return [(op, _msg(shape, "insert", new, _project(new, cols)))]
    if kind == "delete":
        assert old is not None
        if where is not None and not where.matches(old):
            return []
        return [(op, _msg(shape, "delete", old, _delete_value(shape, old)))]
    assert old is not None and new is not None
    old_in = where is None or where.matches(old)
    new_in = where is None or where.matches(new)
    if not old_in and not new_in:
        return []
    if not old_in:
        return [(op, _msg(shape, "insert", new, _project(new, cols)))]
    if not new_in:
        return [(op, _msg(shape, "delete", old, _delete_value(shape, old)))]
    old_key = build_key(shape.key_prefix, shape.pk, old)
    new_key = build_key(shape.key_prefix, shape.pk, new)
    if old_key != new_key:
        delete = _msg(shape, "delete", old, _delete_value(shape, old), key=old_key)
        delete.key_change_to = new_key
        insert = _msg(shape, "insert", new, _project(new, cols), key=new_key)
        insert.key_change_from = old_key
        return [(op, delete), (op + 1, insert)]
    changed = [c for c in cols if old.get(c) != new.get(c)]
    if not changed:
        return []
    if shape.definition.replica == "full":
        msg = _msg(shape, "update", new, _project(new, cols), key=new_key)
        msg.old_value = {c: old.get(c) for c in changed}
    else:
        value = {c: new.get(c) for c in shape.pk}
        for c in changed:
            value[c] = new.get(c)
        msg = _msg(shape, "update", new, value, key=new_key)
    return [(op, msg)]


def _delete_value(shape: Shape, old: Row) -> dict[str, str | None]:
    if shape.definition.replica == "full":
        return _project(old, shape.column_names)
    return {c: old.get(c) for c in shape.pk}


def _msg(
    shape: Shape, operation: str, row: Row, value: dict[str, str | None], key: str | None = None
) -> Message:
    return Message(
        key=key if key is not None else build_key(shape.key_prefix, shape.pk, row),
        operation=operation,
        value=value,
    )


def encode_entries(
    shape: Shape, items: list[tuple[int, Message]], *, txid: int, lsn: int
) -> list[tuple[int, bytes]]:
    """Serialise a transaction's converted changes, marking the shape's last one `last`."""
    last_i = len(items) - 1
    relation = shape.relation
    return [
        (
            op,
            change_message(
                m.key,
                m.operation,
                relation,
                m.value,
                txid=txid,
                lsn=lsn,
                op_position=op,
                last=i == last_i,
                old_value=m.old_value,
                key_change_to=m.key_change_to,
                key_change_from=m.key_change_from,
            ),
        )
        for i, (op, m) in enumerate(items)
    ]
