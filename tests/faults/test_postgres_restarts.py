"""Postgres restarted under a running engine (fast, and immediate as in a crash), and
unreachable meanwhile: the engine recovers by itself and loses nothing.

The real path: the engine as a process, a private Postgres cluster stopped with `pg_ctl`
while a writer commits and clients follow two shapes over HTTP. While Postgres is down a
new shape gets a 503 with a JSON body and `Retry-After` (not a 500, not a hang), and so
does an existing shape's `-1` (its table cannot be checked to be still the same one);
followers further on are still served from the logs; once it is back, every follower ends equal to
`SELECT`, every change seen exactly once, without a 409 (the slot survived, so the logs
are still whole).

An immediate stop is a crash: the slot's confirmed position goes back to the last
checkpoint, so the engine is sent transactions it already has and must skip them; and
libpq closes the dead connections' sockets, whose numbers the next accepted HTTP
connection gets (a registration left on one spun the event loop, and every request hung).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.faults.cluster import FaultCluster, StopMode
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows, follow_all
from tests.support.waiting import wait_until_async

WHERES = [None, "id % 2 = 0"]


async def _committed(writer: Writer, count: int, what: str) -> None:
    target = writer.committed + count
    await wait_until_async(lambda: writer.committed >= target, timeout=60, message=what)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_under_the_engine_loses_nothing(
    cluster: FaultCluster, tmp_path: Path, mode: StopMode
) -> None:
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w) for w in WHERES]
    writer = Writer(cluster.url)
    stop_followers, stop_writer = asyncio.Event(), asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, followers, stop_followers)
            writing = asyncio.create_task(writer.run(stop_writer))
            await _committed(writer, 30, "writes before the stop")
            # A shape made after the last checkpoint: an immediate stop sends the slot back
            # before its snapshot, so it is sent transactions its snapshot already holds.
            late = Follower(engine.url, "v >= 0")
            followers.append(late)
            tasks.append(asyncio.create_task(late.run(session, stop_followers)))
            await wait_until_async(lambda: late.live, timeout=30, message="late follower live")
            await _committed(writer, 10, "writes after the late shape")

            await asyncio.to_thread(cluster.stop_server, mode)
            # A new shape cannot be made: a quick 503 with a JSON body saying why.
            async with session.get(
                engine.url + "/v1/shape",
                params={"table": "items", "where": "id > 5", "offset": "-1"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                body = await r.read()
                assert r.status == 503, body
                assert "retry-after" in r.headers
                assert isinstance(orjson.loads(body)["message"], str)
            # An existing shape's -1: its table cannot be checked, so a 503, never the
            # log unchecked (it may be a dropped table's).
            async with session.get(
                engine.url + "/v1/shape",
                params={"table": "items", "offset": "-1"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                body = await r.read()
                assert r.status == 503 and "retry-after" in r.headers, body
                assert orjson.loads(body)["code"] == "database_unreachable", body
            await asyncio.to_thread(cluster.start)

            await _committed(writer, 30, "writes after the restart")
            stop_writer.set()
            await writing
            expected = [expected_rows(cluster.url, f.where) for f in followers]
            await wait_until_async(
                lambda: all(f.rows == e for f, e in zip(followers, expected, strict=True)),
                timeout=60,
                message="followers equal to SELECT",
            )
            stop_followers.set()
            await asyncio.gather(*tasks)
        for f in followers:
            f.assert_clean(resets=False)
        log = engine.log_tail(200_000)
        assert "Exception in callback" not in log, log[-3000:]
        assert "Traceback" not in log.replace('"traceback"', "Traceback"), log[-3000:]
    finally:
        stop_writer.set()
        stop_followers.set()
        engine.stop()


@pytest.mark.timeout(120)
async def test_an_engine_started_before_postgres_answers_503_meanwhile(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """Started while Postgres is down, the engine answers at once: health not 200, a shape
    503 with a JSON body and `Retry-After`; it used to hold its port silent (every request
    hung) until Postgres came up. Once it is up the engine serves by itself."""
    await asyncio.to_thread(cluster.stop_server, "fast")
    engine = EngineProcess(cluster.url, tmp_path / "data", "--long-poll-timeout", "2")
    engine.spawn()
    try:
        async with aiohttp.ClientSession() as session:

            async def health() -> int:
                try:
                    async with session.get(
                        engine.url + "/v1/health", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        return r.status
                except (aiohttp.ClientError, TimeoutError):
                    return 0

            assert await wait_until_async(health, timeout=30, message="an answer") != 200
            async with session.get(
                engine.url + "/v1/shape",
                params={"table": "items", "offset": "-1"},
                timeout=aiohttp.ClientTimeout(total=15),
            ) as r:
                body = await r.read()
                assert r.status == 503 and "retry-after" in r.headers, body
                assert isinstance(orjson.loads(body)["message"], str)
            await asyncio.to_thread(cluster.start)
            await wait_until_async(
                lambda: _is(health(), 200), timeout=30, message="health 200 once Postgres is up"
            )
            follower = Follower(engine.url)
            stop = asyncio.Event()
            task = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, timeout=30, message="synced")
            stop.set()
            await task
        assert follower.rows == expected_rows(cluster.url, None)
    finally:
        engine.stop()


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_subset_after_a_postgres_restart_is_answered(
    cluster: FaultCluster, tmp_path: Path, mode: StopMode
) -> None:
    """A subset query after Postgres restarted, once it is up again: answered. Its pooled
    connection had died with the restart and was handed out as it was: a 503 'Database is
    unreachable' from a database that answered."""
    engine = EngineProcess(cluster.url, tmp_path / "data")
    await asyncio.to_thread(engine.start)
    params = {"table": "items", "offset": "-1", "subset__where": "id > 15"}
    try:
        async with aiohttp.ClientSession() as session:

            async def subset() -> tuple[int, bytes]:
                async with session.get(engine.url + "/v1/shape", params=params) as r:
                    return r.status, await r.read()

            status, body = await subset()
            assert status == 200, body
            before = [m["value"] for m in orjson.loads(body)["data"]]
            await asyncio.to_thread(cluster.stop_server, mode)
            await asyncio.to_thread(cluster.start)
            status, body = await subset()
            assert status == 200, body
            assert [m["value"] for m in orjson.loads(body)["data"]] == before
    finally:
        engine.stop()
