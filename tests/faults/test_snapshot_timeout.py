"""A where clause cheap to send but costly per row no longer keeps a Postgres backend busy
without end (`--snapshot-timeout`).

A balanced tree of concatenations of a text column (`length(((name||name)||...)) > 0`, a
few KB in a URL) makes every row a copy hundreds of times its size: on 20,000 rows of 5,000
characters a backend ran at 100% CPU for more than 70 s, long after its client had gone,
and up to `--max-initial-syncs` of them could run at once. Each snapshot statement with a
where clause (and each subset query) now has a `statement_timeout`: the backend is free
again when it fires, the waiting clients get a clear 503 (Electric's answer to a slow
snapshot query: the client retries after Retry-After), no part of the snapshot is served,
and the shape is not kept (the next request starts over). Whole-table snapshots are not
limited: their cost is the table's, which no client chooses.

Real path: the engine as a process, real Postgres; the query costs far more than the
timeout (tens of seconds on the old code, where the request is still waiting when the
client gives up), so no timing luck is involved.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.faults.costly import COSTLY, busy_backends, wide_items
from tests.support.engine_process import EngineProcess


@pytest.mark.timeout(90)
async def test_a_costly_where_is_cancelled_and_its_clients_told(
    db_url: str, tmp_path: Path
) -> None:
    wide_items(db_url, 4000)
    engine = EngineProcess(
        db_url, tmp_path / "data", "--snapshot-timeout", "1", "--long-poll-timeout", "1"
    )
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{engine.url}/v1/shape"
            timeout = aiohttp.ClientTimeout(total=15)
            # 1. the snapshot of a shape with that where
            q = {"table": "items", "offset": "-1", "where": COSTLY}
            started = time.monotonic()
            async with session.get(url, params=q, timeout=timeout) as r:
                body = await r.read()
                assert r.status == 503, (r.status, body[:300])
                assert r.headers["content-type"].startswith("application/json")
                assert int(r.headers["retry-after"]) >= 1
                answer = orjson.loads(body)
                assert answer["code"] == "snapshot_timeout", answer
                assert "too long" in answer["message"], answer
                handle = r.headers.get("electric-handle")
            assert time.monotonic() - started < 12
            assert busy_backends(db_url) == 0  # the statement was cancelled, not left
            # nothing of it is served: the handle, if named, is gone
            if handle is not None:
                q2 = {"table": "items", "offset": "0_0", "handle": handle, "where": COSTLY}
                async with session.get(url, params=q2, timeout=timeout) as r:
                    assert r.status in (409, 503), r.status
            # 2. a whole-table shape of the same table is not limited, and serves
            q = {"table": "items", "offset": "-1"}
            async with session.get(url, params=q, timeout=timeout) as r:
                assert r.status == 200
                handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
                rows = [m for m in orjson.loads(await r.read()) if "key" in m]
                while "electric-up-to-date" not in r.headers:
                    q = {"table": "items", "offset": offset, "handle": handle}
                    async with session.get(url, params=q, timeout=timeout) as r:
                        assert r.status == 200
                        offset = r.headers["electric-offset"]
                        rows += [m for m in orjson.loads(await r.read()) if "key" in m]
            assert len(rows) == 4000
            # 3. a subset query with that where, on the whole-table shape
            q = {"table": "items", "offset": offset, "handle": handle, "subset__where": COSTLY}
            async with session.get(url, params=q, timeout=timeout) as r:
                body = await r.read()
                assert r.status == 503, (r.status, body[:300])
                # (subset.py, another owner's, still words a cancelled statement as the
                # database unreachable: asked in /work/bugs-for-where.md)
                assert orjson.loads(body)["code"] in ("snapshot_timeout", "database_unreachable")
            assert busy_backends(db_url) == 0
    finally:
        await asyncio.to_thread(engine.stop)
