"""Postgres gone back in time under the engine's shapes: its data restored from a file-level
copy (a disk or VM snapshot: the replication slot goes back with it) after the engine had
streamed later changes into its shapes.

The shapes held rows Postgres no longer has, and the new history's changes came at WAL
positions the engine had already processed: it took them for replays of what it had and
skipped them. Every client, new ones included, kept the lost rows and missed the new
writes, for good, all "up to date". Now the engine checks, as its stream starts again and
at its start, that Postgres's WAL does not end before what it processed: if it does, every
shape is retired (the old handle gets a 409 and a refetch is exact) and a running engine
stops with status 1 (what it holds in memory of the old history only a restart clears).

Real path: the engine as a process on a private Postgres cluster whose data directory is
copied while it is stopped and put back later.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import expected_rows, follow_once, status_of_old_handle


@pytest.mark.timeout(120)
async def test_postgres_restored_from_a_disk_copy_retires_the_shapes(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """Restored under the running engine, which then restarts (so both checks run)."""
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    try:
        await asyncio.to_thread(engine.start)
        async with aiohttp.ClientSession() as session:
            await follow_once(session, engine.url)
            copy = await asyncio.to_thread(cluster.disk_copy)
            # changes the engine streams into its shape, then lost with the restore
            cluster.query("UPDATE items SET v = 111 WHERE id <= 10")
            cluster.query("DELETE FROM items WHERE id > 15")
            first = await follow_once(session, engine.url, expected_rows(cluster.url, None))
            await asyncio.to_thread(cluster.put_back, copy)
            # The running engine sees it as its stream starts again: it retires its shapes
            # and stops, status 1 (the old engine streamed on from the restored slot).
            proc = engine.proc
            assert proc is not None
            assert await asyncio.to_thread(proc.wait, 30) == 1
            cluster.query("UPDATE items SET v = 5 WHERE id = 3")  # the new history
            await asyncio.to_thread(engine.start)
            # (the old engine: 200, the lost rows kept, the new update skipped)
            assert await status_of_old_handle(session, first) == 409
            again = await follow_once(session, engine.url)
        assert again.handle != first.handle
        assert again.rows == expected_rows(cluster.url, None)
        assert "Postgres went back in time" in engine.log_tail(100_000)
    finally:
        engine.stop()
