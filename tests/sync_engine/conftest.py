"""An engine served in-process against the test database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from tests.sync_engine.engine_harness import SETTINGS, Engine, stopped_within


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")
    # (stopped here within a bound; aiohttp_client's own close after this has nothing to do)
    await stopped_within(client.close(), "the in-process engine")
