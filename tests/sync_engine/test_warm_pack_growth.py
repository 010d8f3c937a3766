"""A pack region whose check before the send was skipped (a kept verdict stands) checks the
bytes it sends even when the pack grew between the two looks at it (review 11:52: the check
before the send looked at the pack as it was, the send at it grown by another shape's record;
`send_check` asked for the file "as it is now", found none, and the region went out by
`sendfile` with neither check, since a grown pack is no change to a region before its end).

Real shape logs and pack files; the pack grows by a record appended the way the engine
appends one (`packs.append_record`), between the check and the send."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync_engine.log import files, packs, verdicts
from sync_engine.log.store import PackBuilder, ShapeStore
from tests.sync_engine.engine_harness import Engine


def test_a_grown_pack_s_region_whose_check_was_skipped_is_checked_while_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        verdicts, "stamp", lambda dev: (1, 1)
    )  # (a quiet disk: kept verdicts stand)
    store = ShapeStore(tmp_path / "shapes", 1 << 20, fsync=False)
    (tmp_path / "shapes").mkdir()
    pack = PackBuilder()
    chunks = {h: b'{"key":"%s","value":{}}' % h.encode() * 30 for h in ("a", "b")}
    for handle, chunk in chunks.items():
        pack.add(store.new_log(handle), 1, chunk, {"handle": handle})
    pack.write(fsync=False)
    pack.publish()
    logs = {log.handle: log for log in store.load()}
    log = logs["a"]
    log.read_snapshot_chunk(0)  # (read and checked: sent from its pack from then on)
    file = log.snapshot_chunk_file(0)
    assert file is not None
    path, offset, size = file
    assert offset and size == len(chunks["a"])
    fd = os.open(path, os.O_RDONLY)
    try:
        log.check_snapshot_file(0, fd)  # (passed: its verdict kept)
        before = os.fstat(fd)
        assert log.snapshot_check_kept(0, before)  # (no check before the send: what is tested)
        packs.append_record(path, packs.encode_log_begun("b", 42))  # (the pack grows meanwhile)
        now = os.fstat(fd)
        assert now.st_size > before.st_size
        armed = log.send_check(now, offset, size)
        assert armed is not None, "the region skips both checks"
        assert armed[0] == 0
    finally:
        os.close(fd)


async def test_a_pack_region_damaged_as_its_pack_grows_is_never_sent_whole(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the engine: a small shape's only chunk, kept in a pack, is asked for again (its
    check before the send skipped: every verdict is made to stand). Between that and the
    send, a byte of its region is damaged and the pack grows. The body is cut before its
    end and the shape retired; never a complete 200 with the damaged byte."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, t text NOT NULL)")
    engine.sql("INSERT INTO items SELECT g, repeat('x', 20) FROM generate_series(1, 50) g")
    monkeypatch.setattr(files, "_fresh", files._RecentChunks(0))  # (served from its file)
    monkeypatch.setattr(verdicts, "holds", lambda *args: True)
    status, headers, first = await engine.get(table="items", offset=-1)
    assert status == 200 and sum("key" in m for m in first) == 50
    handle = headers["electric-handle"]
    (pack_path,) = engine.data_dir.rglob("*.pack")
    sent: list[int] = []
    real = files.ShapeLog.send_check

    def damaged_and_grown(self: files.ShapeLog, st: os.stat_result, at: int, size: int) -> Any:
        if not sent:
            with open(pack_path, "r+b") as f:  # (a byte of the region: a key's character)
                f.seek(at + 10)
                was = f.read(1)
                f.seek(at + 10)
                f.write(bytes([was[0] ^ 0x01]))
            packs.append_record(str(pack_path), packs.encode_log_begun("other", 42))
        sent.append(at)
        return real(self, os.stat(pack_path), at, size)  # (the pack as the send sees it)

    monkeypatch.setattr(files.ShapeLog, "send_check", damaged_and_grown)
    path = f"/v1/shape?table=items&offset=-1&handle={handle}"
    try:
        again = await engine.client.get(path)
        body = await again.read()
    except aiohttp.ClientPayloadError:
        pass  # (cut before its end: no complete answer)
    else:
        assert again.status == 409, f"the damaged region was sent whole ({len(body)} bytes)"
    assert sent, "the chunk was not sent from its pack: nothing tested"
    # its shape retired: the old handle is refused, or (offset -1) the table's rows come
    # again under a new one, read afresh
    after = await engine.client.get(path)
    assert after.status == 409 or after.headers["electric-handle"] != handle
    if after.status == 200:
        assert [m for m in await after.json() if "key" in m] == [m for m in first if "key" in m]
