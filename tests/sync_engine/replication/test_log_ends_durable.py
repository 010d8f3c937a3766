"""The log ends a flush notes (`log/ends.py`) are made durable before the slot may be
confirmed past that flush: fdatasynced before each save of the replication position.

They were never synced: a power cut could lose the lines of flushes the slot had confirmed
(detection of an older chunk copy lost for those), or leave a file of appends zero-filled,
read as damaged at the next start: every shape with a log retired, every client refetching.
One fdatasync per flush cost +60-150% of a one-shape flush; one before each position save
is off the flush's path.

Real path: the engine in-process (fsync on) on the test database, a client following a
shape, a row written; the syscalls the engine makes are watched in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.log.ends import NAME as ENDS_NAME
from sync_engine.log.ends import LogEnds
from sync_engine.replication.position import FILE_NAME as POSITION_FILE
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine, stopped_within


@pytest.mark.timeout(60)
async def test_the_noted_log_ends_are_durable_before_the_position_past_them_is_saved(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []

    def spy(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            events.append((name, os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
            real(fd)

        return call

    def watched(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            events.append((name, ""))
            return real(*args)

        return call

    monkeypatch.setattr(os, "fdatasync", spy("fdatasync", os.fdatasync))
    monkeypatch.setattr(os, "fsync", spy("fsync", os.fsync))
    monkeypatch.setattr(LogEnds, "note", watched("note", LogEnds.note))

    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data", fsync=True)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    try:
        engine.sql("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        engine.sql("INSERT INTO items VALUES (1, 0)")
        _, handle, offset = await engine.sync(table="items")
        engine.sql("UPDATE items SET v = 1 WHERE id = 1")
        status, _, body = await engine.get(table="items", handle=handle, offset=offset, live="true")
        assert status == 200 and any(m.get("value", {}).get("v") == "1" for m in body), body
        # The flush that made the update readable noted its end; the position past it is
        # saved next (the slot may then confirm it).
        noted = max(i for i, (what, _) in enumerate(events) if what == "note")
        save = ("fsync", POSITION_FILE)
        await wait_until_async(
            lambda: save in events[noted:], timeout=30, message="a position saved after it"
        )
        saved = events.index(save, noted)
        assert ("fdatasync", ENDS_NAME) in events[noted:saved], events[noted:]
    finally:
        await stopped_within(client.close(), "the in-process engine")


@pytest.mark.timeout(90)
async def test_a_log_ends_sync_that_keeps_failing_is_said_once(
    aiohttp_client: Any,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While log-ends' fdatasync fails (a full disk), each position save goes on with the
    mark saved before; that was one WARNING per save (chaos 23:28: 423 in 20 s). Now one
    while it fails, one when it works again."""
    failing = [True]
    failed: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if failing[0] and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == ENDS_NAME:
            failed.append(fd)
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data", fsync=True)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    said = "before saving the replication position"
    try:
        engine.sql("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        engine.sql("INSERT INTO items VALUES (1, 0)")
        rows, handle, offset = await engine.sync(table="items")

        def failed_since(before: int) -> Callable[[], bool]:
            return lambda: len(failed) > before

        for v in range(1, 6):  # (each flushed and its position saved: a failed sync each)
            saved = failed_since(len(failed))
            engine.sql(f"UPDATE items SET v = {v} WHERE id = 1")
            offset = await engine.follow_live(rows, handle, offset, "1", table="items")
            await wait_until_async(saved, timeout=30, message="a save")
        warnings = [r for r in caplog.records if r.levelname == "WARNING" and said in r.message]
        assert len(failed) >= 5 and len(warnings) == 1, (len(failed), warnings)
        failing[0] = False
        engine.sql("UPDATE items SET v = 9 WHERE id = 1")
        await wait_until_async(
            lambda: any("works again" in r.message for r in caplog.records),
            timeout=30,
            message="said when it works again",
        )
    finally:
        await stopped_within(client.close(), "the in-process engine")
