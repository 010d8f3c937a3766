"""Credentials and a DELETE's handle given twice are read as Electric reads them: the last
value (Plug's query decoding), and `api_secret` only when `secret` is absent (an empty
`secret` is not absent: Elixir's `||`). They took the first value (`secret=wrong&secret=RIGHT`
was a 401 here, a 200 in Electric; the reverse the other way round), and an empty `secret`
fell through to `api_secret`. Real Postgres, the engine app in-process with a secret."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from sync_engine.app import SOURCES, build_app
from tests.sync_engine.engine_harness import SETTINGS

SECRET = "s3cret-for-the-repeated-credentials-test"


async def test_repeated_credentials_and_handles_take_the_last_value(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        secret=SECRET,
        allow_delete=True,
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")

    async def status(method: str, params: list[tuple[str, str]]) -> int:
        resp = await client.request(method, "/v1/shape", params=params)
        await resp.read()
        return resp.status

    shape = [("table", "items"), ("offset", "-1")]
    assert await status("GET", [*shape, ("secret", "wrong"), ("secret", SECRET)]) == 200
    assert await status("GET", [*shape, ("secret", SECRET), ("secret", "wrong")]) == 401
    assert await status("GET", [*shape, ("api_secret", "x"), ("api_secret", SECRET)]) == 200
    assert await status("GET", [*shape, ("secret", ""), ("api_secret", SECRET)]) == 401
    metrics = await client.get("/metrics", params=[("secret", "x"), ("secret", SECRET)])
    assert metrics.status == 200

    resp = await client.get("/v1/shape", params=[*shape, ("secret", SECRET)])
    handle = resp.headers["electric-handle"]
    await resp.read()
    # the DELETE's handle: the last one (a wrong first one is not the one checked)
    got = await status(
        "DELETE",
        [("table", "items"), ("secret", SECRET), ("handle", "nope"), ("handle", handle)],
    )
    assert got == 202
