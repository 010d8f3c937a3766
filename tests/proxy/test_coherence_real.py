"""Real path, cache on: client -> proxy (config/examples/open.yaml) -> `sync-engine` -> Postgres.

After a TRUNCATE or a DELETE rotates a shape, nothing the proxy cached of the old shape may
reach a client: a brand-new client's first request names the new handle and holds the new
rows. Answers every caller shares keep the engine's public cache headers; claim-dependent ones
are private. `/v1/health` and the engine's error bodies come through as the engine sent them
(the rest of that is tested against the fake engine in test_transparency.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess, apply_messages


@pytest.fixture
def engine_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)")
        conn.execute(
            "INSERT INTO items SELECT g, 'org-a', 'old ' || g FROM generate_series(1, 20) g"
        )
    engine = EngineProcess(
        db_url, tmp_path / "data", "--long-poll-timeout", "3", "--no-fsync", "--allow-delete"
    )
    engine.start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture
async def open_proxy(engine_url: str, make_proxy: Any) -> Any:
    return await make_proxy(open_config(engine_url))


def _rows(reply: Any) -> list[str]:
    rows: dict[str, dict[str, Any]] = {}
    apply_messages(rows, reply.json())
    return sorted(r["title"] for r in rows.values())


async def _cache_hits(proxy: Any) -> float:
    text = (await proxy.get("/metrics")).body.decode()
    for line in text.splitlines():
        if line.startswith('shape_proxy_response_cache_total{result="hit"}'):
            return float(line.split()[1])
    return 0.0


async def _engine_handle(engine_url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{engine_url}/v1/shape?table=items&offset=-1") as resp:
            await resp.read()
            return resp.headers["electric-handle"]


async def test_first_request_after_truncate_gets_the_new_shape(
    open_proxy: Any, engine_url: str, db_url: str
) -> None:
    path = "/v1/shape?table=items&offset=-1"
    before = await open_proxy.get(path)
    assert before.status == 200 and len(_rows(before)) == 20
    old_handle = before.headers["electric-handle"]
    cached = await open_proxy.get(path)  # a second client: from the cache, after a 304
    assert cached.body == before.body

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "BEGIN; TRUNCATE items; INSERT INTO items VALUES (100, 'org-a', 'new'); COMMIT"
        )
    # Replication lag: wait until the engine itself serves a new shape (asked directly).
    deadline = time.monotonic() + 15
    while await _engine_handle(engine_url) == old_handle:
        assert time.monotonic() < deadline, "the engine never rotated the shape"
        await asyncio.sleep(0.05)

    fresh = await open_proxy.get(path)  # a brand-new client's first request, cache on
    assert fresh.status == 200
    assert fresh.headers["electric-handle"] != old_handle
    assert _rows(fresh) == ["new"]
    assert "Age" not in fresh.headers


async def test_shared_answers_keep_public_headers_and_claim_answers_stay_private(
    open_proxy: Any, engine_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    public = await open_proxy.get("/v1/shape?table=items&offset=-1")
    assert public.headers["Cache-Control"].startswith("public")
    assert "s-maxage=3600" in public.headers["Cache-Control"]
    assert "authorization" not in public.headers.get("Vary", "").lower()

    config = base_config(engine_url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].pop("secret_env")
    config["upstream"].pop("source_id")
    config["upstream"].update(first_byte_timeout=10)
    private_proxy = await make_proxy(build_config(config, environ))
    token = private_proxy.tokens.make(org_id="org-a")
    private = await private_proxy.get("/v1/shape?table=items&offset=-1", token=token)
    assert private.status == 200, private.body
    assert private.headers["Cache-Control"].startswith("private")
    assert "s-maxage" not in private.headers["Cache-Control"]
    assert "authorization" in private.headers["Vary"].lower()
    assert json.loads(private.body)  # the same rows, filtered by the claim


async def test_delete_through_the_proxy_rotates_the_shape_and_drops_its_answers(
    open_proxy: Any,
) -> None:
    path = "/v1/shape?table=items&offset=-1"
    first = await open_proxy.get(path)
    old_handle = first.headers["electric-handle"]
    offset = first.headers["electric-offset"]
    up_to_date = await open_proxy.get(f"/v1/shape?table=items&offset={offset}&handle={old_handle}")
    tip = up_to_date.headers["electric-offset"]
    # A live answer (the long-poll times out empty after 3 s) is cached for its 5 s.
    live = f"/v1/shape?table=items&offset={tip}&handle={old_handle}&live=true&cursor=1"
    assert (await open_proxy.get(live)).status == 200
    hits = await _cache_hits(open_proxy)
    assert (await open_proxy.get(live)).status == 200
    assert await _cache_hits(open_proxy) == hits + 1  # served from the cache

    deleted = await open_proxy.request("DELETE", f"/v1/shape?table=items&handle={old_handle}")
    assert deleted.status == 202, deleted.body

    gone = await open_proxy.get(live)  # the deleted handle's cached answer is not served
    assert gone.status == 409
    fresh = await open_proxy.get(path)  # nor the cached initial answer of the deleted shape
    assert fresh.status == 200 and fresh.headers["electric-handle"] != old_handle
    assert len(_rows(fresh)) == 20
    assert gone.headers["electric-handle"] == fresh.headers["electric-handle"]


async def test_a_handle_only_delete_drops_that_handles_cached_answers(open_proxy: Any) -> None:
    """`DELETE /v1/shape?handle=H` (no table: Electric's client tests send it) names no
    definition, so the cache must drop H's answers whatever definition they were stored
    under. It dropped none: the next identical live request was answered from the cache
    (the deleted shape's rows, 200) instead of the engine's 409, and a client resyncing
    after the rotation kept rows it should have lost."""
    path = "/v1/shape?table=items&offset=-1"
    first = await open_proxy.get(path)
    old_handle = first.headers["electric-handle"]
    offset = first.headers["electric-offset"]
    up_to_date = await open_proxy.get(f"/v1/shape?table=items&offset={offset}&handle={old_handle}")
    tip = up_to_date.headers["electric-offset"]
    live = f"/v1/shape?table=items&offset={tip}&handle={old_handle}&live=true&cursor=1"
    assert (await open_proxy.get(live)).status == 200
    hits = await _cache_hits(open_proxy)
    assert (await open_proxy.get(live)).status == 200
    assert await _cache_hits(open_proxy) == hits + 1  # served from the cache

    deleted = await open_proxy.request("DELETE", f"/v1/shape?handle={old_handle}")
    assert deleted.status == 202, deleted.body

    gone = await open_proxy.get(live)
    assert gone.status == 409, gone.body
    fresh = await open_proxy.get(path)
    assert fresh.status == 200 and fresh.headers["electric-handle"] != old_handle


async def test_health_and_engine_errors_come_through_as_the_engine_sent_them(
    open_proxy: Any, engine_url: str
) -> None:
    health = await open_proxy.get("/v1/health")
    assert health.status == 200 and health.json() == {"status": "active"}
    head = await open_proxy.request("HEAD", "/v1/shape?table=items&offset=-1")
    assert head.status == 200 and head.body == b"" and head.headers["electric-handle"]
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{engine_url}/v1/shape?table=items&offset=-1&where=nope%20%3D%201"
        ) as resp:
            direct = await resp.json()
            direct_status = resp.status
    through = await open_proxy.get("/v1/shape?table=items&offset=-1&where=nope%20%3D%201")
    assert through.status == direct_status == 400
    assert through.json() == direct
    assert direct["message"] == "Invalid request" and "where" in direct["errors"]
