"""The setup shared by the tests that damage a chunk after the engine checked it
(test_chunk_damage_after_check, test_silent_corruption): an ext2 filesystem of its own on
a loop device (nothing else reads that device), the engine's `items` shape taken, packed,
and the engine started again so that its chunks are read from their files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

#: The filesystem's block size (`mkfs.ext2 -b`).
BLOCK = 4096


def loop_usable() -> bool:
    """Root, and a free loop device."""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["losetup", "-f"], capture_output=True, check=False).returncode == 0
    except OSError:
        return False


@contextlib.contextmanager
def ext2_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(image, mount point): a 32 MiB ext2 filesystem in `tmp_path/disk.img` mounted on
    `tmp_path/data` (needs `loop_usable()`); unmounted at the end."""
    image, mnt = tmp_path / "disk.img", tmp_path / "data"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-b", str(BLOCK), "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield image, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def widen_items(cluster: FaultCluster) -> None:
    """`items` grown to 2,000 rows of ~220 bytes, every `v` 0: several 64 KiB chunks."""
    cluster.query("ALTER TABLE items ADD COLUMN t text NOT NULL DEFAULT repeat('x', 200)")
    cluster.query("INSERT INTO items SELECT g, 0 FROM generate_series(21, 2000) g")


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body); an error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def values(body: bytes) -> dict[str, Any]:
    """The rows of a shape answer by key."""
    return {m["key"]: m["value"] for m in orjson.loads(body) if "key" in m}


async def snapshot_then_restart(engine: EngineProcess, url: str) -> tuple[bytes, str]:
    """Start `engine`, take the shape at `url` (offset=-1), wait for it to be packed under
    the engine's data dir, start the engine again (its chunks no longer in memory): the
    first answer's (body, handle)."""
    await asyncio.to_thread(engine.start)
    status, headers, first = get(url)
    assert status == 200
    handle = headers["electric-handle"]
    await wait_until_async(
        lambda: any(handle.encode() in p.read_bytes() for p in engine.data_dir.rglob("*.pack")),
        message="the snapshot packed",
    )
    engine.stop()
    await asyncio.to_thread(engine.start)
    return first, handle


def served_unchanged(url: str, times: int, first: bytes, handle: str) -> None:
    """`times` requests for `url` answer `first`, under `handle`."""
    for _ in range(times):
        status, headers, body = get(url)
        assert (status, body) == (200, first)
        assert headers["electric-handle"] == handle


def damage_refused(url: str, handle: str) -> dict[str, Any]:
    """The request for the damaged chunk gets a 409, never the changed rows (every `v` was
    "0"); the client's refetch gets a new shape with the rows as Postgres has them: those
    rows."""
    status, _, body = get(url)
    changed = sorted(k for k, v in values(body).items() if v["v"] != "0")
    assert status == 409, f"the damaged chunk was sent: {changed}"
    status, headers, again = get(url)
    assert status == 200 and headers["electric-handle"] != handle
    rows = values(again)
    assert rows and {v["v"] for v in rows.values()} == {"0"}
    return rows
