"""A disk with a little space left, less than a transaction needs: the engine's space probe
(a small write) succeeds, the transaction's append does not. Replication stays paused,
started again at a growing interval (it was started again at once, about ten times a second,
each time replaying the slot from its confirmed position), and once space is back the
shape's clients get every row.

Mounting a small tmpfs needs root (CI runs as root); elsewhere the test is skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.faults.test_disk_full_snapshot import _fill
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows, until_equal
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up (CI runs as root)"
)

#: How long the stream starts are counted while the disk is too full: long enough to tell a
#: growing pause (starts 0.25, 0.5, 1 s apart: at most 4 in it, and one in progress) from
#: a fixed one of 0.25 s (8) and from the old engine's ~10 a second (~20).
WINDOW = 2.0


@pytest.mark.timeout(180)
async def test_a_transaction_too_big_for_the_space_left_pauses_replication_calmly(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    cluster.query("ALTER TABLE items ADD COLUMN body text")
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    engine = EngineProcess(cluster.url, mnt, "--long-poll-timeout", "2")
    engine.log = tmp_path / "engine.log"  # not on the disk that fills up
    filler = mnt / "filler"
    columns = ("id", "v", "body")
    try:
        await asyncio.to_thread(engine.start)
        async with aiohttp.ClientSession() as session:
            follower = Follower(engine.url, increments=False)
            stop = asyncio.Event()
            task = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, timeout=60, message="live")
            # room for the space probe (64 kB), not for the transaction (about 3 MB)
            await asyncio.to_thread(_fill, filler, 300_000)
            cluster.query(
                "INSERT INTO items SELECT g, 0, repeat(md5(g::text), 100)"
                " FROM generate_series(100, 1100) g"
            )

            def paused() -> bool:
                return "cannot write shape logs" in engine.log_tail(1_000_000)

            await wait_until_async(paused, timeout=60, message="replication paused")
            starts: set[object] = set()
            loop = asyncio.get_running_loop()
            until = loop.time() + WINDOW
            while loop.time() < until:
                for (started,) in cluster.query("SELECT backend_start FROM pg_stat_replication"):
                    starts.add(started)
                await asyncio.sleep(0.05)
            # A growing pause: 0.25 s, doubled (up to MAX_DELAY); the old engine started the
            # stream again at once (~10 a second).
            assert len(starts) <= 6, len(starts)
            assert follower.statuses.keys() <= {200, 503}, follower.statuses

            filler.unlink()
            await until_equal([follower], [expected_rows(cluster.url, None, columns)], 60)
            stop.set()
            await task
        follower.assert_clean()
        assert "Traceback" not in engine.log_tail(1_000_000)
    finally:
        engine.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
