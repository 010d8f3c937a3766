"""A disk that fills up while a new shape's snapshot is being written: the client gets a
503 with a JSON body (never a 500, never part of a snapshot), the half-written chunks are
not left behind, and once space is back the same request gets the whole snapshot.

Mounting a small tmpfs needs root (CI runs as root); elsewhere the test is skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest

from sync_engine.log.files import LogWriteError, ShapeLog
from sync_engine.log.store import PackBuilder, ShapeStore
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, expected_rows
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


@asynccontextmanager
async def _full_disk(
    db_url: str, tmp_path: Path, *args: str
) -> AsyncIterator[tuple[EngineProcess, Path]]:
    """An engine (`args`) on a data directory of its own 8 MiB tmpfs, and a table `items`
    whose snapshot (~1.5 MB) the disk has no room for: filled to 256 KiB free by
    `mnt / "filler"` (deleted: space back). Yields the engine and the mount point."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    engine = EngineProcess(db_url, mnt, "--chunk-bytes", "65536", *args)
    engine.log = tmp_path / "engine.log"  # not on the disk that fills up
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text)")
            conn.execute(
                "INSERT INTO items SELECT g, 0, repeat('x', 200) FROM generate_series(1, 5000) g"
            )
        await asyncio.to_thread(engine.start)
        await asyncio.to_thread(_fill, mnt / "filler", 256 * 1024)
        yield engine, mnt
    finally:
        engine.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.timeout(120)
async def test_a_snapshot_that_fills_the_disk_is_a_503_then_whole(
    db_url: str, tmp_path: Path
) -> None:
    async with _full_disk(db_url, tmp_path, "--long-poll-timeout", "2") as (engine, mnt):
        filler = mnt / "filler"
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
            refusals: list[tuple[dict[str, str], bytes]] = []

            async def refused() -> bool:
                # (a new attempt may serve a first chunk before it fails: asked again)
                async with session.get(
                    engine.url + "/v1/shape",
                    params={"table": "items", "offset": "-1"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    body = await r.read()
                    if r.status == 503:
                        refusals.append((dict(r.headers), body))
                return bool(refusals)

            await wait_until_async(refused, timeout=60, message="a 503 for the full disk")
            headers, body = refusals[0]
            # A stable code and words, as the engine's other 503s: the snapshot that failed
            # (`snapshot.errors.to_engine_error`) and the ones refused after it
            # (`Source._check_snapshot_room`) say the same.
            assert orjson.loads(body) == {
                "code": "disk_full",
                "message": "Could not take the shape's snapshot: No space left on device"
                " (the engine's disk is full), please retry",
            }, body
            assert 1 <= int(headers["Retry-After"]) <= 5, headers
            assert headers["Cache-Control"] == "no-store", headers
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
        assert follower.rows == expected_rows(db_url, None, ("id", "v", "t"))
        assert follower.counts()["invalid_json"] == follower.counts()["bad_error_bodies"] == 0
        assert not [s for s in follower.statuses if s >= 500 and s != 503], follower.statuses


async def _first_sync(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    """A client's start at `-1`, followed until its up-to-date or another answer than a 200
    (a 409 is not followed): (status, Retry-After, body of the last answer)."""
    params = {"table": "items", "offset": "-1"}
    while True:
        async with session.get(
            url + "/v1/shape", params=params, timeout=aiohttp.ClientTimeout(total=60)
        ) as r:
            body = await r.read()
            if r.status != 200 or "electric-up-to-date" in r.headers:
                return r.status, r.headers.get("Retry-After", ""), body
            params.update(handle=r.headers["electric-handle"], offset=r.headers["electric-offset"])


@pytest.mark.timeout(180)
async def test_a_disk_that_stays_full_is_tried_less_and_less_often(
    db_url: str, tmp_path: Path
) -> None:
    """A snapshot the disk refused is not tried again for 5 s, then 10, 20, ... 60 s while
    each try is refused in turn (a snapshot query, its chunks written and deleted): before,
    every 5 s for as long as the disk stayed full. Meanwhile a client's every request is a
    503 `disk_full` whose Retry-After says how long the wait still is; never a part of a
    snapshot as whole. Space freed (`SPACE_BACK`), the next request syncs at once."""
    async with _full_disk(db_url, tmp_path, "--disk-reserve", "0") as (engine, mnt):
        filler = mnt / "filler"
        async with aiohttp.ClientSession() as session:
            waits = []
            for _ in range(3):  # three snapshots refused in a row
                while True:
                    status, retry_after, body = await _first_sync(session, engine.url)
                    assert status in (409, 503), (status, body)  # (never up to date)
                    if status == 503:
                        break
                assert orjson.loads(body)["code"] == "disk_full", body
                waits.append(int(retry_after))
                # the wait's every request: the 503, no snapshot tried
                status, again, body = await _first_sync(session, engine.url)
                assert status == 503 and orjson.loads(body)["code"] == "disk_full", body
                assert 1 <= int(again) <= int(retry_after), (again, retry_after)
                await asyncio.sleep(int(retry_after) + 0.5)
            assert len(waits) == 3 and all(
                m - 1 <= w <= m for w, m in zip(waits, (5, 10, 20), strict=True)
            ), waits
            tried = engine.log_tail(1_000_000).count("the disk refused a snapshot")
            assert tried == 3, tried
            filler.unlink()
            status, _, body = await _first_sync(session, engine.url)
            assert status in (200, 409), body  # (a 409: the last refused shape's successor)
            if status == 409:
                status, _, body = await _first_sync(session, engine.url)
            assert status == 200, body


async def test_a_retirement_the_full_disk_refused_is_written_once_space_is_back(
    tmp_path: Path,
) -> None:
    """Retiring a shape appends a record to its pack; on a full disk that append fails.
    It used to be dropped: the shape came back on the next load, stale (the slot had moved
    past what retired it). Now it is cut back whole, `settle` (which the replication loop
    awaits before confirming the slot) raises until it is written, and it is written once
    space is back."""
    mnt = tmp_path / "shapes"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        store = ShapeStore(mnt, 1 << 20, fsync=True)
        logs = _pack_ending_on_a_page(store, ("1-1", "1-2"))
        filler = mnt / "filler"
        await asyncio.to_thread(_fill, filler, 0)
        store.retire(logs[0])
        with pytest.raises(LogWriteError) as info:
            await store.settle()
        assert info.value.disk_full and store.unsettled
        filler.unlink()
        await store.settle()
        assert not store.unsettled
        assert [log.handle for log in store.load()] == ["1-2"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _pack_ending_on_a_page(store: ShapeStore, handles: tuple[str, ...]) -> list[ShapeLog]:
    """A pack of one small snapshot per handle, padded to end on a 4 KiB page boundary (an
    append then needs a new page: on a full disk, it fails)."""
    pad = 0
    while True:
        builder = PackBuilder()
        logs = [store.new_log(h) for h in handles]
        for i, log in enumerate(logs):
            chunk = b'{"key":"' + b"k" * (pad if i == 0 else 0) + b'"}'
            builder.add(log, 1, chunk, {"handle": log.handle})
        builder.write(fsync=True)
        (pack,) = store.directory.glob("*.pack")
        size = pack.stat().st_size
        if size % 4096 == 0:
            builder.publish()
            return logs
        pack.unlink()
        pad += 4096 - size % 4096  # (the marker's size field may grow a digit: again)
