"""Helpers for talking to an in-process engine the way a client would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiohttp.test_utils import TestClient
from psycopg.sql import Composed

from sync_engine.app import SOURCES
from sync_engine.settings import Settings
from tests.support.engine_process import apply_messages
from tests.support.waiting import wait_until_async


@dataclass
class Engine:
    client: TestClient[Any, Any]
    db_url: str
    data_dir: Path

    async def get(self, **params: Any) -> tuple[int, dict[str, str], Any]:
        resp = await self.client.get("/v1/shape", params={k: str(v) for k, v in params.items()})
        raw = await resp.read()
        body = orjson.loads(raw) if raw else None
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body

    def sql(self, query: str | Composed, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    @property
    def source(self) -> Any:
        return self.client.app[SOURCES]["default"]

    def parked(self) -> int:
        """Requests waiting for a shape to change (long-polls and SSE streams at the tip)."""
        return int(self.source.parked_requests)

    async def until_parked(self, count: int = 1) -> None:
        """Wait until at least `count` requests are parked (instead of sleeping a while)."""
        await wait_until_async(lambda: self.parked() >= count, message=f"{count} parked")

    async def sync(self, **params: Any) -> tuple[dict[str, dict[str, Any]], str, str]:
        """Follow a shape from -1 to up-to-date like a client; returns rows, handle, offset."""
        rows: dict[str, dict[str, Any]] = {}
        status, h, body = await self.get(offset="-1", **params)
        assert status == 200, body
        handle, offset = h["electric-handle"], h["electric-offset"]
        apply(rows, body)
        for _ in range(1000):
            status, h, body = await self.get(offset=offset, handle=handle, **params)
            assert status == 200, body
            apply(rows, body)
            offset = h["electric-offset"]
            if "electric-up-to-date" in h:
                return rows, handle, offset
        raise AssertionError("never up to date")

    async def follow_live(
        self,
        rows: dict[str, dict[str, Any]],
        handle: str,
        offset: str,
        until_id: str,
        **params: Any,
    ) -> str:
        """Follow a shape live (up to 20 long-polls), applying each answer to `rows`, until
        the row with id `until_id` has arrived (a marker written after the rows under test);
        returns the offset reached."""
        for _ in range(20):
            status, h, body = await self.get(offset=offset, handle=handle, live="true", **params)
            assert status == 200, body
            apply(rows, body)
            offset = h["electric-offset"]
            if until_id in {r["id"] for r in rows.values()}:
                break
        return offset


apply = apply_messages

#: Seconds an in-process engine may take to stop at a fixture's teardown (its stop is bounded
#: well below: 2 s for requests, 10 s for tasks, 10 s for pools).
STOP_WITHIN = 60.0


async def stopped_within(close: Awaitable[None], what: str) -> None:
    """Await `close` (an in-process engine's stop), at most `STOP_WITHIN` seconds: a stop that
    hangs fails the test naming the tasks still running, where with no bound it held the
    test run (and the CI) until its time limit."""
    try:
        async with asyncio.timeout(STOP_WITHIN):
            await close
    except TimeoutError:
        running = sorted(
            t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()
        )
        raise AssertionError(
            f"{what} did not stop within {STOP_WITHIN:g} s; tasks still running: {running}"
        ) from None


# Short timeouts so live paths are exercised quickly in tests.
SETTINGS = Settings(
    long_poll_timeout=2.0,
    sse_timeout=4.0,
    sse_keepalive=1.0,
    fsync=False,
    out_of_bounds_wait=1.0,
    schema_check_interval=0.5,
    allow_delete=True,
)
