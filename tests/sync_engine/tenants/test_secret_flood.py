"""A flood of wrong secrets: bounded, answered at once past the bound, and the clients whose
secret is known keep syncing meanwhile (real engine in-process, real Postgres)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from sync_engine.tenants import auth as auth_module
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import UNAUTHORIZED, MultiEngine, make_items, sql

FLOOD = 100


async def _flood_request(session: aiohttp.ClientSession, url: str, sid: str, i: int) -> Any:
    params = {"table": "items", "offset": "-1", "source_id": sid, "secret": f"wrong-{i}"}
    async with session.get(url, params=params) as resp:
        return resp.status, resp.headers.get("retry-after"), orjson.loads(await resp.read())


async def test_a_flood_of_wrong_secrets_is_bounded_and_known_secrets_keep_syncing(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    scrypt_secrets: None,
) -> None:
    """A source with a scrypt hash (registered before schema 4): its wrong secrets are
    checked in worker threads. Those threads are held here (a slow machine, a long flood),
    so every further check waits: the waiting ones stop at the bound and the rest are told
    503 at once; a client whose secret was verified before does not wait at all. The queue
    grew without bound before (300 waiting, no answer)."""
    url = make_db()
    make_items(url, ["a1"])
    # a bound of 8 (32 by default): the same checks, a quarter of the scrypt work at the end
    monkeypatch.setattr(auth_module, "MAX_WAITING_PER_SOURCE", 8)
    engine = await engines().start()
    src = await engine.add("flooded", url)
    sid, secret = src["source_id"], src["secret"]
    await engine.wait_state(sid, "active")
    rows, handle, offset = await engine.sync(sid, secret, table="items")  # verified: known
    auth = engine.manager.auth
    gate = threading.Event()
    real = auth_module._verify_all

    def held(given: str, hashes: list[str]) -> list[bool]:
        if given != secret:
            gate.wait(60)
        return real(given, hashes)

    monkeypatch.setattr(auth_module, "_verify_all", held)
    assert engine.client is not None
    shape_url = str(engine.client.make_url("/v1/shape"))
    answers: list[Any] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            answers.append(await _flood_request(session, shape_url, sid, i))

        flood = [asyncio.create_task(one(i)) for i in range(FLOOD)]
        try:
            bound = auth_module.MAX_WAITING_PER_SOURCE
            # `bound` checks of the source at most, those in the two threads included
            await wait_until_async(lambda: len(answers) >= FLOOD - bound, timeout=60,
                                   message="the requests past the bound answered")  # fmt: skip
            await wait_until_async(lambda: auth.waiting == bound - 2, message="queued")
            assert len(answers) == FLOOD - bound and auth.active == bound
            for status, retry_after, body in answers:
                assert status == 503 and retry_after is not None and int(retry_after) > 0
                assert body["code"] == "secret_checks_busy" and body["message"], body
            # the known client syncs while every check thread is held and the queue full
            for n in range(2, 5):
                sql(url, "INSERT INTO items VALUES (%s, %s)", (n, f"a{n}"))
                while f"a{n}" not in [r["name"] for r in rows.values()]:
                    offset = await engine.follow(sid, secret, handle, offset, rows,
                                                 table="items")  # fmt: skip
                assert auth.waiting == bound - 2
        finally:
            gate.set()
        await asyncio.gather(*flood)
    late = answers[FLOOD - bound :]
    assert [(s, b) for s, _, b in late] == [(401, UNAUTHORIZED)] * bound
    assert auth.waiting == 0 and auth.active == 0


async def test_wrong_secrets_for_a_source_registered_now_cost_nothing_to_check(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """Secrets issued now are salted SHA-256 hashes: a wrong one is refused on the event
    loop without a worker thread or a queue (with scrypt, 1,000 of them took ~50 s of CPU
    here, two at a time, in front of every new client)."""
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    src = await engine.add("fast", url)
    sid, secret = src["source_id"], src["secret"]
    await engine.wait_state(sid, "active")
    assert engine.client is not None
    shape_url = str(engine.client.make_url("/v1/shape"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        answers = await asyncio.gather(
            *(_flood_request(session, shape_url, sid, i) for i in range(1000)),
            *(_flood_request(session, shape_url, "00000000-0000-4000-8000-00000000000f", i)
              for i in range(200)),
        )  # fmt: skip
    assert {(s, orjson.dumps(b)) for s, _, b in answers} == {(401, orjson.dumps(UNAUTHORIZED))}
    assert engine.manager.auth._executor is None  # no check ever needed a thread
    rows, _, _ = await engine.sync(sid, secret, table="items")
    assert [r["name"] for r in rows.values()] == ["a1"]
