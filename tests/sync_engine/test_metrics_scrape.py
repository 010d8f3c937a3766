"""What an operator reads from the engine's `GET /metrics`, through a real Postgres with
logical replication and the engine's app: shapes, replication lag, retirements, responses.

`/metrics` had one gauge (`sync_engine_parked_requests`): none of an operator's first
questions (is the slot keeping up? how many shapes, how much disk? are shapes being
retired, and why?) had a metric.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(engine: Engine, **params: str) -> Samples:
    """Every sample of a scrape, by (name, sorted labels), parsed by prometheus_client."""
    async with engine.client.get("/metrics", params=params) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


DEFAULT = {"source_id": "default"}


async def test_shapes_disk_and_state_after_three_shapes(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 50) g")
    for where in ("id < 10", "id >= 10", "id % 2 = 0"):
        rows, _, _ = await engine.sync(table="items", where=where)
        assert rows
    m = await scrape(engine)
    assert value(m, "sync_engine_shapes", **DEFAULT) == 3
    assert value(m, "sync_engine_shapes_created_total", **DEFAULT) == 3
    # (50 rows of 100 bytes were written to the snapshots, at least once each)
    assert (value(m, "sync_engine_shape_log_bytes", **DEFAULT) or 0) > 50 * 100
    assert value(m, "sync_engine_source_state", state="active", **DEFAULT) == 1
    assert value(m, "sync_engine_source_state", state="error", **DEFAULT) == 0
    assert value(m, "sync_engine_replication_paused", **DEFAULT) == 0
    size = value(m, "sync_engine_data_dir_size_bytes") or 0
    used = value(m, "sync_engine_data_dir_used_bytes") or 0
    free = value(m, "sync_engine_data_dir_free_bytes") or 0
    assert 0 < used <= size and 0 < free <= size
    assert value(m, "sync_engine_parked_requests") == 0


async def test_lag_comes_back_to_zero_once_writes_are_processed(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v text)")
    rows, handle, offset = await engine.sync(table="items")
    engine.sql("INSERT INTO items SELECT g, repeat('y', 1000) FROM generate_series(1, 500) g")
    engine.sql("INSERT INTO items VALUES (1000, 'marker')")
    await engine.follow_live(rows, handle, offset, "1000", table="items")
    assert len(rows) == 501

    async def lag() -> float | None:
        m = await scrape(engine)
        heard = value(m, "sync_engine_replication_last_message_age_seconds", **DEFAULT)
        # (heard from within the stream's silence timeout, else it would have been lost)
        assert heard is not None and 0 <= heard < engine.source.config.replication_timeout
        got = value(m, "sync_engine_replication_lag_bytes", **DEFAULT)
        assert got is not None and got >= 0
        return got

    await wait_until_async(
        lambda: _is_zero(lag), timeout=30, message="the replication lag back to 0"
    )


async def _is_zero(read: Any) -> bool:
    return bool(await read() == 0)


async def test_truncate_counts_as_a_retired_shape(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO items VALUES (1, 'a')")
    _, handle, offset = await engine.sync(table="items")
    engine.sql("TRUNCATE items")

    async def refetch() -> bool:
        status, _, _ = await engine.get(table="items", handle=handle, offset=offset)
        return status == 409

    await wait_until_async(refetch, timeout=20, message="the truncated shape's 409")
    m = await scrape(engine)
    retired = {
        dict(labels)["reason"]: count
        for (name, labels), count in m.items()
        if name == "sync_engine_shapes_retired_total"
    }
    # (a TRUNCATE gives the table new files: its Relation message, checked first, says so)
    assert retired in ({"table_rewritten": 1}, {"truncated": 1}), retired


async def test_shape_responses_by_status_class(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY)")
    before = await scrape(engine)
    assert value(before, "sync_engine_shape_responses_total", status_class="2xx") == 0
    await engine.sync(table="items")  # (its -1 and the request that is up-to-date)
    status, _, _ = await engine.get(table="items", offset="nonsense")
    assert status == 400
    status, _, _ = await engine.get(table="no_such_table", offset="-1")
    assert status == 400
    m = await scrape(engine)
    assert (value(m, "sync_engine_shape_responses_total", status_class="2xx") or 0) >= 2
    assert value(m, "sync_engine_shape_responses_total", status_class="4xx") == 2
    assert value(m, "sync_engine_shape_responses_total", status_class="5xx") == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="signals Postgres's walsender (needs root)")
async def test_lag_counts_wal_the_walsender_has_not_sent(engine: Engine) -> None:
    """A walsender that stops sending (stopped here; busy decoding a backlog, in life) leaves
    the stream knowing nothing of the WAL written since: the lag still shows it, from
    Postgres's own WAL end."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v text)")
    await engine.sync(table="items")

    async def caught_up() -> bool:
        return value(await scrape(engine), "sync_engine_replication_lag_bytes", **DEFAULT) == 0

    await wait_until_async(caught_up, timeout=30, message="lag 0 before")
    slot = engine.source.config.slot_name
    pid = engine.sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    walsender = int(pid[0][0])
    os.kill(walsender, signal.SIGSTOP)
    try:
        before = engine.sql("SELECT pg_current_wal_lsn() - '0/0'")[0][0]
        engine.sql("INSERT INTO items SELECT g, repeat('z', 1000) FROM generate_series(1, 300) g")
        written = int(engine.sql("SELECT pg_current_wal_lsn() - '0/0'")[0][0] - before)

        async def lag_covers_it() -> bool:
            lag = value(await scrape(engine), "sync_engine_replication_lag_bytes", **DEFAULT)
            return lag is not None and lag >= written

        await wait_until_async(lag_covers_it, timeout=30, message=f"lag >= {written}")
    finally:
        os.kill(walsender, signal.SIGCONT)
    await wait_until_async(caught_up, timeout=60, message="lag 0 once it sends again")
