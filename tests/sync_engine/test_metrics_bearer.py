"""`GET /metrics` takes the `--secret` as Prometheus sends a credential:
`Authorization: Bearer <secret>` (`authorization: credentials_file` in a scrape config).

Only the `secret` query parameter worked: a Bearer header carrying the secret was a 401
unless it was the admin token. Now either way works, compared in constant time; anything
else is the engine's 401 in JSON, which names no secret. The admin token's rule for
registered sources stays (`test_metrics_auth.py`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from sync_engine.app import build_app
from tests.sync_engine.engine_harness import SETTINGS

SECRET = "metrics-bearer-secret-7f3a9c"
TOKEN = "metrics-bearer-admin-token-0123456789"


async def scrape(client: Any, headers: dict[str, str], **params: str) -> tuple[int, str]:
    async with client.get("/metrics", params=params, headers=headers) as resp:
        text = await resp.text()
        if resp.status == 200:
            names = {f.name for f in text_string_to_metric_families(text)}
            assert "sync_engine_parked_requests" in names, text
        else:
            assert resp.headers["content-type"].startswith("application/json")
            assert "message" in orjson.loads(text)
        return resp.status, text


async def test_bearer_secret_reads_metrics(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = replace(SETTINGS, data_dir=tmp_path / "data", secret=SECRET)
    client = await aiohttp_client(build_app(settings))
    assert (await scrape(client, {"Authorization": f"Bearer {SECRET}"}))[0] == 200
    assert (await scrape(client, {"authorization": f"bearer   {SECRET} "}))[0] == 200
    assert (await scrape(client, {}, secret=SECRET))[0] == 200  # (as before)
    for headers, params in (
        ({"Authorization": "Bearer not-the-secret"}, {}),
        ({"Authorization": f"Bearer {SECRET}x"}, {}),
        ({"Authorization": f"Basic {SECRET}"}, {}),
        ({"Authorization": SECRET}, {}),
        ({"Authorization": "Bearer "}, {}),
        ({}, {"secret": "wrong"}),
        ({}, {}),
    ):
        status, text = await scrape(client, headers, **params)
        assert status == 401, (headers, params)
        assert SECRET not in text and "sync_engine" not in text


async def test_bearer_secret_and_admin_token_together(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = replace(SETTINGS, data_dir=tmp_path / "data", secret=SECRET, admin_token=TOKEN)
    client = await aiohttp_client(build_app(settings))
    assert (await scrape(client, {"Authorization": f"Bearer {SECRET}"}))[0] == 200
    assert (await scrape(client, {"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    status, text = await scrape(client, {"Authorization": "Bearer neither-of-them"})
    assert status == 401 and SECRET not in text and TOKEN not in text
