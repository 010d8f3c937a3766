"""`ShapeLog.snapshot_bytes` (summed into `sync_engine_shape_log_bytes` for every shape at
each scrape) is the bytes of the snapshot chunks written, as written and as loaded again
after a restart, kept as chunks are written rather than summed at each read."""

from __future__ import annotations

from pathlib import Path

from sync_engine.log.store import PackBuilder, ShapeStore


def test_snapshot_bytes_as_written_and_as_loaded(tmp_path: Path) -> None:
    store = ShapeStore(tmp_path / "shapes", 1 << 20, fsync=False)
    (tmp_path / "shapes").mkdir()
    log = store.new_log("h")
    assert log.snapshot_bytes == 0
    first, second, last = b"x" * 1000, b"y" * 500, b"[]"
    log.write_snapshot_chunk(0, first)
    log.write_snapshot_chunk(1, second)
    assert log.snapshot_bytes == 1000 + 500
    pack = PackBuilder()
    pack.add(log, 3, last, {"handle": "h"})
    pack.write(fsync=False)
    assert pack.publish() == [log]
    assert log.snapshot_bytes == 1000 + 500 + 2
    (again,) = store.load()
    assert again.snapshot_bytes == 1000 + 500 + 2
