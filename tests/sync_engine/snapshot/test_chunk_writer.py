"""A snapshot's chunks are written two at a time (`batch._ChunkWriter`), but announced in
order: a chunk is readable only once it and every chunk before it are written, and none
after a write that failed (a client must never be told of chunks past a gap)."""

from __future__ import annotations

import errno
import threading
from typing import Any

from sync_engine.snapshot.batch import WRITES_IN_FLIGHT, SnapshotJob, _ChunkWriter
from tests.support.waiting import wait_until_async


class _Log:
    """Chunk files as a list; chunk 0's write waits for `release` or fails."""

    def __init__(self, fail_first: bool = False) -> None:
        self.release = threading.Event()
        self.fail_first = fail_first
        self.written: list[int] = []

    def write_snapshot_chunk(self, index: int, data: bytes) -> None:
        if index == 0:
            self.release.wait(10)
            if self.fail_first:
                raise OSError(errno.ENOSPC, "No space left on device")
        self.written.append(index)

    def remember_snapshot_chunk(self, index: int, data: bytes) -> None:
        pass


def _job(log: _Log, announced: list[int]) -> SnapshotJob:
    fake: Any = log
    return SnapshotJob(
        log=fake,
        query=None,
        on_snapshot=lambda _: None,
        on_chunk=lambda count, _complete: announced.append(count),
        cancelled=lambda: False,
        record={},
    )


async def test_a_chunk_written_before_the_one_ahead_of_it_waits_to_be_announced() -> None:
    assert WRITES_IN_FLIGHT >= 2
    log, announced = _Log(), list[int]()
    writer = _ChunkWriter(_job(log, announced), fsync=True)  # (fsync: written in threads)
    await writer.put(b"chunk 0")
    await writer.put(b"chunk 1")
    await wait_until_async(lambda: log.written == [1], message="chunk 1 written first")
    assert announced == []  # chunk 0 is not written yet: neither is readable
    log.release.set()
    await writer.drain()
    assert log.written == [1, 0] and announced == [1, 2]


async def test_nothing_after_a_failed_write_is_announced() -> None:
    log, announced = _Log(fail_first=True), list[int]()
    job = _job(log, announced)
    writer = _ChunkWriter(job, fsync=True)
    await writer.put(b"chunk 0")
    await writer.put(b"chunk 1")
    await wait_until_async(lambda: log.written == [1], message="chunk 1 written")
    log.release.set()
    await writer.drain()
    assert isinstance(job.error, OSError) and announced == []
