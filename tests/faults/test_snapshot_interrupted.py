"""A big initial snapshot interrupted while it is being streamed to its client: its
backends terminated, Postgres stopped (immediate, as a crash, or fast) and started, or the
engine SIGKILLed and restarted.

The engine serves a new shape's snapshot chunks as they are written, while Postgres is
still reading the rest. Interrupted, the client must never get part of one snapshot followed
by the rest of another (or an up-to-date): its requests fail (a 503 it retries, a 409 that
sends it back to -1) or go on with the same snapshot. Then, with a writer incrementing `v`
all along, it follows the shape live and ends equal to `SELECT`, every row and update seen
exactly once.

A backend terminated under a snapshot whose first chunks were served used to have its
snapshot run again on a fresh connection, under a new snapshot, into the same shape: the
client got the first chunks of one and the rest of the other (rows moved by updates in
between were missing or came twice), and the shape's horizon was the new snapshot while its
log held changes filtered by the old one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Literal

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows, until_equal
from tests.support.waiting import wait_until_async

ROWS = 100_000
COLUMNS = ("id", "v", "pad")
#: A where shape (read row by row) and the whole table (read by blocks, maybe two backends).
WHERES = ["id % 2 = 0", None]

Fault = Literal["fast", "immediate", "kill", "terminate"]
#: The engine's snapshot backends, while they read.
COPYING = (
    "SELECT pid FROM pg_stat_activity WHERE application_name = 'shapegate'"
    " AND backend_type = 'client backend' AND query LIKE '%%COPY%%'"
)


def _resume(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("fault", "where"),
    # (every fault on both paths held; tests/sync_engine/snapshot/test_big_snapshots.py
    # kills the engine mid-snapshot too; "fast": a clean stop, whose walsender waits for
    # the engine to confirm what it sent, while the snapshot's transactions are parked)
    [("terminate", WHERES[0]), ("terminate", WHERES[1]), ("immediate", None), ("fast", WHERES[0])],
)
async def test_a_snapshot_interrupted_mid_stream_is_never_served_in_part(
    cluster: FaultCluster, tmp_path: Path, fault: Fault, where: str | None
) -> None:
    cluster.query("ALTER TABLE items ADD COLUMN pad text NOT NULL DEFAULT repeat('p', 100)")
    cluster.query(f"INSERT INTO items (id, v) SELECT g, 0 FROM generate_series(21, {ROWS}) g")
    data = tmp_path / "data"
    engine = EngineProcess(cluster.url, data, "--long-poll-timeout", "2", "--chunk-bytes", "65536")
    await asyncio.to_thread(engine.start)
    writer = Writer(cluster.url, first_id=ROWS + 1, rows=ROWS)
    follower = Follower(engine.url, where)
    stop_followers, stop_writer = asyncio.Event(), asyncio.Event()
    paused: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(lambda: writer.committed >= 10, timeout=30, message="writes")
            task = asyncio.create_task(follower.run(session, stop_followers))
            shapes = data / "sources" / "default" / "shapes"

            # The snapshot's backends (two for a big whole table) are paused once its
            # second chunk is written, so it cannot finish before the fault; its first
            # chunk is served meanwhile.
            await wait_until_async(
                lambda: any(shapes.glob("*.snapshot.00001.json")),
                timeout=30,
                interval=0.001,
                message="a chunk written",
            )
            paused += [int(pid) for (pid,) in cluster.query(COPYING)]  # type: ignore[call-overload]
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
            assert paused, "no snapshot backend"
            await wait_until_async(
                lambda: follower.offset.startswith("0_"), timeout=30, message="a chunk served"
            )
            assert not follower.live
            if fault == "terminate":
                for pid in paused:
                    cluster.query("SELECT pg_terminate_backend(%s)", (pid,))
                _resume(paused)
            elif fault == "kill":
                engine.kill()
                _resume(paused)
                await asyncio.to_thread(engine.start)
            else:
                stopping = asyncio.create_task(asyncio.to_thread(cluster.stop_server, fault))
                await asyncio.sleep(0.2)
                _resume(paused)
                await stopping
                await asyncio.to_thread(cluster.start)
            await wait_until_async(lambda: follower.live, timeout=60, message="follower live")
            target = writer.committed + 20
            await wait_until_async(
                lambda: writer.committed >= target, timeout=60, message="writes after"
            )
            stop_writer.set()
            await writing
            await until_equal([follower], [expected_rows(cluster.url, where, COLUMNS)], 60)
            stop_followers.set()
            await task
        follower.assert_clean()
    finally:
        _resume(paused)
        stop_writer.set()
        stop_followers.set()
        engine.stop()
