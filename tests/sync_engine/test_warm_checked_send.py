"""A big snapshot chunk file (>= 1 MiB) that passed a check is sent by reading, checking and
writing the same bytes (`sync_engine/http/sendfile.py`, `_checked_send`), with no check of
its own before the send. Damaged below its filesystem after that (a bad disk: its bytes
change, its inode, size and times do not), it must never reach a client as a complete
answer: the send finds the damage, cuts the body before its end and retires the shape, so
the request gets a broken response or a 409, the next one a 409, and the refetch the rows
as Postgres has them.

The data directory is a small ext2 filesystem on a loop device (needs root; skipped
otherwise): the test writes into the image at the chunk's block and drops the chunk's
cached pages, as a disk that returns other bytes would (`tests/faults/chunk_disk.py`).
"""

from __future__ import annotations

import fcntl
import http.client
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_engine.log.files import SEND_CHECKED_BYTES
from tests.faults.chunk_disk import (
    BLOCK,
    ext2_disk,
    get,
    loop_usable,
    served_unchanged,
    snapshot_then_restart,
    values,
    widen_items,
)
from tests.faults.cluster import FaultCluster
from tests.faults.test_silent_corruption import FIBMAP, _damage_keeping_identity
from tests.support.engine_process import EngineProcess
from tests.sync_engine.tenants.harness import PGBIN

pytestmark = pytest.mark.skipif(not loop_usable(), reason="needs root and a free loop device")


@pytest.fixture
def cluster() -> Iterator[FaultCluster]:
    """A private cluster with `items (id, v)`: 20 rows, every `v` 0."""
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    made = FaultCluster()
    try:
        made.start_with_items()
        yield made
    finally:
        made.stop()


@pytest.mark.timeout(180)
async def test_a_big_chunk_damaged_after_its_check_is_never_a_complete_answer(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    # ~4.4 MB of rows: two 2 MiB chunk files, the last chunk kept in a pack
    cluster.query("ALTER TABLE items ADD COLUMN t text NOT NULL DEFAULT repeat('x', 200)")
    cluster.query("INSERT INTO items SELECT g, 0 FROM generate_series(21, 20000) g")
    with ext2_disk(tmp_path) as (image, mnt):
        args = ("--long-poll-timeout", "2", "--chunk-bytes", str(2 << 20))
        engine = EngineProcess(cluster.url, mnt, *args)
        engine.log = tmp_path / "engine.log"
        url = engine.url + "/v1/shape?table=items&offset=-1"
        try:
            # Started again: the first request for the second chunk (2 MiB; the first is at
            # most 1 MiB) reads and checks its file, the next ones send it checking the
            # bytes they send (no check before the send).
            await snapshot_then_restart(engine, url)
            status, headers, _ = get(url)
            assert status == 200
            handle = headers["electric-handle"]
            second = f"{url}&handle={handle}".replace(
                "offset=-1", f"offset={headers['electric-offset']}"
            )
            status, _, body = get(second)
            assert status == 200
            assert len(values(body)) > 3000 and {v["v"] for v in values(body).values()} == {"0"}
            chunk = next(mnt.rglob(f"{handle}.snapshot.00001.json"))
            assert chunk.stat().st_size >= SEND_CHECKED_BYTES
            served_unchanged(second, 3, body, handle)

            _damage_keeping_identity(image, chunk)

            try:
                status, _, answer = get(second)
            except (http.client.IncompleteRead, ConnectionError):
                pass  # cut before its end: no complete answer
            else:
                changed = sorted(k for k, v in values(answer).items() if v["v"] != "0")
                assert status == 409, f"the damaged chunk was sent whole: {changed}"
            assert get(second)[0] == 409
            # the refetch: a new shape, its second chunk the rows as Postgres has them
            status, headers, _ = get(url)
            assert status == 200 and headers["electric-handle"] != handle
            again = f"{url}&handle={headers['electric-handle']}".replace(
                "offset=-1", f"offset={headers['electric-offset']}"
            )
            status, _, refetched = get(again)
            assert status == 200 and {v["v"] for v in values(refetched).values()} == {"0"}
            assert values(refetched).keys() == values(body).keys()
        finally:
            engine.stop()


def _damage_and_evict(image: Path, chunk: Path) -> None:
    """Change the first `"v":"0"` of `chunk` to `"v":"7"` below its filesystem (in the
    image, at the chunk's block) and drop its cached pages, without reading it back: the
    next read of it, by anyone, is a read from the disk (what memory pressure does to a
    chunk nobody asked for a while). Its inode, size and times stay as they were."""
    data = chunk.read_bytes()
    at = data.index(b'"v":"0"')
    fd = os.open(chunk, os.O_RDONLY)
    try:
        (block,) = struct.unpack("i", fcntl.ioctl(fd, FIBMAP, struct.pack("i", at // BLOCK)))
        with open(image, "r+b") as f:
            f.seek(block * BLOCK + at % BLOCK)
            assert f.read(7) == b'"v":"0"'
            f.seek(block * BLOCK + at % BLOCK)
            f.write(b'"v":"7"')
            f.flush()
            os.fsync(f.fileno())
        os.sync()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.timeout(180)
async def test_a_small_chunk_damaged_and_evicted_after_its_kept_check_is_never_sent_whole(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """A small chunk whose passed check is kept (`verdicts`: nothing read from the device
    since) is not checked before its send; damaged below the filesystem and its pages
    dropped, the send reads it from the disk itself. It was sent whole once (200, valid
    JSON, the changed value: chaos 10:57); now the send checks what it sends."""
    widen_items(cluster)
    with ext2_disk(tmp_path) as (image, mnt):
        args = ("--long-poll-timeout", "2", "--chunk-bytes", "8192")
        engine = EngineProcess(cluster.url, mnt, *args)
        engine.log = tmp_path / "engine.log"
        url = engine.url + "/v1/shape?table=items&offset=-1"
        try:
            await snapshot_then_restart(engine, url)
            status, headers, _ = get(url)
            assert status == 200
            handle = headers["electric-handle"]
            second = f"{url}&handle={handle}".replace(
                "offset=-1", f"offset={headers['electric-offset']}"
            )
            status, _, body = get(second)
            assert status == 200 and {v["v"] for v in values(body).values()} == {"0"}
            served_unchanged(second, 3, body, handle)  # checked, then on the kept check
            chunk = next(mnt.rglob(f"{handle}.snapshot.00001.json"))

            _damage_and_evict(image, chunk)

            try:
                status, _, answer = get(second)
            except (http.client.IncompleteRead, ConnectionError):
                pass  # cut before its end: no complete answer
            else:
                changed = sorted(k for k, v in values(answer).items() if v["v"] != "0")
                assert status == 409, f"the damaged chunk was sent whole: {changed}"
            assert get(second)[0] == 409
        finally:
            engine.stop()
