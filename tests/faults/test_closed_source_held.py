"""The held requests of a source paused through the admin API are answered at once with
what their next request would get (a 503 `source_paused`), not cut off after a grace
period (5 s): a long-poll at the tip, an SSE stream, and a request waiting for a
snapshot (its table locked in Postgres). Real Postgres, the engine served in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg

from tests.sync_engine.tenants.conftest import engines, make_db  # noqa: F401 (fixtures)
from tests.sync_engine.tenants.harness import MultiEngine, make_items


async def _sse(engine: MultiEngine, sid: str, secret: str, **params: Any) -> tuple[int, bytes]:
    """Status and whole body of an SSE stream; raises if the stream is cut off unfinished."""
    assert engine.client is not None
    q = {k: str(v) for k, v in params.items()}
    q |= {"source_id": sid, "secret": secret, "live": "true", "live_sse": "true"}
    resp = await engine.client.get("/v1/shape", params=q)
    return resp.status, await resp.read()


async def test_held_requests_of_a_paused_source_get_its_503_at_once(
    engines: Callable[..., MultiEngine],  # noqa: F811
    make_db: Callable[[], str],  # noqa: F811
) -> None:
    url = make_db()
    make_items(url, ["a1"])
    # held for a minute unless answered: a request cut off (the old way) is not an answer
    engine = await engines(long_poll_timeout=60.0, sse_timeout=60.0).start()
    a = await engine.add("alpha", url)
    sid, secret = a["source_id"], a["secret"]
    await engine.wait_state(sid, "active")
    _, handle, offset = await engine.sync(sid, secret, table="items")
    held = {"table": "items", "offset": offset, "handle": handle}

    # a snapshot that waits on a lock: its request waits for the first chunk
    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        snapshot = asyncio.create_task(
            engine.get(sid, secret, table="items", where="id > 0", offset="-1")
        )
        long_poll = asyncio.create_task(engine.get(sid, secret, live="true", **held))
        stream = asyncio.create_task(_sse(engine, sid, secret, **held))
        await engine.until_parked(sid, 3)

        pause = asyncio.create_task(engine.api("POST", f"/api/sources/{sid}/pause"))
        # answered while the lock still holds the snapshot query
        done, _ = await asyncio.wait({snapshot, long_poll, stream}, timeout=30)
        assert done == {snapshot, long_poll, stream}, "a held request was not answered"
        locker.rollback()
    status, body = await asyncio.wait_for(pause, 30)
    assert status == 200 and body["state"] == "paused", body

    for task in (long_poll, snapshot):
        status, headers, got = task.result()  # (cut off: a disconnect error here)
        assert status == 503 and got["code"] == "source_paused", (status, got)
        assert headers["retry-after"] and headers["content-type"].startswith("application/json")
        # the very answer the next request gets
        again = await engine.get(sid, secret, live="true", **held)
        assert (again[0], again[2]) == (status, got)
    status, sse_body = stream.result()  # a stream ended whole, not cut off
    assert status == 200 and b"a1" not in sse_body, sse_body
