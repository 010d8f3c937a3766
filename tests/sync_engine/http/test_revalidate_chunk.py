"""A client revalidating a snapshot chunk it has (If-None-Match with the chunk's ETag) gets its
304 without the engine opening, reading or checking the chunk: no byte of it is sent. The
engine used to fetch the chunk first (open it and crc32 up to 10 MiB in a worker thread, or
read a last chunk from its pack into memory) and only then compare the ETag, which depends
on the handle and the offsets alone. The 304's head is the one it was."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sync_engine.app import SOURCES, build_app
from sync_engine.log.files import ShapeLog
from tests.sync_engine.engine_harness import SETTINGS, Engine

CHUNK = 256 * 1024


async def test_a_304_for_a_snapshot_chunk_does_not_read_nor_check_it(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data", chunk_bytes=CHUNK)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    engine.sql("CREATE TABLE reval (id bigint PRIMARY KEY, v text, pad text)")
    engine.sql("INSERT INTO reval SELECT g, '0', repeat('x', 200) FROM generate_series(1, 3000) g")
    rows, handle, _ = await engine.sync(table="reval")
    assert len(rows) == 3000
    shape_log: ShapeLog = engine.source.registry.by_handle[handle].log
    assert shape_log.snapshot_chunks >= 3
    touched: list[tuple[str, int]] = []
    real_check, real_read = ShapeLog.check_snapshot_file, ShapeLog.read_snapshot_chunk

    def check(self: ShapeLog, index: int, fd: int) -> None:
        touched.append(("check", index))
        real_check(self, index, fd)

    def read(self: ShapeLog, index: int) -> bytes:
        touched.append(("read", index))
        return real_read(self, index)

    # (as after a restart: not in memory, the chunks are read from their files and pack)
    monkeypatch.setattr(ShapeLog, "fresh_snapshot_chunk", lambda self, index: None)
    monkeypatch.setattr(ShapeLog, "check_snapshot_file", check)
    monkeypatch.setattr(ShapeLog, "read_snapshot_chunk", read)
    ignore = {"date", "x-request-id", "content-length", "content-type"}
    last = shape_log.snapshot_chunks - 1
    for index in (1, last):  # a chunk file, and the last chunk (its pack)
        params = {"table": "reval", "offset": f"0_{index - 1}", "handle": handle}
        resp = await client.get("/v1/shape", params=params)
        assert resp.status == 200
        await resp.read()
        assert touched, "the 200 neither read nor checked the chunk"
        got = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in ignore}
        etag = resp.headers["etag"]
        touched.clear()
        for method in ("GET", "HEAD"):
            again = await client.request(
                method, "/v1/shape", params=params, headers={"If-None-Match": etag}
            )
            assert again.status == 304
            assert await again.read() == b""
            hdrs = {k.lower(): v for k, v in again.headers.items() if k.lower() not in ignore}
            assert hdrs == got
        assert touched == [], f"the 304 of chunk {index} touched it: {touched}"
