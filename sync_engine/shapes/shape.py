"""A shape: its definition (what identifies it) and its runtime state (handle, log, waiters).

Two requests with the same definition share one shape and one handle. The definition holds
only what changes the log's content: table (by oid and name), the canonical where clause
with params substituted, the selected columns, `replica` and `log` mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..log.entries import relation_prefix
from ..pg.xid_snapshot import XidSnapshot

#: The shape's snapshot (the name other modules still import).
SnapshotInfo = XidSnapshot

if TYPE_CHECKING:
    from ..errors import EngineError
    from ..log.files import ShapeLog
    from ..pg.catalog import ColumnInfo, TableInfo
    from .where import Where


@dataclass(frozen=True, slots=True)
class ShapeDefinition:
    table_oid: int
    schema: str
    table: str
    where: str | None
    columns: tuple[str, ...]
    replica: str = "default"
    log_mode: str = "full"

    def to_json(self) -> dict[str, object]:
        return {
            "table_oid": self.table_oid,
            "schema": self.schema,
            "table": self.table,
            "where": self.where,
            "columns": list(self.columns),
            "replica": self.replica,
            "log_mode": self.log_mode,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ShapeDefinition:
        return cls(
            table_oid=int(data["table_oid"]),  # type: ignore[call-overload]
            schema=str(data["schema"]),
            table=str(data["table"]),
            where=None if data["where"] is None else str(data["where"]),
            columns=tuple(data["columns"]),  # type: ignore[arg-type]
            replica=str(data["replica"]),
            log_mode=str(data["log_mode"]),
        )


class HandleFactory:
    """`<hash of definition>-<unix µs>`: unique forever, strictly increasing per process."""

    def __init__(self) -> None:
        self._last_us = 0

    def new(self, definition: ShapeDefinition) -> str:
        digest = hashlib.blake2b(orjson.dumps(definition.to_json()), digest_size=4).digest()
        now = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = now
        return f"{int.from_bytes(digest, 'big')}-{now}"


def schema_header(columns: tuple[ColumnInfo, ...]) -> str:
    """The `electric-schema` header: column -> {type, dims?, pk_index?, not_null?, modifiers}."""
    out: dict[str, dict[str, object]] = {}
    for c in columns:
        d: dict[str, object] = {"type": c.base_type}
        if c.is_array:
            d["dims"] = max(c.dims, 1)
        if c.pk_index is not None:
            d["pk_index"] = c.pk_index
        if c.not_null:
            d["not_null"] = True
        d.update(_type_modifiers(c.base_type, c.type_mod))
        out[c.name] = d
    return orjson.dumps(out).decode()


def _type_modifiers(type_name: str, mod: int) -> dict[str, object]:
    if mod < 0:
        return {}
    if type_name in ("varchar", "text"):
        return {"max_length": mod - 4}
    if type_name in ("bpchar",):
        return {"length": mod - 4}
    if type_name in ("bit", "varbit"):
        return {"length": mod}
    if type_name in ("time", "timetz", "timestamp", "timestamptz"):
        return {"precision": mod}
    if type_name == "numeric":
        mod -= 4
        return {"precision": (mod >> 16) & 0xFFFF, "scale": mod & 0xFFFF}
    if type_name == "interval":
        precision = mod & 0xFFFF
        return {} if precision == 0xFFFF else {"precision": precision}
    return {"type_mod": mod}


@dataclass(eq=False)
class Shape:
    """A live shape: definition, handle, compiled where, log and the futures waiters wait on."""

    handle: str
    definition: ShapeDefinition
    table: TableInfo
    where: Where | None
    columns: tuple[ColumnInfo, ...]
    log: ShapeLog
    snapshot: SnapshotInfo | None = None
    rotated: bool = False
    snapshot_error: EngineError | None = None  # the answer once the snapshot failed
    # transactions seen while the snapshot's xid horizon was still unknown
    pending: list[Any] | None = field(default_factory=list)
    _changed: asyncio.Future[None] | None = None
    schema_json: str = ""
    key_prefix: str = ""
    column_names: tuple[str, ...] = ()
    pk: tuple[str, ...] = ()
    past_xmax: bool = False

    def __post_init__(self) -> None:
        self.schema_json = schema_header(self.columns)
        self.key_prefix = relation_prefix(self.table.schema, self.table.name)
        self.column_names = tuple(c.name for c in self.columns)
        # A table without a primary key is keyed by all (selected) columns.
        self.pk = self.table.pk or self.column_names

    @property
    def relation(self) -> tuple[str, str]:
        return (self.table.schema, self.table.name)

    # -- waiting for log growth -----------------------------------------------------------

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next append, snapshot progress or rotation."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def notify(self) -> None:
        fut = self._changed
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._changed = None
