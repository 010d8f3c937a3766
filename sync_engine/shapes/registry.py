"""Handle <-> shape, for one source: resolve a request to its shape, create, load, rotate.

Creating a shape is single-flight: N concurrent requests for the same new definition
share one creation (one publication change, one snapshot query). A shape is registered
with the router *before* its snapshot starts, so the replication stream buffers whatever
commits meanwhile; the snapshot's xid horizon then decides what to keep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cachetools import LRUCache

from ..errors import InvalidRequest
from ..log.store import ShapeStore
from ..pg.catalog import ColumnInfo, TableInfo
from ..pg.identifiers import InvalidIdentifier, parse_columns, parse_relation
from ..pg.xid_snapshot import XidSnapshot
from ..single_flight import single_flight
from .router import ShapeRouter
from .shape import HandleFactory, Shape, ShapeDefinition
from .where import Where, WhereError, parse_where

if TYPE_CHECKING:
    from ..http.params import ShapeRequest
    from ..log.files import ShapeLog

log = logging.getLogger(__name__)

TableLookup = Callable[[str, str], Awaitable[TableInfo | None]]


def shape_record(shape: Shape) -> dict[str, object]:
    """What loading `shape` after a restart needs (written in its completion marker)."""
    return {
        "handle": shape.handle,
        "definition": shape.definition.to_json(),
        "table": table_to_json(shape.table),
    }


def table_to_json(t: TableInfo) -> dict[str, object]:
    return {
        "oid": t.oid,
        "schema": t.schema,
        "name": t.name,
        "pk": list(t.pk),
        "kind": t.kind,
        "replica_identity": t.replica_identity,
        "columns": [
            {
                "name": c.name,
                "attnum": c.attnum,
                "type_oid": c.type_oid,
                "type_name": c.type_name,
                "elem_type": c.elem_type,
                "type_kind": c.type_kind,
                "type_mod": c.type_mod,
                "dims": c.dims,
                "not_null": c.not_null,
                "pk_index": c.pk_index,
                "generated": c.generated,
                "collation": c.collation,
            }
            for c in t.columns
        ],
    }


def table_from_json(d: dict[str, object]) -> TableInfo:
    cols = tuple(ColumnInfo(**c) for c in d["columns"])  # type: ignore[attr-defined]
    return TableInfo(
        oid=int(d["oid"]),  # type: ignore[call-overload]
        schema=str(d["schema"]),
        name=str(d["name"]),
        columns=cols,
        pk=tuple(d["pk"]),  # type: ignore[arg-type]
        kind=str(d["kind"]),
        replica_identity=str(d["replica_identity"]),
    )


class ShapeRegistry:
    def __init__(
        self, directory: Path, chunk_bytes: int, router: ShapeRouter, fsync: bool = True
    ) -> None:
        self.directory = directory
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync
        self.store = ShapeStore(directory, chunk_bytes, fsync)
        self.router = router
        self.handles = HandleFactory()
        self.by_handle: dict[str, Shape] = {}
        self.by_definition: dict[ShapeDefinition, Shape] = {}
        # Raw request definition -> shape, so repeat requests skip the catalog and pglast.
        # Bounded: request texts that differ only in spelling must not grow it forever.
        self._by_request: LRUCache[tuple[object, ...], Shape] = LRUCache(maxsize=20_000)
        # Its keys per shape, so retiring a shape does not scan all 20,000 (a dropped table
        # with thousands of shapes did that thousands of times on the event loop).
        self._request_keys: dict[Shape, set[tuple[object, ...]]] = {}
        self._creating: dict[ShapeDefinition, asyncio.Future[Shape]] = {}
        # Where clauses parsed while describing a request, reused when the shape is made
        # (parsing costs ~0.3 ms, a real share of creating a small shape).
        self._parsed_where: LRUCache[tuple[int, str], Where] = LRUCache(maxsize=1_000)

    def __len__(self) -> int:
        return len(self.by_handle)

    # -- resolving requests ---------------------------------------------------------------

    def cached(self, req: ShapeRequest) -> Shape | None:
        shape = self._by_request.get(req.definition_key())
        if shape is not None and not shape.rotated:
            return shape
        return None

    def remember(self, req: ShapeRequest, shape: Shape) -> None:
        key = req.definition_key()
        self._by_request[key] = shape
        self._request_keys.setdefault(shape, set()).add(key)

    async def describe(
        self, req: ShapeRequest, lookup: TableLookup
    ) -> tuple[ShapeDefinition, TableInfo, tuple[ColumnInfo, ...]]:
        """Validate the definition against the catalog; InvalidRequest names what is wrong."""
        try:
            schema, name = parse_relation(req.table)
        except InvalidIdentifier as e:
            raise InvalidRequest({"table": [str(e)]}) from None
        table = await lookup(schema, name)
        if table is None or table.kind not in ("r", "p"):
            raise InvalidRequest(
                {
                    "table": [
                        f'Table "{schema}"."{name}" does not exist. If the table name contains'
                        " capitals or special characters you must quote it."
                    ]
                }
            )
        by_name = table.column_map
        if req.columns is not None:
            try:
                names = parse_columns(req.columns)
            except InvalidIdentifier as e:
                raise InvalidRequest({"columns": [str(e)]}) from None
            missing = [n for n in names if n not in by_name]
            if missing:
                raise InvalidRequest(
                    {
                        "columns": [
                            "The following columns are not found on the table: "
                            + ", ".join(missing)
                        ]
                    }
                )
            lacking = [p for p in table.pk if p not in names]
            if lacking:
                raise InvalidRequest(
                    {
                        "columns": [
                            "The list of columns must include all primary key columns, missing: "
                            + ", ".join(lacking)
                        ]
                    }
                )
            chosen = tuple(c for c in table.columns if c.name in set(names))
        else:
            chosen = table.columns
        generated = [c.name for c in chosen if c.generated]
        if generated:
            raise InvalidRequest(
                {
                    "columns": [
                        "Generated columns cannot be replicated by PostgreSQL 15: "
                        + ", ".join(generated)
                        + " (leave them out with the columns parameter)"
                    ]
                }
            )
        where_source = None
        if req.where is not None:
            try:
                where = parse_where(req.where, req.params, by_name)
            except WhereError as e:
                raise InvalidRequest({"where": [str(e)]}) from None
            where_source = where.source
            self._parsed_where[(table.oid, where_source)] = where
        elif req.params:
            pass  # params without a where are ignored, as upstream does
        definition = ShapeDefinition(
            table_oid=table.oid,
            schema=table.schema,
            table=table.name,
            where=where_source,
            columns=tuple(sorted(c.name for c in chosen)),
            replica=req.replica,
            log_mode=req.log_mode,
        )
        return definition, table, chosen

    # -- creation -------------------------------------------------------------------------

    async def get_or_create(
        self,
        definition: ShapeDefinition,
        table: TableInfo,
        columns: tuple[ColumnInfo, ...],
        prepare: Callable[[TableInfo], Awaitable[None]],
        start_snapshot: Callable[[Shape], None],
    ) -> Shape:
        shape = self.by_definition.get(definition)
        if shape is not None and not shape.rotated:
            return shape

        async def create() -> Shape:
            await prepare(table)
            created = self._new_shape(definition, table, columns)
            start_snapshot(created)
            return created

        return await single_flight(self._creating, definition, create)

    def _new_shape(
        self, definition: ShapeDefinition, table: TableInfo, columns: tuple[ColumnInfo, ...]
    ) -> Shape:
        handle = self.handles.new(definition)
        log_ = self.store.new_log(handle)
        where = None
        if definition.where is not None:
            where = self._parsed_where.get((table.oid, definition.where)) or parse_where(
                definition.where, {}, table.column_map
            )
        shape = Shape(
            handle=handle,
            definition=definition,
            table=table,
            where=where,
            columns=columns,
            log=log_,
        )
        self._add(shape)
        return shape

    def _add(self, shape: Shape) -> None:
        # A log that finds damage when read retires its shape (the request gets a 409).
        shape.log.on_damage = lambda reason: self.rotate(shape, reason)
        self.by_handle[shape.handle] = shape
        self.by_definition[shape.definition] = shape
        self.router.add(shape)

    # -- loading after a restart ----------------------------------------------------------

    def load(self) -> list[Shape]:
        """Bring back every shape whose snapshot finished (the store discards the others)."""
        loaded = []
        for log_ in self.store.load():
            try:
                shape = self._load_one(log_)
            except Exception:
                log.exception("discarding unreadable shape %s", log_.handle)
                self.store.retire(log_)
                continue
            self._add(shape)
            loaded.append(shape)
        return loaded

    def _load_one(self, log_: ShapeLog) -> Shape:
        meta = log_.marker
        assert meta is not None
        definition = ShapeDefinition.from_json(meta["definition"])
        table = table_from_json(meta["table"])
        wanted = set(definition.columns)
        return Shape(
            handle=meta["handle"],
            definition=definition,
            table=table,
            where=(
                parse_where(definition.where, {}, table.column_map)
                if definition.where is not None
                else None
            ),
            columns=tuple(c for c in table.columns if c.name in wanted),
            log=log_,
            snapshot=XidSnapshot.from_json(meta["snapshot"]),
        )

    # -- rotation -------------------------------------------------------------------------

    def rotate(self, shape: Shape, reason: str) -> None:
        """Retire a shape: waiters get 409, the next request for it makes a new handle."""
        if not shape.retire():
            return
        log.info("shape %s rotated: %s", shape.handle, reason)
        self.by_handle.pop(shape.handle, None)
        if self.by_definition.get(shape.definition) is shape:
            del self.by_definition[shape.definition]
        self.router.remove(shape)
        for key in self._request_keys.pop(shape, ()):
            if self._by_request.get(key) is shape:
                del self._by_request[key]
        self.store.retire(shape.log)  # its files go, in the executor

    def rotate_table(self, oid: int, reason: str) -> None:
        for shape in [s for s in self.by_handle.values() if s.definition.table_oid == oid]:
            self.rotate(shape, reason)

    def rotate_all(self, reason: str) -> None:
        for shape in list(self.by_handle.values()):
            self.rotate(shape, reason)
