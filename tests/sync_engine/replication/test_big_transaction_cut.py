"""A big transaction whose stream is lost while it is written a part at a time leaves nothing
of it readable, even when another task was waiting to flush.

Chaos (`t_replay.py`, 2026-12-06): a new shape asked for while a big transaction was being
written (its snapshot's release schedules a flush, which waits for the flush lock), then the
walsender lost mid-write. `_deliver_big` let go of the lock as the error left it, the
keep-alive's exit then awaited, and the waiting flush published the parts written so far;
the stream loop's cut-back found nothing staged. The replay took those shapes for having the
transaction (their log reached its LSN) and skipped them: rows lost for good, clients told
they were up to date, a log ending inside a transaction.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from sync_engine.log.files import ShapeLog
from sync_engine.pg.catalog import load_table
from sync_engine.pg.xid_snapshot import XidSnapshot
from sync_engine.replication import replicator as replicator_module
from sync_engine.replication.replicator import Replicator
from sync_engine.replication.stream import ReplicationConnectionError
from sync_engine.replication.wal import Lsn, Xid
from sync_engine.shapes.changes import Change, ChangeKind
from sync_engine.shapes.registry import ShapeRegistry
from sync_engine.shapes.router import ShapeRouter
from sync_engine.shapes.shape import Shape, ShapeDefinition, ShapeHandle
from sync_engine.shapes.where import parse_where


class _LostStream:
    """A replication stream whose walsender is gone: every status update fails."""

    async def send_status(self) -> None:
        raise ReplicationConnectionError("server closed the connection unexpectedly")


async def test_a_stream_lost_mid_write_publishes_no_part_of_the_transaction(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicator_module, "PART_ENTRIES", 50)
    monkeypatch.setattr(replicator_module, "KEEPALIVE_EVERY", 0.01)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE big_cut (id int PRIMARY KEY, v int)")
        table = await load_table(conn, "public", "big_cut")
    assert table is not None
    data = tmp_path / "shapes"
    data.mkdir()
    router = ShapeRouter()
    registry = ShapeRegistry(data, 1 << 20, router, fsync=False)
    log = ShapeLog(data / "s0", 1 << 20, fsync=False)
    log.create()
    shape = Shape(
        handle=ShapeHandle("s0"),
        definition=ShapeDefinition(
            table_oid=table.oid,
            schema="public",
            table="big_cut",
            where="v >= 0",
            columns=tuple(c.name for c in table.columns),
        ),
        table=table,
        where=parse_where("v >= 0", {}, table.column_map),
        columns=table.columns,
        log=log,
        snapshot=XidSnapshot(0, 1, frozenset()),
    )
    registry.add(shape)
    rep = Replicator("", "", "", registry, router, fsync=False)

    xid, lsn = Xid(1000), Lsn(0x5000000)
    changes: list[Change] = [
        (ChangeKind.INSERT, None, {"id": str(i), "v": str(i)}, i + 1) for i in range(20_000)
    ]
    deliver = asyncio.ensure_future(
        rep._deliver_big(_LostStream(), {shape: changes}, xid, lsn)  # type: ignore[arg-type]
    )
    for _ in range(100):  # (until it writes: a part staged, the lock held)
        if rep._flush_lock.locked():
            break
        await asyncio.sleep(0)
    assert rep._flush_lock.locked()
    # A flush another task asked for meanwhile (a new shape's parked transactions released,
    # a held one settled): it waits for the lock.
    waiting_flush = asyncio.ensure_future(rep.flush())
    with pytest.raises(ReplicationConnectionError):
        await deliver
    rep._rollback_staged()  # (what the stream loop does with the error, `Replicator.run`)
    await waiting_flush

    assert shape.log.last_lsn < lsn, "part of a cut-off transaction was published"
    assert not shape.log.has_unpublished
    # Sent again by the slot, it is appended whole, not skipped as a replay.
    rep._delivered = 0
    await rep._deliver_big(None, {shape: changes}, xid, lsn)
    assert shape.log.last_lsn == lsn
