"""`sources.db` lost while the sources' data stayed (a backup restored without it, an
operator who moved a damaged one away as the engine's own message suggests): a request naming
a registered source's id (a proxy still configured for it) was answered from the engine's
single database (`--database-url`, no secret): 200 with that database's rows, as if they were
the source's. It is refused (401), and the start logs an ERROR naming the leftover sources."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from sync_engine.app import SOURCES
from tests.sync_engine.tenants.harness import MultiEngine, make_items


async def test_a_lost_registry_never_sends_a_source_to_the_single_database(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url_default, url_alpha = make_db(), make_db()
    make_items(url_default, ["default-row"])
    make_items(url_alpha, ["alpha-row"])
    engine = await engines(database_url=url_default).start()
    alpha = await engine.add("alpha", url_alpha)
    sid, secret = alpha["source_id"], alpha["secret"]
    await engine.wait_state(sid, "active")
    rows, _, _ = await engine.sync(sid, secret, table="items")
    assert [r["name"] for r in rows.values()] == ["alpha-row"]
    await engine.close()

    for path in engine.data_dir.glob("sources.db*"):
        path.unlink()
    caplog.set_level(logging.ERROR, logger="sync_engine.tenants.manager")
    again = await engines(database_url=url_default).start()
    assert again.client is not None
    await again.client.app[SOURCES]["default"].ready.wait()
    status, _, body = await again.get(sid, secret, table="items", offset="-1")
    assert status == 401, body  # (not 200 with "default-row")
    assert sid in caplog.text and "sources.db knows of no source" in caplog.text
    # the single database is still served to requests without a source_id
    rows, _, _ = await again.sync(None, "", table="items")
    assert [r["name"] for r in rows.values()] == ["default-row"]
