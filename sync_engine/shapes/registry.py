"""Handle <-> shape, for one source: find a request's shape, create, load, rotate.

A shape is registered with the router *before* its snapshot starts, so the replication
stream parks whatever commits meanwhile; the snapshot's xid horizon then decides what to
keep (see `Shape`). Repeat requests find their shape by their raw parameters, skipping the
catalog and the where parser.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from ..errors import ServiceUnavailable
from ..log.files import ShapeLog
from ..log.store import ShapeStore
from ..metrics import retire_kind
from ..pg.catalog import ColumnInfo, TableInfo
from ..pg.xid_snapshot import XidSnapshot
from .definition import Described, ShapeDefinition, ShapeParams
from .router import ShapeRouter
from .shape import FAMILY_LISTED, HandleFactory, Shape, family_digest
from .where import parse_where

logger = logging.getLogger(__name__)

#: Seconds after its last request (or the end of its last answer) during which a shape is
#: not evicted for a new one (`ShapeRegistry.evict`): a client paging through a shape, or
#: coming back after a long-poll, a dropped connection or a 503, asks again within that.
#: The npm client retries after at most 32 s (its backoff's `maxDelay`; a `Retry-After` it
#: is told), and a long-poll returns within 20 s (`--long-poll-timeout`): 60 s covers
#: either with room. A shorter time let a storm of new shapes retire a shape between two
#: requests of its client; a longer one keeps a storm's newcomers waiting longer.
MIN_IDLE = 60.0
#: Seconds after which a pass looks again at a shape a client left that is still held (a
#: stream of the proxy's for a definition its clients left ends when it ends).
LEFT_RECHECK = 1.0
#: The `code` of the 503 for a new shape with no room (`ShapeRegistry.no_room`).
SHAPE_LIMIT_REACHED = "shape_limit_reached"
#: The longest Retry-After of the 503 for a new shape with no room (`ShapeRegistry.no_room`).
NO_ROOM_RETRY = 10


def shape_record(shape: Shape) -> dict[str, object]:
    """What loading `shape` after a restart needs (written in its completion marker)."""
    record: dict[str, object] = {
        "handle": shape.handle,
        "definition": shape.definition.to_json(),
        "table": _table_json(shape.table),
    }
    if shape.family is not None:
        if len(shape.family) <= FAMILY_LISTED:
            record["family"] = sorted(shape.family)
        else:
            record["family_digest"] = family_digest(shape.family)
    elif shape.family_digest is not None:
        record["family_digest"] = shape.family_digest
    return record


#: `table_to_json` by the id of the (immutable) table, kept in the entry so the id cannot
#: be reused while the entry lives: the shapes of a storm share one table.
_tables: dict[int, tuple[TableInfo, dict[str, object]]] = {}


def _table_json(t: TableInfo) -> dict[str, object]:
    """`table_to_json(t)`, shared by every record of `t` (serialised, never changed)."""
    known = _tables.get(id(t))
    if known is not None and known[0] is t:
        return known[1]
    data = table_to_json(t)
    if len(_tables) >= 1024:
        _tables.clear()
    _tables[id(t)] = (t, data)
    return data


#: `ColumnInfo`'s fields, as `table_to_json` records them (`table_from_json` passes them back).
_COLUMN_FIELDS = tuple(f.name for f in dataclasses.fields(ColumnInfo))


def table_to_json(t: TableInfo) -> dict[str, object]:
    return {
        "oid": t.oid,
        "schema": t.schema,
        "name": t.name,
        "pk": list(t.pk),
        "kind": t.kind,
        "replica_identity": t.replica_identity,
        "relfilenode": t.relfilenode,
        "files": None if t.files is None else [list(f) for f in t.files],
        "enums": None if t.enums is None else [list(e) for e in t.enums],
        "unsynced": list(t.unsynced),
        "pk_deferrable": t.pk_deferrable,
        "casts": None if t.casts is None else [list(c) for c in t.casts],
        "composites": None if t.composites is None else [list(c) for c in t.composites],
        # every field of each column, whatever it is: a field left out of a hand-written
        # list came back as its default after a restart (a domain's base type, an enum's
        # schema), and the shape was refused or compiled otherwise
        "columns": [{f: getattr(c, f) for f in _COLUMN_FIELDS} for c in t.columns],
    }


def table_from_json(d: dict[str, object]) -> TableInfo:
    """From `table_to_json`'s form (raises TypeError or KeyError when it is not that)."""
    oid, columns, pk = d["oid"], d["columns"], d["pk"]
    if not isinstance(oid, int) or not isinstance(columns, list) or not isinstance(pk, list):
        raise TypeError("not a table description")
    relfilenode = d.get("relfilenode")  # (absent: recorded before it was)
    if relfilenode is not None and not isinstance(relfilenode, int):
        raise TypeError("not a table description")
    return TableInfo(
        oid=oid,
        schema=str(d["schema"]),
        name=str(d["name"]),
        columns=tuple(ColumnInfo(**c) for c in columns),
        pk=tuple(str(p) for p in pk),
        kind=str(d["kind"]),
        replica_identity=str(d["replica_identity"]),
        relfilenode=relfilenode,
        files=_rows(d.get("files"), (int, int)),
        enums=_rows(d.get("enums"), (int, int, str)),
        unsynced=tuple(str(u) for u in _list(d.get("unsynced"))),
        pk_deferrable=d.get("pk_deferrable") is True,
        casts=_rows(d.get("casts"), (str, str, str)),
        composites=_rows(d.get("composites"), (int, int, str, int)),
    )


