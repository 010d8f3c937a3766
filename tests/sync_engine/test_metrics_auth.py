"""Who may read `GET /metrics`: its gauge counts every source's live requests.

Multi-source mode (no `--secret`, sources registered through the admin API) answered it to
anyone: an outsider could watch the tenants' activity. There it now takes the admin token,
as the admin API does (`Authorization: Bearer`); single-source mode keeps it behind
`--secret` as before, and an engine with neither stays open (as Electric's own).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sync_engine.app import build_app
from tests.sync_engine.engine_harness import SETTINGS

TOKEN = "metrics-test-admin-token-0123456789"
SECRET = "metrics-test-secret"


async def status_of(client: Any, headers: dict[str, str] | None = None, **params: str) -> int:
    async with client.get("/metrics", params=params, headers=headers or {}) as resp:
        text = await resp.text()
        if resp.status == 200:
            names = {f.name for f in text_string_to_metric_families(text)}
            assert "sync_engine_parked_requests" in names, text
        else:
            assert "sync_engine" not in text
        return resp.status


async def test_multi_source_mode_takes_the_admin_token(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = replace(SETTINGS, data_dir=tmp_path / "data", admin_token=TOKEN)
    client = await aiohttp_client(build_app(settings))
    assert await status_of(client) == 401
    assert await status_of(client, {"authorization": "Bearer wrong-token-0123456789"}) == 401
    assert await status_of(client, {"authorization": f"Basic {TOKEN}"}) == 401
    assert await status_of(client, secret=TOKEN) == 401  # (the token is not a secret)
    assert await status_of(client, {"authorization": f"Bearer {TOKEN}"}) == 200
    assert await status_of(client, {"authorization": f"bearer  {TOKEN} "}) == 200


async def test_single_source_mode_keeps_the_secret(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = replace(SETTINGS, data_dir=tmp_path / "data", secret=SECRET)
    client = await aiohttp_client(build_app(settings))
    assert await status_of(client) == 401
    assert await status_of(client, secret="wrong") == 401
    assert await status_of(client, secret=SECRET) == 200
    assert await status_of(client, api_secret=SECRET) == 200


async def test_without_secret_or_sources_it_stays_open(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(replace(SETTINGS, data_dir=tmp_path / "data")))
    assert await status_of(client) == 200
