"""A snapshot chunk damaged below the filesystem (a bad disk: its bytes change, its inode,
size and times do not) after the engine checked it once: the next request for it gets a 409
(the shape is retired and taken again), never the damaged rows.

The engine used to check a chunk file once per process, then send it as it was for as long
as its (inode, size, times) stayed the same: the damaged bytes went to every client, a
changed value as valid JSON. Now every send is checked (`ShapeLog.check_snapshot_file`).

The data directory is a small ext2 filesystem on a loop device: the test writes into the
image file at the chunk's block (FIBMAP) and drops the chunk's cached pages, as a disk that
returns other bytes would. Needs root and a loop device (skipped otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
from pathlib import Path

import pytest

from tests.faults.chunk_disk import (
    BLOCK,
    damage_refused,
    ext2_disk,
    loop_usable,
    served_unchanged,
    snapshot_then_restart,
    values,
    widen_items,
)
from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess

FIBMAP = 1

pytestmark = pytest.mark.skipif(not loop_usable(), reason="needs root and a free loop device")


def _damage_below_the_filesystem(image: Path, chunk: Path, old: bytes, new: bytes) -> None:
    """Replace `old` (its first occurrence in the file `chunk`) by `new`, same length, in
    the filesystem's image, then drop the file's cached pages: the next read of the file
    gets the new bytes, while its inode, size and times stay as they were."""
    data = chunk.read_bytes()
    at = data.index(old)
    fd = os.open(chunk, os.O_RDONLY)
    try:
        (physical,) = struct.unpack("i", fcntl.ioctl(fd, FIBMAP, struct.pack("i", at // BLOCK)))
        assert physical > 0, "no block mapped"
        with open(image, "r+b") as f:
            f.seek(physical * BLOCK + at % BLOCK)
            assert f.read(len(old)) == old  # the right place
            f.seek(physical * BLOCK + at % BLOCK)
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        # The file's cached pages are dropped only when none is dirty, being written back or
        # still held (a loaded machine, pages just sent): sync and drop again for up to 2 s,
        # then drop the whole clean page cache (root; seen to take ~10 s on this VM) and read.
        damaged = data.replace(old, new, 1)
        started = time.monotonic()
        dropped_all = False
        while True:
            os.sync()
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if chunk.read_bytes() == damaged or time.monotonic() - started > 30:
                break
            if not dropped_all and time.monotonic() - started > 2:
                dropped_all = True
                with contextlib.suppress(OSError):
                    Path("/proc/sys/vm/drop_caches").write_text("1")
                continue
            time.sleep(0.05)  # (polling the page cache: no event says when it let go)
    finally:
        os.close(fd)
    assert chunk.read_bytes() == damaged, "the damage is not seen"


def _damage_keeping_identity(image: Path, path: Path) -> None:
    """`_damage_below_the_filesystem` of the first `"v":"0"` in `path` to `"v":"7"`; its
    inode, size and times stay as they were."""
    before = os.stat(path)
    _damage_below_the_filesystem(image, path, b'"v":"0"', b'"v":"7"')
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns
    )  # fmt: skip


@pytest.mark.timeout(120)
async def test_a_chunk_damaged_under_its_file_times_is_a_409_not_its_rows(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    widen_items(cluster)
    with ext2_disk(tmp_path) as (image, mnt):
        args = ("--long-poll-timeout", "2", "--chunk-bytes", "65536")
        engine = EngineProcess(cluster.url, mnt, *args)
        engine.log = tmp_path / "engine.log"
        url = engine.url + "/v1/shape?table=items&offset=-1"
        try:
            # started again: the chunk is no longer in memory, its file is read and checked
            first, handle = await snapshot_then_restart(engine, url)
            served_unchanged(url, 2, first, handle)  # checked, then sent as its file
            chunk = next(mnt.rglob(f"{handle}.snapshot.00000.json"))
            _damage_keeping_identity(image, chunk)

            damage_refused(url, handle)
        finally:
            engine.stop()


@pytest.mark.timeout(120)
async def test_a_last_chunk_damaged_in_its_pack_is_a_409_not_its_rows(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """The same damage, to a small snapshot's only chunk, kept in its pack (`packs.py`):
    the engine sends it from the pack's region as it sends a chunk file (checked, then
    `os.sendfile` at its offset), and the check must cover that region: a 409, never the
    changed row."""
    with ext2_disk(tmp_path) as (image, mnt):
        engine = EngineProcess(cluster.url, mnt, "--long-poll-timeout", "2")
        engine.log = tmp_path / "engine.log"
        url = engine.url + "/v1/shape?table=items&offset=-1"
        try:
            # started again: the chunk is no longer in memory, read and checked once, then
            # sent from its pack's region
            first, handle = await snapshot_then_restart(engine, url)
            assert len(values(first)) == 20
            (pack,) = [p for p in mnt.rglob("*.pack") if handle.encode() in p.read_bytes()]
            assert first[1:-1] in pack.read_bytes(), "the chunk is not kept in the pack"
            assert not list(mnt.rglob("*.snapshot.*.json")), "the chunk has a file of its own"
            served_unchanged(url, 2, first, handle)
            _damage_keeping_identity(image, pack)

            assert len(damage_refused(url, handle)) == 20
        finally:
            engine.stop()
