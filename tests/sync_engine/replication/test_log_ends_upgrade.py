"""The first start of this engine on an older data dir (shapes, position, identity; no
made-in-database, no log-ends), ended between `note_made` and the load's first log-ends
rewrite (an orchestrator's SIGKILL during a long first load): the next start took the
missing log-ends as damage and retired every shape with a log, though nothing was lost
(review 17:24, MEDIUM; their repro). "Expected" now comes from log-ends-kept, written once
log-ends first was. The control: the same upgrade, not interrupted, keeps the shape.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_engine.app import build_app
from sync_engine.shapes.registry import ShapeRegistry
from sync_engine.source import Source, SourceConfig
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS


async def _start(
    aiohttp_client: Any, config: SourceConfig, data: Path, wait: bool = True
) -> tuple[Any, Source]:
    source = Source(config)
    settings = replace(SETTINGS, database_url=config.database_url, data_dir=data)
    client = await aiohttp_client(build_app(settings, {"default": source}))
    if wait:
        await asyncio.wait_for(source.ready.wait(), 30)
    return client, source


async def _sync(client: Any, handle: str | None, offset: str) -> tuple[int, str | None, str]:
    """Follow from `offset` to up-to-date (non-live): (last status, handle, offset)."""
    while True:
        params = {"table": "items", "offset": offset}
        if handle:
            params["handle"] = handle
        resp = await client.get("/v1/shape", params=params)
        await resp.read()
        if resp.status != 200:
            return resp.status, handle, offset
        handle = resp.headers["electric-handle"]
        offset = resp.headers["electric-offset"]
        if "electric-up-to-date" in resp.headers:
            return 200, handle, offset


@pytest.mark.parametrize("killed", [True, False], ids=["killed-first-start", "control"])
async def test_an_upgrade_start_killed_before_log_ends_is_written_retires_nothing(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed: bool
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO items SELECT i, 0 FROM generate_series(1, 10) i")
    data = tmp_path / "data"
    config = SourceConfig("default", db_url, data / "sources" / "default", fsync=False)
    client, source = await _start(aiohttp_client, config, data)
    status, handle, offset = await _sync(client, None, "-1")
    assert status == 200 and handle
    for _ in range(3):
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE items SET v = v + 1")
        for _ in range(100):  # (until the change is readable)
            status, handle2, offset2 = await _sync(client, handle, offset)
            if offset2 != offset:
                offset = offset2
                break
            await asyncio.sleep(0.1)
    assert handle2 == handle
    await asyncio.sleep(1.5)  # (the slot confirmed past the last write)
    await source.stop()
    await client.close()
    # The data dir as an engine before c1cada7f/064ca4d5 left it.
    (config.data_dir / "made-in-database").unlink()
    (config.data_dir / "log-ends").unlink()
    (config.data_dir / "log-ends-kept").unlink(missing_ok=True)
    if killed:

        def killed_load(self: ShapeRegistry) -> list[Any]:
            raise RuntimeError("SIGKILL here (between note_made and the load)")

        with monkeypatch.context() as m:
            m.setattr(ShapeRegistry, "load", killed_load)
            client_b, source_b = await _start(aiohttp_client, config, data, wait=False)
            await wait_until_async(
                lambda: (config.data_dir / "made-in-database").exists(),
                timeout=30,
                message="made-in-database noted",
            )
            await source_b.stop()
            await client_b.close()
        assert not (config.data_dir / "log-ends").exists()
    client_c, source_c = await _start(aiohttp_client, config, data)
    await asyncio.sleep(1.0)  # (the replicator's slot check of repaired shapes)
    status, handle3, _ = await _sync(client_c, handle, offset)
    assert (status, handle3) == (200, handle), f"a whole shape retired after the restart: {status}"
