"""Shapes registered in-process for the replication benchmarks (replication_cpu.py, S4).

Creating 100,000 shapes over HTTP would run a snapshot query each, so these benchmarks build
the engine's registry directly: shape k is `user_id = k` on `public.events`, its log under
`data/shapes/k`, and a snapshot every WAL transaction is after.
"""

from __future__ import annotations

from pathlib import Path

from sync_engine.log.files import ShapeLog
from sync_engine.pg.catalog import TableInfo
from sync_engine.pg.xid_snapshot import XidSnapshot
from sync_engine.replication.replicator import Replicator
from sync_engine.shapes.registry import ShapeRegistry
from sync_engine.shapes.router import ShapeRouter
from sync_engine.shapes.shape import Shape, ShapeDefinition, ShapeHandle
from sync_engine.shapes.where import parse_where

LOG_LIMIT = 10 * 1024 * 1024


def equality_shapes(
    table: TableInfo, n_shapes: int, data: Path, *, logs: int, past_xmax: bool
) -> tuple[ShapeRegistry, ShapeRouter]:
    """`n_shapes` shapes `user_id = k`; only the first `logs` get a log file on disk (the
    shapes a benchmark's changes append to), so registering 100k shapes stays cheap."""
    router = ShapeRouter()
    registry = ShapeRegistry(data / "shapes", LOG_LIMIT, router)
    (data / "shapes").mkdir(parents=True, exist_ok=True)  # ShapeLog.create() makes one level
    snap = XidSnapshot(0, 1, frozenset())  # every WAL transaction is after it
    for k in range(n_shapes):
        definition = ShapeDefinition(
            table_oid=table.oid,
            schema="public",
            table="events",
            where=f"user_id = {k}",
            columns=("id", "payload", "user_id"),
        )
        log = ShapeLog(data / "shapes" / str(k), LOG_LIMIT)
        if k < logs:
            log.create()
        shape = Shape(
            handle=ShapeHandle(str(k)),
            definition=definition,
            table=table,
            where=parse_where(definition.where or "", {}, table.column_map),
            columns=table.columns,
            log=log,
            snapshot=snap,
        )
        shape.past_xmax = past_xmax
        registry.add(shape)
    return registry, router


def replicator(registry: ShapeRegistry, router: ShapeRouter) -> Replicator:
    """The engine's replication path without a connection and without fsync (the benchmarks
    that time the flush do so themselves)."""
    return Replicator("", "", "", registry, router, fsync=False)
