"""Two engines on one data directory (a restart that starts the new process before the old
one is gone, a second container on a shared volume): the second waits until the first has
stopped, then serves exactly Postgres's rows.

Without the wait both served from the same files: the second loaded the shape logs once
and answered from that frozen view (up-to-date, while the first appended on), its start-up
deleted the files of snapshots the first was still writing, and once the first stopped it
appended at the ends it had loaded, where the first had written.

Real path: two engine processes on one private Postgres cluster, a writer.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows, until_equal
from tests.support.waiting import wait_until, wait_until_async


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/health", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.mark.timeout(180)
async def test_a_second_engine_on_a_data_directory_waits_for_the_first(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = EngineProcess(cluster.url, data, "--long-poll-timeout", "2", "--chunk-bytes", "4000")
    await asyncio.to_thread(first.start)
    second = EngineProcess(cluster.url, data, "--long-poll-timeout", "2", "--chunk-bytes", "4000")
    second.log = tmp_path / "second.log"
    writer = Writer(cluster.url)
    stop_writer = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            follower = Follower(first.url)
            stop = asyncio.Event()
            following = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, timeout=60, message="live")
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(lambda: writer.committed >= 20, timeout=60, message="writes")

            second.spawn()
            await asyncio.to_thread(
                wait_until,
                lambda: "in use" in second.log_tail(),
                timeout=60,
                message="the second engine says it waits",
            )
            # it waits: it serves nothing while the first one runs and appends
            await wait_until_async(lambda: writer.committed >= 60, timeout=60, message="writes")
            assert not _answers(second.url)
            assert second.proc is not None and second.proc.poll() is None
            stop.set()
            await following

            first.kill()
            await asyncio.to_thread(
                wait_until, second._healthy, timeout=60, interval=0.1, message="second healthy"
            )
            await wait_until_async(lambda: writer.committed >= 100, timeout=60, message="writes")
            stop_writer.set()
            await writing
            resumed = Follower(second.url)
            resumed.handle, resumed.offset, resumed.rows = (
                follower.handle,
                follower.offset,
                {**follower.rows},
            )
            fresh = Follower(second.url)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(f.run(session, stop)) for f in (resumed, fresh)]
            expected = expected_rows(cluster.url, None)
            await until_equal([resumed, fresh], [expected, expected], 60)
            stop.set()
            await asyncio.gather(*tasks)
        for f in (follower, resumed, fresh):
            f.assert_clean()
    finally:
        stop_writer.set()
        first.stop()
        second.stop()
