"""SnapshotScheduler when no connection can be opened."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from sync_engine.snapshot.scheduler import SnapshotScheduler
from tests.support.waiting import wait_until_async


async def test_unreachable_database_fails_the_shape_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """All its connections are opened at once and all fail: the waiting shape is failed,
    with one warning (there used to be one per connection: eight lines per outage)."""
    failed: list[tuple[Any, BaseException]] = []
    scheduler = SnapshotScheduler(
        "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2",
        max_connections=8,
        chunk_bytes=1 << 20,
        fsync=False,
        make_job=lambda shape: pytest.fail("no connection: no job"),
        on_failed=lambda shape, exc: failed.append((shape, exc)),
    )
    shape = SimpleNamespace(rotated=False)
    with caplog.at_level(logging.DEBUG, logger="sync_engine.snapshot.scheduler"):
        scheduler.submit(shape)  # type: ignore[arg-type]
        await wait_until_async(lambda: failed, timeout=20, message="the shape failed")
        await asyncio.sleep(0.05)
    await scheduler.close()
    assert [s for s, _ in failed] == [shape]
    lines = [r for r in caplog.records if "could not open a snapshot connection" in r.message]
    assert len(lines) == 8
    assert [r.levelno for r in lines].count(logging.WARNING) == 1
