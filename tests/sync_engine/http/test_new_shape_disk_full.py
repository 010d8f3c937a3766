"""A new shape whose snapshot does not fit on the disk is a 503 to wait on, not a 409 loop.

With room for a snapshot's first chunk but not for the rest (preflight's 64 KB probe
passes), the engine answered the client's `-1` with chunk 0, the snapshot then failed
(ENOSPC) and its shape was rotated, and the client's next request made another shape: a
409 must-refetch every ~50 ms, a snapshot query each. Client 1.5.28 takes five requests at
one offset within 500 ms for a loop of its own and resets without a must-refetch, so the
rows it held came again as inserts (chaos: seed 3102, t_fullnew.py, 2 runs in 3). The
disk is made full for the snapshot's chunk files only (the `write_snapshot_chunk` the
snapshot batch calls), the rest of the path is the engine's own over HTTP.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine import source as source_module
from sync_engine.app import SOURCES, build_app
from sync_engine.log.files import ShapeLog
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    # (no reserve: the free space the test shows the engine is made up, `_free_bytes`)
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        chunk_bytes=64 << 10,
        disk_reserve=0,
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_a_snapshot_that_does_not_fit_is_waited_on_not_chased(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.sql("CREATE TABLE t (id int PRIMARY KEY, g int, v text)")
    engine.sql(
        "INSERT INTO t SELECT i, i % 7, repeat(md5(i::text), 6) FROM generate_series(1, 2000) i"
    )
    full = [True]
    written = ShapeLog.write_snapshot_chunk

    def write_chunk(log: ShapeLog, index: int, data: bytes) -> None:
        if full[0] and index >= 1:  # (chunk 0 fits, the rest does not)
            raise OSError(errno.ENOSPC, "No space left on device")
        written(log, index, data)

    free = [500 << 10]  # (what the file system says is free)
    monkeypatch.setattr(ShapeLog, "write_snapshot_chunk", write_chunk)
    monkeypatch.setattr(source_module, "_free_bytes", lambda path: free[0])
    monkeypatch.setattr(source_module, "DISK_FULL_WAIT", 1.0)
    source = engine.source
    where = {"table": "t", "where": "g % 2 <> 0"}

    async def first_chunk() -> str:
        """A client's `-1`: chunk 0 (200), then its snapshot fails; the handle."""
        status, h, body = await engine.get(offset="-1", **where)
        assert status == 200, body
        handle = h["electric-handle"]
        await wait_until_async(lambda: source.shape(handle) is None, message="snapshot failed")
        return handle

    handle = await first_chunk()
    # The client's next requests, at once and again: told to wait, no new shape made.
    for _ in range(3):
        status, h, body = await engine.get(offset="0_0", handle=handle, **where)
        assert status == 503, (status, body)  # (was 409 with a new shape's handle)
        assert 1 <= int(h["retry-after"]) <= 5
        assert body["code"] == "disk_full", body  # (stable, as the engine's other 503s)
        assert "No space left on device" in body["message"], body
        assert len(source.registry) == 0, "a new shape was made while the disk is full"

    # No space back: after `DISK_FULL_WAIT` a new snapshot is tried (one 409 per wait).
    async def refetched() -> bool:
        status, h, _ = await engine.get(offset="0_0", handle=handle, **where)
        assert status in (409, 503), status
        return status == 409

    await wait_until_async(refetched, message="409 after the wait", timeout=10, interval=0.2)
    handle = await first_chunk()  # (it does not fit either)
    status, _, _ = await engine.get(offset="0_0", handle=handle, **where)
    assert status == 503

    # Space freed (a file deleted): the client is sent to a new shape at once, ends exact.
    full[0] = False
    free[0] += 8 << 20
    status, h, _ = await engine.get(offset="0_0", handle=handle, **where)
    assert status == 409 and h["electric-handle"] != handle
    got, _, _ = await engine.sync(**where)
    want = {str(r[0]) for r in engine.sql("SELECT id FROM t WHERE g % 2 <> 0")}
    assert {str(row["id"]) for row in got.values()} == want
