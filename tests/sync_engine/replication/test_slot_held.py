"""An engine whose replication slot is held by another walsender (a second engine on the same
database in a rolling deploy, or a half-dead replication connection Postgres has not timed out
yet: "replication slot ... is active for PID ...") does not tell anyone it is current.

It served meanwhile: a live request at the tip was answered `up-to-date` with nothing (rows
committed since never came), and a new shape's snapshot held those rows, so a client holding
both shapes was told both were current while they disagreed (attack 12:00/12:16). Now, as
Electric's 503 "Stack not ready": the requests that need the stream (an up-to-date at the tip,
a new snapshot) get 503 + Retry-After with a JSON body saying why; once the slot is free the
engine follows again and the rows come, none lost.

Real path: a private Postgres cluster, the engine as a process, the slot held by a raw
`START_REPLICATION` connection (a walsender that never confirms, as a stuck one).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from multidict import CIMultiDict

from tests.faults.cluster import FaultCluster, hold_slot, until_slot_found_held
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until, wait_until_async
from tests.sync_engine.tenants.harness import PGBIN

SLOT, PUBLICATION = "shapegate_slot_default", "shapegate_pub_default"


def _hold_slot(url: str) -> psycopg.Connection[Any]:
    return hold_slot(url, SLOT, PUBLICATION)


async def _get(
    session: aiohttp.ClientSession, url: str, **params: str
) -> tuple[int, CIMultiDict[str], bytes]:
    async with session.get(
        url + "/v1/shape", params=params, timeout=aiohttp.ClientTimeout(total=60)
    ) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


def _assert_not_ready(answer: tuple[int, CIMultiDict[str], bytes]) -> None:
    status, headers, body = answer
    assert status == 503, (status, headers, body[:300])
    assert "electric-up-to-date" not in headers
    assert int(headers["retry-after"]) > 0
    message = orjson.loads(body)["message"]
    # (by kind only: not Postgres's words, which name the other walsender's PID)
    assert "replication slot is in use by another connection" in message, message
    assert "PID" not in message and SLOT not in message, message


@pytest.mark.timeout(240)
async def test_an_engine_whose_slot_is_held_elsewhere_claims_no_currency(
    tmp_path: Path,
) -> None:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    cluster = FaultCluster()
    holder: psycopg.Connection[Any] | None = None
    args = ("--long-poll-timeout", "2")
    engine = EngineProcess(cluster.url, tmp_path / "data", *args)
    try:
        cluster.start_with_items()
        await asyncio.to_thread(engine.start)
        async with aiohttp.ClientSession() as session:
            # A client follows `items` to its tip.
            status, headers, _ = await _get(session, engine.url, table="items", offset="-1")
            assert status == 200
            handle, offset = headers["electric-handle"], headers["electric-offset"]
            while "electric-up-to-date" not in headers:
                status, headers, _ = await _get(
                    session, engine.url, table="items", offset=offset, handle=handle
                )
                assert status == 200
                offset = headers["electric-offset"]
            engine.stop()

            # Another walsender holds the slot; the engine starts again meanwhile.
            holder = _hold_slot(cluster.url)
            await asyncio.to_thread(
                wait_until,
                lambda: (
                    cluster.query(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
                    )
                    == [(True,)]
                ),
                timeout=30,
                message="the slot held by the other connection",
            )
            engine.spawn()
            await asyncio.to_thread(until_slot_found_held, engine)
            cluster.query("INSERT INTO items VALUES (1001, 7)")

            tip = {"table": "items", "offset": offset, "handle": handle}
            # The old shape's live request at the tip: not "up-to-date" with nothing.
            _assert_not_ready(await _get(session, engine.url, **tip, live="true"))
            # Nor a plain request at the tip, nor an SSE stream from it.
            _assert_not_ready(await _get(session, engine.url, **tip))
            _assert_not_ready(await _get(session, engine.url, **tip, live="true", live_sse="true"))
            # A new shape's snapshot (it would hold row 1001 the old shape cannot get).
            _assert_not_ready(
                await _get(session, engine.url, table="items", where="id > 1000", offset="-1")
            )
            # The old shape's snapshot (already durable, claims nothing) is still served.
            status, headers, _ = await _get(session, engine.url, table="items", offset="-1")
            assert status == 200 and headers["electric-handle"] == handle

            # The slot is let go: the engine follows again, and the row comes.
            holder.close()
            holder = None
            rows: list[dict[str, Any]] = []

            async def row_came() -> bool:
                status, headers, body = await _get(session, engine.url, **tip, live="true")
                if status == 200:
                    rows.extend(m for m in orjson.loads(body) if "key" in m)
                    tip["offset"] = headers["electric-offset"]
                return any(m["value"]["id"] == "1001" for m in rows)

            await wait_until_async(row_came, timeout=90, message="row 1001 delivered")
            status, _, body = await _get(
                session, engine.url, table="items", where="id > 1000", offset="-1"
            )
            assert status == 200, body
    finally:
        if holder is not None:
            holder.close()
        engine.stop()
        cluster.stop()
