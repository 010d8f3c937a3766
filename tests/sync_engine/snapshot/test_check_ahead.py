"""The next snapshot chunk's file is checked while this one is sent (`http/check_ahead.py`):
the request for it uses that check, but never for a file changed since the check began.

The damage here goes through the filesystem with the file's modification time put back,
once after the check-ahead passed and once while it ran (after it read the file): the
client gets a 409, never the changed rows. (Damage below the filesystem, which changes no
time, is `tests/faults/test_silent_corruption.py`'s.)
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from sync_engine.app import SOURCES, build_app
from sync_engine.http import check_ahead
from sync_engine.log.files import ShapeLog
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

CHUNK = 1536 * 1024  # above check_ahead.MIN_BYTES


def _path(shape_log: ShapeLog, index: int) -> str:
    file = shape_log.snapshot_chunk_file(index)
    assert file is not None, f"chunk {index} is no file"
    return file[0]


def _damage_keeping_mtime(path: str, old: bytes, new: bytes) -> None:
    """Replace the first `old` in the file by `new` (same length) in place, then put the
    file's access and modification times back (its change time moves: only the kernel
    sets it)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(data.index(old))
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


async def test_a_chunk_changed_after_or_while_checked_ahead_is_a_409_not_its_rows(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data", chunk_bytes=CHUNK)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    for table in ("after", "while"):
        engine.sql(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v text, pad text)")
        engine.sql(
            f"INSERT INTO {table} SELECT g, '0', repeat('x', 200) FROM generate_series(1, 20000) g"
        )
    monkeypatch.setattr(check_ahead, "KEEP_FOR", 60.0)  # only a change may make it check again
    # A check kept while the file and its disk are unchanged (`log/verdicts.py`) spares the
    # check-ahead (and the request) its worker thread: this test counts the checks made.
    monkeypatch.setattr(ShapeLog, "snapshot_check_kept", lambda self, index, st: False)
    original = ShapeLog.check_snapshot_file
    checks: list[tuple[str, int]] = []
    damage_when_checked: dict[str, str] = {}  # handle -> the path to change once checked

    def checking(self: ShapeLog, index: int, fd: int) -> None:
        checks.append((self.handle, index))
        original(self, index, fd)
        if (path := damage_when_checked.pop(self.handle, None)) is not None:
            _damage_keeping_mtime(path, b'"v":"0"', b'"v":"7"')  # after it read the file

    monkeypatch.setattr(ShapeLog, "check_snapshot_file", checking)

    async def chunk(table: str, handle: str, index: int) -> tuple[int, Any]:
        offset = "-1" if index == 0 else f"0_{index - 1}"
        status, _, body = await engine.get(table=table, offset=offset, handle=handle)
        return status, body

    def kept(shape_log: ShapeLog, index: int) -> bool:
        st = os.stat(_path(shape_log, index))
        return (st.st_dev, st.st_ino) in check_ahead._kept

    def sent_changed(body: Any) -> list[str]:
        return [m["key"] for m in body if isinstance(m, dict) and m.get("value", {}).get("v") == "7"]  # fmt: skip

    # Unchanged: chunk 1's check-ahead passed while chunk 0 (small: from memory) was sent,
    # and the request for chunk 1 uses it.
    rows, handle, _ = await engine.sync(table="after")
    shape_log: ShapeLog = engine.source.registry.by_handle[handle].log
    assert len(rows) == 20000 and shape_log.snapshot_chunks >= 4
    checks.clear()
    status, body = await chunk("after", handle, 0)
    assert status == 200
    await wait_until_async(lambda: kept(shape_log, 1), message="chunk 1 checked ahead")
    assert checks == [(handle, 1)]
    status, body = await chunk("after", handle, 1)
    assert status == 200 and {m["value"]["v"] for m in body} == {"0"}
    await wait_until_async(lambda: kept(shape_log, 2), message="chunk 2 checked ahead")
    assert checks == [(handle, 1), (handle, 2)]  # chunk 1 was not checked again
    # Changed after its check-ahead passed (modification time put back): checked again.
    _damage_keeping_mtime(_path(shape_log, 2), b'"v":"0"', b'"v":"7"')
    status, body = await chunk("after", handle, 2)
    assert status == 409, f"the changed chunk was sent: {sent_changed(body)}"
    assert checks[-1] == (handle, 2)  # its request checked it, and found it damaged

    # Changed while its check-ahead ran, once the check had read it: checked again.
    rows, handle, _ = await engine.sync(table="while")
    shape_log = engine.source.registry.by_handle[handle].log
    damage_when_checked[handle] = _path(shape_log, 1)
    status, body = await chunk("while", handle, 0)
    assert status == 200
    await wait_until_async(lambda: kept(shape_log, 1), message="chunk 1 checked ahead")
    assert not damage_when_checked  # changed by then
    status, body = await chunk("while", handle, 1)
    assert status == 409, f"the changed chunk was sent: {sent_changed(body)}"


class _FakeLog:
    """A snapshot of two chunks whose second is the file `path`; its check passes."""

    snapshot_chunks = 2

    def __init__(self, path: str) -> None:
        self.path = path

    def snapshot_chunk_file(self, index: int) -> tuple[str, int, int]:
        return self.path, 0, check_ahead.MIN_BYTES

    def snapshot_check_kept(self, index: int, st: os.stat_result) -> bool:
        return False

    def check_snapshot_file(self, index: int, fd: int) -> None:
        pass


async def test_check_aheads_a_closed_loop_left_pending_do_not_stop_new_ones(
    tmp_path: Path,
) -> None:
    """A loop closed with check-aheads pending (a test's, a tenant's) never ran their done
    callbacks: they must not count against `MAX_RUNNING` for ever."""
    old = asyncio.new_event_loop()
    stuck: list[Any] = [old.create_future() for _ in range(check_ahead.MAX_RUNNING)]
    check_ahead._running.update(stuck)  # (as a task left pending: never done)
    old.close()
    path = tmp_path / "chunk"
    path.write_bytes(b"x" * check_ahead.MIN_BYTES)
    fake: Any = _FakeLog(str(path))
    check_ahead.start({}, fake, 1)
    st = os.stat(path)
    await wait_until_async(lambda: (st.st_dev, st.st_ino) in check_ahead._kept, message="kept")
    assert check_ahead.take(st) and not check_ahead.take(st)  # used once
    assert not check_ahead._running & set(stuck)
