"""A data directory carries the identity of the source and database it was written for
(`sync_engine.identity`), and a start against another database retires its shapes.

Nothing in a source's directory named its database: directories swapped in a restore, or a
data dir pointed at another database, were served under the wrong credentials whenever
their table OIDs and LSNs happened to line up (sources 13:52: two tenant databases made by
the same migrations on fresh clusters). The directory of another database is made here by
rewriting the identity a start wrote (another database's OID), as a swap would leave it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.identity import FILE_NAME
from tests.sync_engine.engine_harness import SETTINGS, Engine, stopped_within


async def _start(aiohttp_client: Any, db_url: str, data: Path) -> Engine:
    settings = replace(SETTINGS, database_url=db_url, data_dir=data)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    return Engine(client, db_url, data)


def _identity_file(data: Path) -> Path:
    [found] = list(data.rglob(FILE_NAME))
    return found


async def test_a_data_dir_of_another_database_is_not_served(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    engine = await _start(aiohttp_client, db_url, data)
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO items VALUES (1, 'a')")
    _, handle, offset = await engine.sync(table="items")
    await stopped_within(engine.client.close(), "the in-process engine")
    path = _identity_file(data)
    ours = json.loads(path.read_text())
    assert ours["source_id"] == "default" and ours["database_oid"] > 0, ours

    # Restarted as it was: the same shape, served on.
    engine = await _start(aiohttp_client, db_url, data)
    status, h, _ = await engine.get(table="items", offset=offset, handle=handle)
    assert status == 200 and h["electric-handle"] == handle
    await stopped_within(engine.client.close(), "the in-process engine")

    # The directory of another database (its identity says so): its shapes are not served.
    path.write_text(json.dumps(ours | {"database_oid": ours["database_oid"] + 1}))
    engine = await _start(aiohttp_client, db_url, data)
    status, h, _ = await engine.get(table="items", offset=offset, handle=handle)
    assert status == 409, (status, h)
    rows, new, _ = await engine.sync(table="items")
    assert new != handle and [r["v"] for r in rows.values()] == ["a"]
    assert json.loads(path.read_text()) == ours  # (written for this database now)
    await stopped_within(engine.client.close(), "the in-process engine")


async def test_a_data_dir_without_an_identity_keeps_its_shapes_and_gets_one(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """A directory an engine before the identity wrote: served on, the file written."""
    data = tmp_path / "data"
    engine = await _start(aiohttp_client, db_url, data)
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO items VALUES (1, 'a')")
    _, handle, offset = await engine.sync(table="items")
    await stopped_within(engine.client.close(), "the in-process engine")
    path = _identity_file(data)
    written = path.read_text()
    path.unlink()
    engine = await _start(aiohttp_client, db_url, data)
    status, h, _ = await engine.get(table="items", offset=offset, handle=handle)
    assert status == 200 and h["electric-handle"] == handle
    assert path.read_text() == written
    await stopped_within(engine.client.close(), "the in-process engine")


async def test_a_damaged_identity_is_said_and_written_again(
    aiohttp_client: Any, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A zeroed or cut identity.json was rewritten with no line in the log, the check it
    serves off for that start (chaos 17:00, LOW): now a warning says so."""
    data = tmp_path / "data"
    engine = await _start(aiohttp_client, db_url, data)
    await stopped_within(engine.client.close(), "the in-process engine")
    path = _identity_file(data)
    written = path.read_text()
    for damaged in (b"\0" * len(written), written.encode()[: len(written) // 2]):
        path.write_bytes(damaged)
        caplog.clear()
        engine = await _start(aiohttp_client, db_url, data)
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(f"{path} is damaged" in m for m in said), said
        assert path.read_text() == written
        await stopped_within(engine.client.close(), "the in-process engine")
