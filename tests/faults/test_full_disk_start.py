"""A fresh start on a disk with no space left at all: the engine starts and
serves what it has (a shape's log, to the real npm client), answers a clear 503 JSON for what
needs the disk (a new shape's snapshot, the registered sources whose registry SQLite cannot
open), and recovers by itself once space returns: the change made meanwhile arrives.

It used to exit at once ("cannot read the source registry ... disk I/O error"; past that
check, the registry's open failed the startup).

Mounting a small tmpfs needs root (CI runs as root); elsewhere the test is skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.cluster import FaultCluster
from tests.faults.test_damaged_files import NpmClient, _npm_view
from tests.faults.test_disk_full_snapshot import _fill
from tests.support.engine_process import EngineProcess
from tests.support.follower import expected_rows
from tests.support.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up (CI runs as root)"
)


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.mark.timeout(120)
async def test_a_start_on_a_full_disk_serves_what_it_has_then_recovers(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    engine = EngineProcess(cluster.url, mnt, "--long-poll-timeout", "2")
    engine.log = tmp_path / "engine.log"  # not on the disk that fills up
    filler = mnt / "filler"
    client = NpmClient(engine.url, "items")
    try:
        await asyncio.to_thread(engine.start)
        status, _ = _get(engine.url + "/v1/shape?table=items&offset=-1")
        assert status == 200
        # A clean stop: SQLite then removes the registry's WAL files, which it cannot make
        # again on a full disk (after a crash they are still there, and it opens)
        engine.stop()
        await asyncio.to_thread(_fill, filler, 0)
        cluster.query("INSERT INTO items VALUES (21, 0)")  # while the engine is down

        engine.spawn()

        def answers() -> bool:
            assert engine.proc is not None and engine.proc.poll() is None, engine.log_tail()
            try:
                return _get(engine.url + "/v1/health")[0] in (200, 503)
            except OSError:
                return False

        await asyncio.to_thread(wait_until, answers, timeout=60, message="engine answers")
        # what it has: the shape's log, to the real client
        await client.start()
        status, got = _get(engine.url + "/v1/shape?table=items&offset=-1")
        assert status == 200 and len(got) == 21, got  # 20 rows and the snapshot's end
        # what needs the disk: a clear 503 with a JSON body
        status, got = _get(engine.url + "/v1/shape?table=items&offset=-1&where=id%3E3")
        assert status == 503 and "No space left on device" in got["message"], got
        sid = "00000000-0000-4000-8000-000000000000"
        # registered sources: sources.db is read as it is (none registered: the single
        # database answers), or, where SQLite cannot read it at all, a 503 saying why
        status, got = _get(engine.url + f"/v1/shape?table=items&offset=-1&source_id={sid}")
        assert status == 200 or (status, got["code"]) == (503, "registry_unavailable"), got
        # (once the stream has tried to write the change made while it was down: it came
        # before this only while a refused snapshot took a query's time, not since the
        # engine refuses it at once, its disk below the reserve)
        health: list[Any] = []

        def paused() -> bool:
            health[:] = _get(engine.url + "/v1/health")
            return bool(health[0] == 503)

        await asyncio.to_thread(wait_until, paused, timeout=30, message="health 503")
        assert "full" in health[1]["message"], health

        filler.unlink()  # space returns: everything comes back by itself
        cluster.query("UPDATE items SET v = 1 WHERE id = 1")
        want = {
            k: {c: str(v) for c, v in r.items()}
            for k, r in expected_rows(cluster.url, None).items()
        }
        await wait_until_async(
            lambda: _npm_view(client.rows) == want, timeout=60, message="npm client as SELECT"
        )
        await asyncio.to_thread(
            wait_until, lambda: _get(engine.url + "/v1/health")[0] == 200, timeout=30
        )
        status, got = _get(engine.url + "/v1/shape?table=items&offset=-1&where=id%3E3")
        assert status == 200, got
        status, got = _get(engine.url + f"/v1/shape?table=items&offset=-1&source_id={sid}")
        assert status != 503, got  # (no such source: the registry's own answer)
    finally:
        await client.stop()
        engine.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
