"""A disk that fills up while a new shape's snapshot is being written: the client gets a
503 with a JSON body (never a 500, never part of a snapshot), the half-written chunks are
not left behind, and once space is back the same request gets the whole snapshot.

Mounting a small tmpfs needs root (CI runs as root); elsewhere the test is skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest

from tests.faults.follower import Follower, expected_rows
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up (CI runs as root)"
)


def _fill(path: Path, leave: int) -> None:
    """Fill the filesystem of `path` until fewer than `leave` bytes are free."""
    stat = os.statvfs(path.parent)
    free = stat.f_bavail * stat.f_frsize
    with open(path, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


@pytest.mark.timeout(120)
async def test_a_snapshot_that_fills_the_disk_is_a_503_then_whole(
    db_url: str, tmp_path: Path
) -> None:
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    engine = EngineProcess(db_url, mnt, "--long-poll-timeout", "2", "--chunk-bytes", "65536")
    engine.log = tmp_path / "engine.log"  # not on the disk that fills up
    filler = mnt / "filler"
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text)")
            conn.execute(
                "INSERT INTO items SELECT g, 0, repeat('x', 200) FROM generate_series(1, 5000) g"
            )
        await asyncio.to_thread(engine.start)
        await asyncio.to_thread(_fill, filler, 256 * 1024)  # the snapshot needs about 1.5 MB
        async with aiohttp.ClientSession() as session:
            follower = Follower(engine.url)
            stop = asyncio.Event()
            task = asyncio.create_task(follower.run(session, stop))
            # Its first chunks may be served as they are written (then the shape is retired:
            # a 409), but the snapshot cannot finish: 503s, the client retrying.
            await wait_until_async(
                lambda: follower.statuses[503] >= 2, timeout=60, message="503s while full"
            )
            assert not follower.live
            async with session.get(
                engine.url + "/v1/shape",
                params={"table": "items", "offset": "-1"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as r:
                body = await r.read()
                if r.status == 503:
                    assert "retry-after" in r.headers
                    assert isinstance(orjson.loads(body)["message"], str)
            filler.unlink()
            await wait_until_async(lambda: follower.live, timeout=60, message="synced")
            stop.set()
            await task
        # What the failed attempts wrote is gone: only the live shape's files are left.
        shapes = mnt / "sources" / "default" / "shapes"

        def leftovers() -> list[str]:
            return [
                p.name
                for p in shapes.iterdir()
                if not p.name.endswith(".pack") and not p.name.startswith(f"{follower.handle}.")
            ]

        await wait_until_async(lambda: not leftovers(), timeout=30, message="no leftovers")
        assert follower.rows == {
            k: {**v, "t": "x" * 200} for k, v in expected_rows(db_url, None).items()
        }
        assert follower.counts()["invalid_json"] == follower.counts()["bad_error_bodies"] == 0
        assert not [s for s in follower.statuses if s >= 500 and s != 503], follower.statuses
    finally:
        engine.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
