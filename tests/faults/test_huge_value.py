"""One row with a huge value is written while the engine goes on answering, and arrives whole.

A single 200 MB text value used to be decoded, encoded, checksummed and written to its shape's
log in one synchronous call, copied five times on the way (engine memory +950 MB), and no
request of any source was answered meanwhile (27 s under load, even /v1/health). Now a
transaction with that many bytes of rows is written as a big one: its record's body a few MB
at a time, the event loop running in between.

Real path: the engine as a process (fsync on), a private cluster. What the test watches is
the shape's log file on disk: /v1/health answered while the file held part of the value and
not all of it, which a write in one call never shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess

#: Big enough to be written in many pieces (`files.PACE_BYTES`, 1 MB), small enough to cost
#: Postgres and the engine a second or two.
SIZE = 16 * 1000 * 1000


def _log_bytes(data: Path) -> int:
    return sum(f.stat().st_size for f in data.rglob("*.log.*.log"))


@pytest.mark.timeout(120)
async def test_a_huge_value_is_written_while_the_engine_answers(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    db = cluster
    db.query("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    engine = EngineProcess(db.url, tmp_path / "data", "--long-poll-timeout", "5")
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{engine.url}/v1/shape?table=docs"
            async with session.get(f"{url}&offset=-1") as r:
                assert r.status == 200
                handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
            insert = asyncio.create_task(
                asyncio.to_thread(db.query, f"INSERT INTO docs VALUES (1, repeat('x', {SIZE}))")
            )
            data = tmp_path / "data"
            answered_mid_write = False
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while loop.time() < deadline:
                before = _log_bytes(data)
                async with session.get(f"{engine.url}/v1/health") as r:
                    assert r.status == 200
                after = _log_bytes(data)
                if 0 < before and after < SIZE:
                    answered_mid_write = True  # (part of it written before, not all after)
                    break
                if before >= SIZE:
                    break
                await asyncio.sleep(0.001)
            await insert
            assert answered_mid_write, "no answer while the value was being written"
            # ... and it arrives whole, once.
            rows: dict[str, str] = {}
            while not rows:
                async with session.get(
                    f"{url}&offset={offset}&handle={handle}&live=true",
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as r:
                    assert r.status == 200, r.status
                    offset = r.headers["electric-offset"]
                    for m in await r.json():
                        if "key" in m:
                            assert m["headers"]["operation"] == "insert"
                            assert m["key"] not in rows
                            rows[m["key"]] = m["value"]["body"]
            assert list(rows) == ['"public"."docs"/"1"']
            assert rows['"public"."docs"/"1"'] == "x" * SIZE
        assert "stream lost" not in engine.log_tail(100_000)
    finally:
        engine.stop()
