"""Snapshot chunk files being written count against the disk reserve (`batch._write`).

Each chunk file was checked against the disk's free space as it came, without the files
other snapshots were writing at that moment: a burst of multi-chunk snapshots went below
the reserve by about a chunk per snapshot being written (LOW). A fake disk here (its free
space drops once a write is done, as a real one's does), for a write that takes a while;
the real path is tests/faults/test_disk_reserve.py's burst of multi-chunk snapshots.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from sync_engine.snapshot.batch import SnapshotJob, _write

CHUNK = 1 << 20
RESERVE = 1 << 20


class _Disk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.lowest = free
        self._lock = threading.Lock()

    def room(self, size: int) -> bool:  # (as `Source.snapshot_room`)
        return self.free - size >= RESERVE


class _Log:
    def __init__(self, disk: _Disk) -> None:
        self.disk = disk

    def write_snapshot_chunk(self, index: int, data: bytes) -> None:
        time.sleep(0.05)  # (a big file, an fsync)
        with self.disk._lock:
            self.disk.free -= len(data)
            self.disk.lowest = min(self.disk.lowest, self.disk.free)

    def remember_snapshot_chunk(self, index: int, data: bytes) -> None:
        pass


def _job(disk: _Disk) -> SnapshotJob:
    log: Any = _Log(disk)
    return SnapshotJob(
        log=log, query=None, on_snapshot=lambda s: None, on_chunk=lambda n, c: None,
        cancelled=lambda: False, record={}, room=disk.room,
    )  # fmt: skip


async def test_chunks_written_at_once_leave_the_reserve() -> None:
    disk = _Disk(RESERVE + 3 * CHUNK)  # room for 3 chunks
    jobs = [_job(disk) for _ in range(6)]
    await asyncio.gather(*(_write(job, 0, b"x" * CHUNK, True) for job in jobs))
    assert disk.lowest >= RESERVE, (disk.lowest, RESERVE)
    written = [job for job in jobs if job.error is None]
    assert len(written) == 3  # the rest refused as a full disk's
    assert all(isinstance(job.error, OSError) for job in jobs if job not in written)
