"""A big transaction held for a new shape (parked while its snapshot ran, then written a part
at a time by the settling task) is delivered exactly, whatever cuts it back meanwhile (one
with none of the shape's rows: `tests/sync_engine/test_held_big_new_shape.py`).

Chaos (`t_storm.py` seed 6, 2026-12-06): a storm of new shapes on `items`, a 10,000-row INSERT
committed during their snapshots. A shape none of whose rows the INSERT matched (`title LIKE
't3%' OR id = 206`, rows 'b<n>') wrote nothing, which the settling task took for a failure:
"writing 10000 changes for shape ..., a part at a time" every 5 s for good, no error, and the
shape's later transactions held behind it, so its clients were told "up to date" with rows
Postgres had deleted. Another new shape's write was cut back between two parts (a failed
write elsewhere during a full disk): the rest of its parts were written at the published end
and published as the whole transaction, and a DELETE cut back with them was skipped as a
replay when the slot sent it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import psycopg
import pytest

from sync_engine.log.files import ShapeLog
from sync_engine.log.offsets import SNAPSHOT_END
from sync_engine.pg.catalog import TableInfo, load_table
from sync_engine.pg.xid_snapshot import XidSnapshot
from sync_engine.replication import replicator as replicator_module
from sync_engine.replication.replicator import Replicator
from sync_engine.replication.wal import Lsn, Xid
from sync_engine.shapes.changes import Change, ChangeKind
from sync_engine.shapes.registry import ShapeRegistry
from sync_engine.shapes.router import ShapeRouter
from sync_engine.shapes.shape import Shape, ShapeDefinition, ShapeHandle
from sync_engine.shapes.where import parse_where

ROWS = 3000  # (PART_ENTRIES 50 below: 60 parts; BIG_TRANSACTION lowered to make it big)


def _rows(log: ShapeLog) -> dict[str, str]:
    """Every published entry's key -> its last operation, as a client would apply them."""
    rows: dict[str, str] = {}
    offset = SNAPSHOT_END
    while log.has_after(offset):
        entries, offset = log.read_after(offset)
        for raw in entries:
            entry = orjson.loads(raw)
            if "key" in entry:
                operation = entry["headers"]["operation"]
                if operation == "delete":
                    rows.pop(entry["key"], None)
                else:
                    rows[entry["key"]] = operation
    return rows


async def _settled(rep: Replicator, shape: Shape, timeout: float) -> None:
    task = rep._holding.get(shape)
    if task is not None:
        await asyncio.wait_for(asyncio.shield(task), timeout)


@pytest.fixture
async def setup(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Replicator, ShapeRegistry, object]]:
    monkeypatch.setattr(replicator_module, "PART_ENTRIES", 50)
    monkeypatch.setattr(replicator_module, "BIG_TRANSACTION", 1000)
    monkeypatch.setattr(replicator_module, "FIRST_DELAY", 0.05)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE held_big (id int PRIMARY KEY, title text)")
        table = await load_table(conn, "public", "held_big")
    assert table is not None
    data = tmp_path / "shapes"
    data.mkdir()
    router = ShapeRouter()
    registry = ShapeRegistry(data, 1 << 26, router, fsync=False)
    rep = Replicator("", "", "", registry, router, fsync=False)
    yield rep, registry, table
    for task in rep.tasks:  # (one retried for good, on the old code)
        task.cancel()


def _new_shape(registry: ShapeRegistry, table: object, handle: str, where: str) -> Shape:
    """A shape whose snapshot is still running (its transactions are parked)."""
    assert isinstance(table, TableInfo)
    log = ShapeLog(registry.directory / handle, 1 << 26, fsync=False)
    log.create()
    shape = Shape(
        handle=ShapeHandle(handle),
        definition=ShapeDefinition(
            table_oid=table.oid,
            schema="public",
            table="held_big",
            where=where,
            columns=tuple(c.name for c in table.columns),
        ),
        table=table,
        where=parse_where(where, {}, table.column_map),
        columns=table.columns,
        log=log,
    )
    registry.add(shape)
    return shape


def _inserts(title: str) -> list[Change]:
    return [
        (ChangeKind.INSERT, None, {"id": str(i), "title": f"{title}{i}"}, i + 1)
        for i in range(ROWS)
    ]


async def test_a_held_big_transaction_cut_back_between_parts_is_written_again_whole(
    setup: tuple[Replicator, ShapeRegistry, object],
) -> None:
    rep, registry, table = setup
    shape = _new_shape(registry, table, "cut", "title LIKE 'b%'")
    changes = _inserts("b")
    xid, lsn = Xid(1000), Lsn(0x5000000)
    await rep._deliver_big(None, {shape: changes}, xid, lsn)
    shape.snapshot_taken(XidSnapshot(900, 900, frozenset()))
    rep.release_pending(shape)
    for _ in range(1000):  # (until the settling task has a part staged, the lock held)
        if shape.log.has_unpublished:
            break
        await asyncio.sleep(0)
    assert shape.log.has_unpublished and rep._flush_lock.locked()
    # A failed write elsewhere (a full disk) or a lost stream: the stream loop cuts back
    # every staged append (`Replicator.run`), this shape's parts among them.
    rep._rollback_staged()
    await asyncio.sleep(0.2)
    assert shape.log.last_lsn < lsn, "the rest of a cut-back transaction was published"
    assert shape.held

    # The slot sends it again: written whole, once.
    await rep._deliver_big(None, {shape: changes}, xid, lsn)
    await _settled(rep, shape, 5.0)
    assert not shape.held and not shape.rotated
    assert shape.log.last_lsn == lsn
    rows = _rows(shape.log)
    assert len(rows) == ROWS


async def test_a_transaction_the_snapshot_holds_sent_again_after_the_release_is_not_appended(
    setup: tuple[Replicator, ShapeRegistry, object],
) -> None:
    """Chaos `t_storm.py` seed 11 (2026-12-06): a new shape's clients were handed a delete of a
    row they never had and an insert of one they held. Its snapshot completed while the
    stream, started again after a full disk cut appends back, was re-sending what the slot
    had not confirmed: releasing the parked transactions set `past_xmax` (one of them was
    past the snapshot), and the big one was held, so the log's last LSN stayed behind. A
    transaction the snapshot holds, sent again then, took the fast path and was appended."""
    rep, registry, table = setup
    shape = _new_shape(registry, table, "resent", "id >= 0")
    seen: list[Change] = [(ChangeKind.INSERT, None, {"id": "99999", "title": "v"}, 0)]
    seen_xid, seen_lsn = Xid(850), Lsn(0x4000000)  # committed before the snapshot
    big, xid, lsn = _inserts("b"), Xid(1000), Lsn(0x5000000)  # after it
    rep._deliver({shape: seen}, seen_xid, seen_lsn)
    await rep._deliver_big(None, {shape: big}, xid, lsn)
    assert [p[1] for p in shape.parked] == [seen_lsn, lsn]
    # The stream is started again (a cut-back): the slot sends both once more. The snapshot
    # completes before the first of them comes.
    shape.snapshot_taken(XidSnapshot(900, 900, frozenset()))
    rep.release_pending(shape)
    assert shape.held  # (the big one, written by the settling task)
    rep._deliver({shape: seen}, seen_xid, seen_lsn)
    await rep._deliver_big(None, {shape: big}, xid, lsn)
    await _settled(rep, shape, 5.0)
    assert not shape.held and not shape.rotated
    rows = _rows(shape.log)
    assert '"public"."held_big"/"99999"' not in rows, (
        "a transaction the snapshot holds was appended"
    )
    assert len(rows) == ROWS
