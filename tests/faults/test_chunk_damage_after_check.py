"""A snapshot chunk file damaged in place after the engine checked and sent it: the next
request for it gets the 409 a damaged chunk gets (its shape retired, the refetch a new
snapshot with the rows as Postgres has them), never the damaged bytes.

The engine keeps a passed check of a chunk file while neither the file nor its disk can
have changed the bytes (`sync_engine/log/verdicts.py`): the file's identity (device, inode,
size, modification and change times) and its block device's count of reads. These cases
change the file through the filesystem, same size, one byte: with `os.pwrite` (the
modification time moves), then with the modification time put back by `os.utime` (only
the change time moves). Either must undo the kept check.

The data directory is a small ext2 filesystem on a loop device when the test runs as root
(nothing else reads that device, so the kept check stands until the damage: a kept check
keyed on less than the file's identity serves the damaged bytes); else a directory of the
test's temporary path (the same assertions; whether a check was kept there depends on what
else reads that disk meanwhile).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.chunk_disk import (
    damage_refused,
    ext2_disk,
    loop_usable,
    served_unchanged,
    snapshot_then_restart,
    widen_items,
)
from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess


@contextlib.contextmanager
def _data_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for the engine's data: on an ext2 filesystem of its own (a loop device)
    when possible, else under `tmp_path`."""
    if not loop_usable():
        (tmp_path / "data").mkdir()
        yield tmp_path / "data"
        return
    with ext2_disk(tmp_path) as (_, mnt):
        yield mnt


def _flip_in_place(chunk: Path, keep_times: bool) -> None:
    """Change `"v":"0"` (its first occurrence) to `"v":"7"` in the file, in place: same
    inode, same size, the JSON still valid; with `keep_times` its access and modification
    times are put back afterwards."""
    before = os.stat(chunk)
    at = chunk.read_bytes().index(b'"v":"0"') + len(b'"v":"')
    fd = os.open(chunk, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"7", at) == 1
    finally:
        os.close(fd)
    if keep_times:
        os.utime(chunk, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(chunk)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    if keep_times:
        assert after.st_mtime_ns == before.st_mtime_ns


@pytest.mark.timeout(180)
@pytest.mark.parametrize("keep_times", [False, True], ids=["pwrite", "pwrite-utime"])
async def test_a_chunk_written_in_place_after_its_check_is_a_409_not_its_bytes(
    cluster: FaultCluster, tmp_path: Path, keep_times: bool
) -> None:
    widen_items(cluster)
    with _data_dir(tmp_path) as data:
        engine = EngineProcess(
            cluster.url, data, "--long-poll-timeout", "2", "--chunk-bytes", "65536"
        )
        engine.log = tmp_path / "engine.log"
        url = engine.url + "/v1/shape?table=items&offset=-1"
        try:
            # Started again after the snapshot: the chunk is no longer in memory. The first
            # request reads and checks it, the second checks its file and sends it (the
            # check is kept), the third sends it on the kept check.
            first, handle = await snapshot_then_restart(engine, url)
            served_unchanged(url, 3, first, handle)
            chunk = next(data.rglob(f"{handle}.snapshot.00000.json"))

            _flip_in_place(chunk, keep_times)

            damage_refused(url, handle)
        finally:
            engine.stop()
