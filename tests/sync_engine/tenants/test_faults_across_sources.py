"""One source's Postgres stopped, restarted or silent (SIGSTOP): the other sources' live
clients keep getting their changes and their new shapes snapshot; the faulty source's
own clients get answers (never a hang), and no row is lost once it is back."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import apply_messages
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN, MultiEngine, make_items, sql

#: A request to the faulty source must be answered within this (its long-poll timeout is
#: 2 s; a snapshot of an unreachable database fails in its connect timeout).
ANSWER_WITHIN = 30.0


class Follower:
    """A client following one shape live, in the background, as ShapeStream does."""

    def __init__(self, engine: MultiEngine, sid: str, secret: str, **shape: Any) -> None:
        self.engine, self.sid, self.secret, self.shape = engine, sid, secret, shape
        self.rows: dict[str, dict[str, Any]] = {}
        self.statuses: list[int] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        rows, handle, offset = await self.engine.sync(self.sid, self.secret, **self.shape)
        self.rows.update(rows)
        self.task = asyncio.create_task(self._follow(handle, offset))

    async def _follow(self, handle: str, offset: str) -> None:
        while True:
            status, h, body = await self.engine.get(self.sid, self.secret, offset=offset,
                                                    handle=handle, live="true", **self.shape)  # fmt: skip
            self.statuses.append(status)
            if status == 200:
                apply_messages(self.rows, body)
                offset = h["electric-offset"]
            elif status == 409:
                raise AssertionError(f"must-refetch while following: {body}")
            else:
                assert status == 503 and body["message"], (status, body)
                await asyncio.sleep(0.2)  # as the client backs off

    def names(self) -> list[str]:
        return sorted(r["name"] for r in self.rows.values())

    async def until_has(self, name: str, timeout: float = 30) -> None:
        await wait_until_async(lambda: name in self.names(), timeout=timeout,
                               message=f"{name} reaches the follower of {self.sid}")  # fmt: skip

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None


T = TypeVar("T")


async def _answered(coro: Awaitable[T]) -> T:
    started = time.monotonic()
    result: T = await asyncio.wait_for(coro, ANSWER_WITHIN)
    assert time.monotonic() - started < ANSWER_WITHIN
    return result


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("quick_retries")
async def test_one_sources_postgres_stopped_restarted_or_silent_does_not_stall_the_others(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries")
    cluster = FaultCluster()
    stopped: list[int] = []
    followers: list[Follower] = []
    try:
        cluster.start()
        url_a, url_b = cluster.url, make_db()
        make_items(url_a, ["a1"])
        make_items(url_b, ["b1"])
        sql(url_b, "CREATE TABLE other (id int PRIMARY KEY, name text NOT NULL)")
        engine = await engines().start()
        a = await engine.add("faulty", url_a)
        b = await engine.add("healthy", url_b)
        for src in (a, b):
            await engine.wait_state(src["source_id"], "active")
        fa = Follower(engine, a["source_id"], a["secret"], table="items")
        fb = Follower(engine, b["source_id"], b["secret"], table="items")
        followers += [fa, fb]
        await fa.start()
        await fb.start()
        n = 1

        async def b_goes_on() -> None:
            """B's live follower gets a new row and a new shape of B snapshots."""
            nonlocal n
            n += 1
            sql(url_b, "INSERT INTO items VALUES (%s, %s)", (n, f"b{n}"))
            sql(url_b, "INSERT INTO other VALUES (%s, %s)", (n, f"o{n}"))
            await fb.until_has(f"b{n}")
            rows, _, _ = await _answered(
                engine.sync(b["source_id"], b["secret"], table="other", where=f"id = {n}")
            )
            assert [r["name"] for r in rows.values()] == [f"o{n}"]
            status, body = await asyncio.wait_for(engine.api("GET", "/api/sources"), 10)
            assert status == 200 and len(body["sources"]) == 2

        async def a_answers() -> None:
            """A new shape of A is answered (a 503 naming the reason, or 200), not held."""
            status, h, body = await _answered(
                engine.get(a["source_id"], a["secret"], table="items", where="id > 0",
                           offset="-1")
            )  # fmt: skip
            assert status in (200, 503), (status, body)
            if status == 503:
                assert int(h["retry-after"]) > 0 and body["message"], body

        # 1. A's Postgres stopped (as a crash)
        cluster.stop_server("immediate")
        await b_goes_on()
        await a_answers()
        await b_goes_on()
        # back: A's follower resumes, and a row written at once is not lost
        cluster.start()
        sql(url_a, "INSERT INTO items VALUES (2, 'a2')")
        await fa.until_has("a2", timeout=60)
        await b_goes_on()

        # 2. A's Postgres restarted, at once (a fast shutdown waits wal_sender_timeout for
        # the engine's walsender: /work/bugs-for-faults.md)
        cluster.stop_server("immediate")
        cluster.start()
        sql(url_a, "INSERT INTO items VALUES (3, 'a3')")
        await b_goes_on()
        await fa.until_has("a3", timeout=60)

        # 3. A's Postgres silent: every process stopped, connections open, nothing answered
        stopped = cluster.pids()
        cluster.signal(stopped, signal.SIGSTOP)
        await b_goes_on()
        await a_answers()
        await b_goes_on()
        cluster.signal(stopped, signal.SIGCONT)
        stopped = []
        sql(url_a, "INSERT INTO items VALUES (4, 'a4')")
        await fa.until_has("a4", timeout=90)
        await b_goes_on()
        assert fa.names() == ["a1", "a2", "a3", "a4"]
        assert fb.names() == sorted(["b1", *(f"b{i}" for i in range(2, n + 1))])
        assert set(fb.statuses) == {200}, fb.statuses
    finally:
        for f in followers:
            await f.stop()
        if stopped:
            cluster.signal(stopped, signal.SIGCONT)
        cluster.stop()


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("quick_retries")
async def test_an_engine_restarted_while_one_sources_postgres_is_down(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """The engine starts with one source's database down: the other source serves at once
    (its old shape, same handle, and new ones); the down one answers 503, never holds a
    request; once its database is back, its client goes on from its offset, nothing lost."""
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries")
    cluster = FaultCluster()
    try:
        cluster.start()
        url_a, url_b = cluster.url, make_db()
        make_items(url_a, ["a1"])
        make_items(url_b, ["b1"])
        engine = await engines().start()
        a = await engine.add("down", url_a)
        b = await engine.add("up", url_b)
        for src in (a, b):
            await engine.wait_state(src["source_id"], "active")
        rows_a, handle_a, offset_a = await engine.sync(a["source_id"], a["secret"], table="items")
        rows_b, handle_b, offset_b = await engine.sync(b["source_id"], b["secret"], table="items")
        await engine.close()
        cluster.stop_server("immediate")
        sql(url_b, "INSERT INTO items VALUES (2, 'b2')")

        engine = await engines(engine.data_dir).start()
        for _ in range(50):  # B's client goes on with its handle, and gets b2
            status, h, body = await _answered(
                engine.get(b["source_id"], b["secret"], table="items", handle=handle_b,
                           offset=offset_b, live="true")
            )  # fmt: skip
            assert status == 200, (status, body)
            apply_messages(rows_b, body)
            offset_b = h["electric-offset"]
            if len(rows_b) == 2:
                break
        assert sorted(r["name"] for r in rows_b.values()) == ["b1", "b2"]
        fresh, _, _ = await _answered(engine.sync(b["source_id"], b["secret"], table="items",
                                                  where="id = 2"))  # fmt: skip
        assert [r["name"] for r in fresh.values()] == ["b2"]
        status, h, body = await _answered(
            engine.get(a["source_id"], a["secret"], table="items", where="id > 0", offset="-1")
        )
        assert status == 503 and int(h["retry-after"]) > 0, (status, body)

        cluster.start()
        sql(url_a, "INSERT INTO items VALUES (2, 'a2')")
        await engine.wait_state(a["source_id"], "active", timeout=60)
        for _ in range(50):
            status, h, body = await _answered(
                engine.get(a["source_id"], a["secret"], table="items", handle=handle_a,
                           offset=offset_a, live="true")
            )  # fmt: skip
            assert status == 200, (status, body)
            apply_messages(rows_a, body)
            offset_a = h["electric-offset"]
            if len(rows_a) == 2:
                break
        assert sorted(r["name"] for r in rows_a.values()) == ["a1", "a2"]
    finally:
        cluster.stop()
