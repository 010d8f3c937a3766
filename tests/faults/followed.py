"""An engine process (checking schemas and its publication often) with a follower on its
`items` shape that acts as the client does, and a wait for the follower to hold what a
query of Postgres returns: the setup of the tests whose DDL or publication changes must
end with every client equal to `SELECT` (test_silent_ddl, test_publication_changed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower
from tests.support.waiting import wait_until_async

#: Rows as a test compares them: the follower's (`view`) against Postgres's (`select`).
Rows = list[tuple[str, ...]]


def run_sql(db_url: str, *statements: str) -> None:
    """Run `statements` in order, each committed on its own (autocommit)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for s in statements:
            conn.execute(s.encode())


def rows_of(db_url: str, query: bytes) -> Rows:
    """Postgres's rows for `query`, as text, sorted: what `Followed.select` returns."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(query).fetchall()
    return sorted(tuple(str(x) for x in row) for row in rows)


@dataclass
class Followed:
    engine: EngineProcess
    follower: Follower
    session: aiohttp.ClientSession
    view: Callable[[dict[str, dict[str, Any]]], Rows]
    select: Callable[[], Rows]
    #: Set at the end: the follower (and other clients of the test's) stop.
    stop: asyncio.Event

    async def converged(self, what: str) -> None:
        """Wait until the follower is live and holds what `select` returns."""
        follower = self.follower
        try:
            await wait_until_async(
                lambda: follower.live and self.view(follower.rows) == self.select(),
                timeout=60,
                message=what,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.view(follower.rows)} != {self.select()}") from None


@contextlib.asynccontextmanager
async def followed_engine(
    db_url: str,
    tmp_path: Path,
    check_interval: str,
    view: Callable[[dict[str, dict[str, Any]]], Rows],
    select: Callable[[], Rows],
) -> AsyncIterator[Followed]:
    """The engine (long-polls of 1 s, `--schema-check-interval check_interval`) and its
    follower, running; at the end the follower stops (its own failure raised) and the
    engine too."""
    engine = EngineProcess(
        db_url,
        tmp_path / "data",
        "--long-poll-timeout",
        "1",
        "--schema-check-interval",
        check_interval,
    )
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    follower = Follower(engine.url, increments=False)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(follower.run(session, stop))
            yield Followed(engine, follower, session, view, select, stop)
            assert not [s for s in follower.statuses if s >= 500], follower.statuses
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        stop.set()
        await asyncio.to_thread(engine.stop)
