"""The same URL answers the same bytes before and after the engine is SIGKILLed (and
Postgres restarted): a response caches (CDNs, browsers) under its URL, so a shape's
`(handle, offset)` must never name two different bodies.

The engine (small chunks: chunks are cut all the time, also inside transactions) serves a
few shapes and a storm of small ones (packed snapshots) while a writer commits; a crawler
walks every shape from `-1` through each chunk to up-to-date, non-live as a client's
catch-up does, and records every answer. The engine is SIGKILLed mid-writes, Postgres is
restarted (immediate), the engine started again, more is written, and every recorded URL is
asked again: an answer that was not up-to-date (a finished chunk) must come back byte for
byte, with the same `electric-offset`; one that ended up-to-date at the tip then may have
grown since, but only by appending: its changes are a prefix of the new answer's. No shape
whose snapshot was read to its end may be lost to the restart (no 409); one whose snapshot
the kill cut short (a storm of new shapes is started just before it) is gone, as in
Electric: its clients get a 409 and refetch, never other bytes under its handle.

Real path: the engine as a process, a private Postgres cluster, a writer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Writer
from tests.support.waiting import wait_until_async

WHERES = [None, "id % 2 = 0", "v > 0", "id > 10000"]
STORM = 20


class Answer:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers

    @property
    def up_to_date(self) -> bool:
        return "electric-up-to-date" in self.headers

    def changes(self) -> list[Any]:
        return [m for m in orjson.loads(self.body) if "key" in m]


async def _ask(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> Answer:
    for _ in range(200):
        try:
            async with session.get(
                url + "/v1/shape", params=params, timeout=aiohttp.ClientTimeout(total=30)
            ) as r:
                body = await r.read()
                if r.status == 503:
                    await asyncio.sleep(0.2)
                    continue
                return Answer(r.status, body, {k.lower(): v for k, v in r.headers.items()})
        # A slow answer (snapshots queued on a loaded machine) is asked again; a hang is
        # the test's own timeout (300 s), not this one's.
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.2)
    raise AssertionError(f"no answer but 503 for {params}")


async def _crawl(
    session: aiohttp.ClientSession, url: str, shape: dict[str, str]
) -> dict[tuple[tuple[str, str], ...], Answer]:
    """Every answer from -1 to up-to-date, by its query."""
    seen: dict[tuple[tuple[str, str], ...], Answer] = {}
    params = {**shape, "offset": "-1"}
    for _ in range(10_000):
        answer = await _ask(session, url, params)
        if answer.status == 409 and "handle" in params:
            # its snapshot did not finish before the kill (its first chunks are served while
            # the rest is read): such a shape is gone after a restart, as in Electric
            seen[tuple(sorted(params.items()))] = answer
            return seen
        assert answer.status == 200, (params, answer.status, answer.body[:300])
        seen[tuple(sorted(params.items()))] = answer
        if answer.up_to_date:
            return seen
        params = {
            **shape,
            "offset": answer.headers["electric-offset"],
            "handle": answer.headers["electric-handle"],
        }
    raise AssertionError("never up to date")


async def _record(
    session: aiohttp.ClientSession,
    url: str,
    shapes: list[dict[str, str]],
    recorded: dict[tuple[tuple[str, str], ...], Answer],
) -> None:
    """Crawl every shape and keep the first answer of each URL."""
    crawls = await asyncio.gather(*(_crawl(session, url, s) for s in shapes))
    for crawl in crawls:
        for query, answer in crawl.items():
            recorded.setdefault(query, answer)


async def _until_committed(writer: Writer, target: int) -> None:
    await wait_until_async(lambda: writer.committed >= target, timeout=60, message="writes")


@pytest.mark.timeout(300)
async def test_every_url_answers_the_same_bytes_across_a_kill_and_a_postgres_crash(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    engine = EngineProcess(
        cluster.url, tmp_path / "data", "--long-poll-timeout", "2", "--chunk-bytes", "1500"
    )
    await asyncio.to_thread(engine.start)
    writer = Writer(cluster.url)
    stop_writer = asyncio.Event()
    shapes = [{"table": "items", **({"where": w} if w else {})} for w in WHERES]
    shapes += [{"table": "items", "where": f"id <> {n}"} for n in range(STORM)]
    recorded: dict[tuple[tuple[str, str], ...], Answer] = {}
    try:
        async with aiohttp.ClientSession() as session:
            writing = asyncio.create_task(writer.run(stop_writer))
            for target in (60, 120):
                await _until_committed(writer, target)
                await _record(session, engine.url, shapes, recorded)
            # crawling on while the engine is killed: what it answered last must be on disk
            # and a storm of new shapes in flight (snapshots, packs) when it is killed
            storm = [{"table": "items", "where": f"id <> {-n}"} for n in range(1, STORM + 1)]
            crawling = asyncio.create_task(_record(session, engine.url, shapes + storm, recorded))
            await asyncio.sleep(0.3)
            engine.kill()
            await asyncio.to_thread(cluster.stop_server, "immediate")
            await asyncio.to_thread(cluster.start)
            await asyncio.to_thread(engine.start)
            await crawling
            await _until_committed(writer, writer.committed + 60)
            stop_writer.set()
            await writing

            # a shape whose snapshot a client read to its end is on disk: it must be there
            finished = {a.headers["electric-handle"] for a in recorded.values() if a.up_to_date}
            changed: list[str] = []
            for query, before in recorded.items():
                if before.status != 200:
                    assert dict(query)["handle"] not in finished, (query, before.status)
                    continue
                after = await _ask(session, engine.url, dict(query))
                where = f"{dict(query)}: "
                handle = before.headers["electric-handle"]
                if handle not in finished and (
                    after.status == 409 or after.headers.get("electric-handle") != handle
                ):
                    continue  # (a snapshot the kill cut short: a refetch, a new handle at -1)
                if after.status != 200:
                    changed.append(f"{where}{after.status} {after.body[:200]!r}")
                elif not before.up_to_date:
                    if after.body != before.body:
                        changed.append(f"{where}body differs")
                    elif after.headers["electric-offset"] != before.headers["electric-offset"]:
                        changed.append(f"{where}offset differs")
                elif after.changes()[: len(before.changes())] != before.changes():
                    changed.append(f"{where}what was served is not a prefix of the answer now")
            assert not changed, f"{len(changed)} of {len(recorded)} URLs: {changed[:5]}"
    finally:
        stop_writer.set()
        engine.stop()
