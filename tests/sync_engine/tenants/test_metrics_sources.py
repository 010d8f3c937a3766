"""`GET /metrics` of an engine with registered sources: one series per source (`source_id`),
paused sources shown as such, readable with the admin token only (a tenant's secret shows
no other tenant's activity). Real Postgres databases, the engine's app and admin API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import stopped_within
from tests.sync_engine.tenants.harness import TOKEN, MultiEngine, make_items


@pytest.fixture
async def multi(tmp_path: Path) -> AsyncIterator[MultiEngine]:
    """An in-process engine with the admin API (sources registered through it)."""
    engine = await MultiEngine(tmp_path / "data").start()
    yield engine
    await stopped_within(engine.close(), "an in-process engine with sources")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(engine: MultiEngine, bearer: str | None, **params: str) -> tuple[int, Samples]:
    assert engine.client is not None
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with engine.client.get("/metrics", headers=headers, params=params) as resp:
        text = await resp.text()
        if resp.status != 200:
            assert "sync_engine" not in text
            return resp.status, {}
    return 200, {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of(samples: Samples, name: str, sid: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted({"source_id": sid, **labels}.items()))))


async def test_each_source_has_its_series_and_a_paused_one_says_so(
    multi: MultiEngine, make_db: Callable[[], str]
) -> None:
    url_a, url_b = make_db(), make_db()
    make_items(url_a, ["a1", "a2"])
    make_items(url_b, ["b1"])
    engine = multi
    a = await engine.add("alpha", url_a)
    b = await engine.add("beta", url_b)
    sid_a, sid_b = a["source_id"], b["source_id"]
    await engine.wait_state(sid_a, "active")
    await engine.wait_state(sid_b, "active")
    await engine.sync(sid_a, a["secret"], table="items")
    await engine.sync(sid_a, a["secret"], table="items", where="id = 1")

    # a tenant's secret reads its shapes, not the engine's metrics
    assert (await scrape(engine, a["secret"]))[0] == 401
    assert (await scrape(engine, None, secret=a["secret"]))[0] == 401
    assert (await scrape(engine, None))[0] == 401

    status, m = await scrape(engine, TOKEN)
    assert status == 200
    assert of(m, "sync_engine_shapes", sid_a) == 2
    assert of(m, "sync_engine_shapes", sid_b) == 0
    assert of(m, "sync_engine_shapes_created_total", sid_a) == 2
    for sid in (sid_a, sid_b):
        assert of(m, "sync_engine_source_state", sid, state="active") == 1
        assert of(m, "sync_engine_replication_paused", sid) == 0

    async def caught_up() -> bool:
        _, m = await scrape(engine, TOKEN)
        return all(of(m, "sync_engine_replication_lag_bytes", s) == 0 for s in (sid_a, sid_b))

    await wait_until_async(caught_up, timeout=30, message="both sources' lag at 0")

    status, body = await engine.api("POST", f"/api/sources/{sid_b}/pause")
    assert status == 200 and body["state"] == "paused", body
    _, m = await scrape(engine, TOKEN)
    assert of(m, "sync_engine_source_state", sid_b, state="paused") == 1
    assert of(m, "sync_engine_source_state", sid_b, state="active") == 0
    assert of(m, "sync_engine_source_state", sid_a, state="active") == 1
