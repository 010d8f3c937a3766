"""What a replicated change becomes in a shape's log: the protocol's change semantics, down to
the JSON lines the client reads (no Postgres: `convert_change` and `change_messages` are pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import orjson

from sync_engine.log.entries import ChangeEntry, change_messages
from sync_engine.shapes.changes import Change, ChangeKind, Row, convert_change
from sync_engine.shapes.shape import Shape

INSERT, UPDATE, DELETE = ChangeKind.INSERT, ChangeKind.UPDATE, ChangeKind.DELETE


@dataclass
class Where:
    """`column = value`."""

    column: str
    value: str

    def matches(self, row: Row) -> bool:
        return row.get(self.column) == self.value


@dataclass
class Definition:
    replica: str = "default"


@dataclass
class FakeShape:
    """What `convert_change` reads of a shape: table `public.items (id pk, status, body)`."""

    where: Where | None = None
    replica: str = "default"
    column_names: tuple[str, ...] = ("id", "status", "body")
    pk: tuple[str, ...] = ("id",)
    key_prefix: str = '"public"."items"'
    relation: tuple[str, str] = ("public", "items")
    definition: Definition = field(init=False)

    def __post_init__(self) -> None:
        self.definition = Definition(self.replica)


def log_lines(shape: FakeShape, *changes: Change) -> list[dict]:  # the JSON lines, parsed
    entries: list[ChangeEntry] = []
    for kind, old, new, op in changes:
        convert_change(cast(Shape, shape), kind, old, new, op, entries)  # (duck-typed)
    encoded = change_messages(shape.relation, 7, 1000, entries)
    assert [op for op, _ in encoded] == [e[0] for e in entries]
    return [orjson.loads(line) for _, line in encoded]


def row(id: str, status: str | None = "open", body: str | None = "b") -> dict[str, str | None]:
    return {"id": id, "status": status, "body": body}


def test_an_insert_is_the_whole_row_and_the_last_entry_is_marked() -> None:
    lines = log_lines(FakeShape(), (INSERT, None, row("1"), 0), (INSERT, None, row("2"), 2))
    assert lines == [
        {
            "key": '"public"."items"/"1"',
            "value": {"id": "1", "status": "open", "body": "b"},
            "headers": {
                "operation": "insert",
                "relation": ["public", "items"],
                "txids": [7],
                "lsn": "1000",
                "op_position": 0,
            },
        },
        {
            "key": '"public"."items"/"2"',
            "value": {"id": "2", "status": "open", "body": "b"},
            "headers": {
                "operation": "insert",
                "relation": ["public", "items"],
                "txids": [7],
                "lsn": "1000",
                "op_position": 2,
                "last": True,
            },
        },
    ]


def test_keys_escape_slashes_and_write_null_as_underscore() -> None:
    shape = FakeShape(pk=("id", "status"))
    (line,) = log_lines(shape, (INSERT, None, row("a/b", status=None), 0))
    assert line["key"] == '"public"."items"/"a//b"/_'


def test_rows_outside_the_where_are_left_out() -> None:
    shape = FakeShape(where=Where("status", "open"))
    assert log_lines(shape, (INSERT, None, row("1", status="done"), 0)) == []
    assert log_lines(shape, (DELETE, row("1", status="done"), None, 0)) == []
    assert log_lines(shape, (UPDATE, row("1", "done"), row("1", "done", "c"), 0)) == []


def test_a_delete_carries_the_key_or_with_replica_full_the_whole_row() -> None:
    (line,) = log_lines(FakeShape(), (DELETE, row("1"), None, 0))
    assert line["value"] == {"id": "1"} and line["headers"]["operation"] == "delete"
    (line,) = log_lines(FakeShape(replica="full"), (DELETE, row("1"), None, 0))
    assert line["value"] == {"id": "1", "status": "open", "body": "b"}


def test_an_update_carries_the_key_and_the_changed_columns() -> None:
    (line,) = log_lines(FakeShape(), (UPDATE, row("1"), row("1", body="new"), 4))
    assert line["value"] == {"id": "1", "body": "new"}
    assert line["headers"]["operation"] == "update"
    assert line["headers"]["op_position"] == 4
    assert "old_value" not in line


def test_a_replica_full_update_carries_the_row_and_the_old_values_of_what_changed() -> None:
    (line,) = log_lines(FakeShape(replica="full"), (UPDATE, row("1"), row("1", body="new"), 0))
    assert line["value"] == {"id": "1", "status": "open", "body": "new"}
    assert line["old_value"] == {"body": "b"}


def test_an_update_that_changes_no_selected_column_is_dropped() -> None:
    shape = FakeShape(column_names=("id", "status"))
    assert log_lines(shape, (UPDATE, row("1"), row("1", body="other"), 0)) == []


def test_an_update_across_the_where_becomes_an_insert_or_a_delete() -> None:
    shape = FakeShape(where=Where("status", "open"))
    (moved_in,) = log_lines(shape, (UPDATE, row("1", "done"), row("1", "open"), 0))
    assert moved_in["headers"]["operation"] == "insert"
    assert moved_in["value"] == {"id": "1", "status": "open", "body": "b"}
    (moved_out,) = log_lines(shape, (UPDATE, row("1", "open"), row("1", "done"), 0))
    assert moved_out["headers"]["operation"] == "delete"
    assert moved_out["value"] == {"id": "1"}


def test_a_primary_key_change_is_a_delete_then_an_insert_at_the_next_op() -> None:
    delete, insert = log_lines(FakeShape(), (UPDATE, row("1"), row("7"), 2))
    assert delete["key"] == '"public"."items"/"1"' and delete["value"] == {"id": "1"}
    assert delete["headers"] == {
        "operation": "delete",
        "relation": ["public", "items"],
        "txids": [7],
        "lsn": "1000",
        "op_position": 2,
        "key_change_to": '"public"."items"/"7"',
    }
    assert insert["key"] == '"public"."items"/"7"'
    assert insert["value"] == {"id": "7", "status": "open", "body": "b"}
    assert insert["headers"] == {
        "operation": "insert",
        "relation": ["public", "items"],
        "txids": [7],
        "lsn": "1000",
        "op_position": 3,
        "last": True,
        "key_change_from": '"public"."items"/"1"',
    }