def _list(value: object) -> list[object]:
    """A list field recorded since some version (absent: empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError("not a table description")
    return value


def _rows(value: object, kinds: tuple[type, ...]) -> tuple[tuple[Any, ...], ...] | None:
    """A table description's list of fixed-width rows (`files`: oid and relfilenode, see
    `TableInfo.files`; `enums`: attnum, pg_enum oid and label, `TableInfo.enums`), each
    field of exactly its kind (`true` is no oid); None when absent. Raises TypeError when
    the record is not that (a damaged or foreign one: its shape is discarded)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise TypeError("not a table description")
    out = []
    for row in value:
        if not (
            isinstance(row, list)
            and len(row) == len(kinds)
            and all(type(x) is kind for x, kind in zip(row, kinds, strict=True))
        ):
            raise TypeError("not a table description")
        out.append(tuple(row))
    return tuple(out)


def _family(value: object) -> frozenset[int] | None:
    """A completion record's `family` (see `Shape.family`); None when absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(o, int) for o in value):
        raise TypeError("not a family")
    return frozenset(value)


def _digest(value: object) -> str | None:
    """A completion record's `family_digest` (see `Shape.family_digest`)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("not a family digest")
    return value


class _Damage(str):
    """The reason of a retirement for damage a read found (`ShapeRegistry._damaged`): its
    text is the file and what is wrong with it; /metrics counts it as `damaged`."""

    __slots__ = ()


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
        self._loop: asyncio.AbstractEventLoop | None = None  # (the one shapes were added on)
        # Raw request definition -> shape, so repeat requests skip the catalog and pglast.
        # Bounded: request texts that differ only in spelling must not grow it forever.
        self._by_request: LRUCache[tuple[object, ...], Shape] = LRUCache(maxsize=20_000)
        # Its keys per shape, so retiring a shape does not scan all 20,000 (a dropped table
        # with thousands of shapes did that thousands of times on the event loop).
        self._request_keys: dict[Shape, set[tuple[object, ...]]] = {}
        # Every live shape, least recently requested first (`touch`, `evict`).
        self._recency: OrderedDict[Shape, None] = OrderedDict()
        #: Seconds a shape used is kept from eviction (`MIN_IDLE`; tests set 0).
        self.min_idle = MIN_IDLE
        # (monotonic) before which no shape may go, as the last `evict` that found too few
        # found it; 0 after one that found enough.
        self._room_at = 0.0
        #: Shapes made since start, and shapes retired by kind of reason (`retire_kind`):
        #: read by the engine's /metrics.
        self.created = 0
        self.retired: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.by_handle)

    # -- resolving requests ---------------------------------------------------------------

    def cached(self, params: ShapeParams) -> Shape | None:
        shape = self._by_request.get(params.key())
        if shape is not None and not shape.rotated:
            return shape
        return None

    def touch(self, shape: Shape) -> None:
        """A request asked for `shape`: it is the most recently used now (`evict`)."""
        shape.used_at = time.monotonic()
        shape.left = False
        if shape in self._recency:
            self._recency.move_to_end(shape)

    def evict(self, count: int, reason: str) -> int:
        """Retire up to `count` of the least recently requested shapes that no client is
        using now, and return how many went.

        In use, and kept: a shape with a request held at its tip (a long-poll or an SSE
        stream), an answer being written (`Shape.sending`: a client reading a chunk, which
        a slow one takes minutes over, came back to a 409 and began again, for ever under
        a churn of new shapes), whose snapshot is still being taken, or used in the last
        `min_idle` seconds (`Shape.used_at`: a client paging through its first sync is
        between two requests for a few milliseconds at a time; retired there, its first
        sync never finished while another user made new shapes). Those are moved to the
        recent end as they are passed over (they are in use), so a registry full of them
        costs one pass, not one per new shape. Retiring is a rotation: its clients get a
        409 on their next request and refetch, as after a DELETE, and its files go.
        """
        now = time.monotonic()
        if now < self._room_at:  # (a pass found none to go, and none may go before then)
            return 0
        evicted = 0
        room_at = now + self.min_idle  # (a shape held now is used when it lets go)
        for _ in range(len(self._recency)):
            if evicted >= count or not self._recency:
                break
            shape = next(iter(self._recency))
            if shape.waiting or shape.sending or not shape.log.snapshot_complete:
                if not (shape.waiting or shape.sending):  # (may go once its snapshot is in)
                    room_at = min(room_at, shape.used_at + self.min_idle)
                elif shape.left:  # (may go once what is held on it ends: look again soon)
                    room_at = min(room_at, now + LEFT_RECHECK)
                self._recency.move_to_end(shape)
                continue
            if now - shape.used_at < self.min_idle:
                room_at = min(room_at, shape.used_at + self.min_idle)
                self._recency.move_to_end(shape)
                continue
            self.rotate(shape, reason)
            evicted += 1
        # Too few went: no shape may go before `room_at` (a new one is used now, a held one
        # when it lets go), so until then a new shape's request costs no pass (a storm of
        # them made one pass of every shape each).
        self._room_at = room_at if evicted < count else 0.0
        return evicted

    def left(self, shape: Shape) -> bool:
        """A client left `shape` for another definition: its request named this handle
        with a definition this shape is not (a policy narrowed at the proxy, a dependent
        shape's where changed). Its request counts as used no more: the shape keeps the
        `min_idle` protection only while a client pages through it (`Shape.paged_at`: its
        last answer had more to read), and otherwise is the first to go when room is
        needed. Its other clients at the tip, if any, are held (kept) or get one 409 and
        refetch; one between two requests of a catch-up, at the moment an up-to-date
        answer went to another, may be retired too (and refetch).

        Without this, a policy change through the proxy under a tight `max_shapes` moved
        every client onto a new shape while the shapes they left counted as used for
        60 s: each of them got 503 for that long (chaos seed 3102).

        Returns whether the shape may go now (then the next `evict` looks again).
        """
        if shape.rotated or self.by_handle.get(shape.handle) is not shape:
            return False
        shape.left = True  # (until a request asks for it: what is held on it now ends unused)
        paging = shape.paged_at > shape.caught_up_at
        kept_from = shape.paged_at if paging else float("-inf")
        if shape.used_at > kept_from:
            shape.used_at = kept_from
            self._recency.move_to_end(shape, last=False)
        now = time.monotonic()
        held = shape.waiting or shape.sending or not shape.log.snapshot_complete
        free = not held and now - shape.used_at >= self.min_idle
        if free:
            self._room_at = 0.0  # (a pass may find it)
        elif self._room_at:  # (when a pass may find it: see `evict`)
            may_go = now + LEFT_RECHECK if held else shape.used_at + self.min_idle
            self._room_at = min(self._room_at, may_go)
        return free

    def no_room(self, limit: int) -> ServiceUnavailable:
        """The 503 for a new shape `evict` found no room for: every one of the `limit`
        shapes is in use, or was used in the last `min_idle` seconds. Its Retry-After is
        when the first of those may go, at most `NO_ROOM_RETRY` seconds (a shape deleted or
        rotated makes room sooner)."""
        wait = self._room_at - time.monotonic()
        retry = min(NO_ROOM_RETRY, max(1, math.ceil(wait)))
        return ServiceUnavailable(
            f"Shape limit reached for this source: all {limit} shapes are in use or were"
            f" requested in the last {self.min_idle:g} s (max_shapes); retry in {retry} s",
            retry_after=retry,
            code=SHAPE_LIMIT_REACHED,
        )

    def remember(self, params: ShapeParams, shape: Shape) -> None:
        key = params.key()
        self._by_request[key] = shape
        self._request_keys.setdefault(shape, set()).add(key)

    # -- creation -------------------------------------------------------------------------

    def current(self, definition: ShapeDefinition) -> Shape | None:
        """The live shape of a definition, if there is one."""
        return self.by_definition.get(definition)

    def create(self, described: Described) -> Shape:
        """A new shape (SNAPSHOTTING) of a request's definition, its where clause the one
        `describe` compiled, routed at once so the stream parks its transactions."""
        definition = described.definition
        handle = self.handles.new(definition)
        shape_log = self.store.new_log(handle)
        shape = Shape(
            handle=handle,
            definition=definition,
            table=described.table,
            where=described.where,
            columns=described.columns,
            log=shape_log,
        )
        # (asked for now, and its first chunk is about to be read; one loaded from disk
        # was not)
        shape.used_at = shape.paged_at = time.monotonic()
        self.add(shape)
        self.created += 1
        return shape

    def add(self, shape: Shape) -> None:
        """Register a shape built elsewhere (by `create`, `load`, or a benchmark or test that
        builds its own) so the router and both lookups find it."""
        # A log that finds damage when read retires its shape (the request gets a 409).
        shape.log.on_damage = lambda reason: self._damaged(shape, reason)
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # (built without a loop: a test, a benchmark)
                pass
        self.by_handle[shape.handle] = shape
        self.by_definition[shape.definition] = shape
        self._recency[shape] = None
        self.router.add(shape)

    # -- loading after a restart ----------------------------------------------------------

    def load(self) -> list[Shape]:
        """Bring back every shape whose snapshot finished (the store discards the others)."""
        loaded = []
        for shape_log in self.store.load():
            try:
                shape = self._load_one(shape_log)
            except Exception:
                logger.exception("discarding unreadable shape %s", shape_log.handle)
                self.store.retire(shape_log)
                continue
            self.add(shape)
            loaded.append(shape)
        return loaded

    def _load_one(self, shape_log: ShapeLog) -> Shape:
        meta = shape_log.marker
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
            log=shape_log,
            snapshot=XidSnapshot.from_json(meta["snapshot"]),
            family=_family(meta.get("family")),
            family_digest=_digest(meta.get("family_digest")),
        )

    # -- rotation -------------------------------------------------------------------------

    def _damaged(self, shape: Shape, reason: str) -> None:
        """`rotate`, on the event loop: a snapshot chunk is read (and found damaged) in a
        worker thread too, and the registry, the router and the shape's waiters are the
        loop's. Scheduled from a thread, it runs before the reader's own result reaches
        the loop (both go through its queue), so the reader's 409 finds the shape gone."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self.rotate, shape, _Damage(reason))
                return
        self.rotate(shape, _Damage(reason))

    def rotate(self, shape: Shape, reason: str) -> None:
        """Retire a shape: waiters get 409, the next request for it makes a new handle."""
        if not shape.retire():
            return
        self.retired["damaged" if isinstance(reason, _Damage) else retire_kind(reason)] += 1
        logger.info("shape %s rotated: %s", shape.handle, reason)
        self.by_handle.pop(shape.handle, None)
        self._recency.pop(shape, None)
        if self.by_definition.get(shape.definition) is shape:
            del self.by_definition[shape.definition]
        self.router.remove(shape)
        for key in self._request_keys.pop(shape, ()):
            if self._by_request.get(key) is shape:
                del self._by_request[key]
        self.store.retire(shape.log)  # its files go, in the executor

    def rotate_table(
        self, oid: int, reason: str, keep: Callable[[Shape], bool] | None = None
    ) -> None:
        """Rotate the shapes of table `oid`, but those `keep` says to keep."""
        for shape in [s for s in self.by_handle.values() if s.definition.table_oid == oid]:
            if keep is None or not keep(shape):
                self.rotate(shape, reason)

    def rotate_all(self, reason: str) -> None:
        for shape in list(self.by_handle.values()):
            self.rotate(shape, reason)

    async def retire_all(self, reason: str) -> None:
        """`rotate_all`, and return once the retirements are on disk: a crash right after
        must not bring the shapes back (see `ShapeStore.settle`)."""
        self.rotate_all(reason)
        await self.store.settle()
