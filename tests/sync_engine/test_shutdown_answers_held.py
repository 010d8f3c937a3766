"""SIGTERM answers the requests the engine holds (a 503 with Retry-After their client retries)
before it stops, as README says: they were cut without an answer once the server's shutdown
timeout ran out (newuser 16:57: `curl` got nothing, the proxy a 502 `upstream_unreachable`).

Real path: the engine as a process, a held long-poll and a held SSE stream, SIGTERM.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import psycopg

from tests.support.engine_process import EngineProcess


async def test_sigterm_answers_held_long_polls_and_sse_streams(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 0)")
    engine = EngineProcess(db_url, tmp_path / "data", "--long-poll-timeout", "60")
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            url = f"{engine.url}/v1/shape"
            async with session.get(url, params={"table": "items", "offset": "-1"}) as r:
                assert r.status == 200
                handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
            live = {"table": "items", "handle": handle, "offset": offset, "live": "true"}

            async def held(params: dict[str, str]) -> tuple[int, str, bytes]:
                async with session.get(url, params=params) as r:
                    return r.status, r.headers.get("Retry-After", ""), await r.read()

            poll = asyncio.create_task(held(live))
            sse = asyncio.create_task(held({**live, "live_sse": "true"}))
            await engine.until_parked(2)
            assert engine.proc is not None
            engine.proc.terminate()  # SIGTERM
            status, retry_after, body = await poll
            assert (status, retry_after) == (503, "1"), body
            assert b'"code":"stopping"' in body.replace(b" ", b"")
            status, _, body = await sse  # (a stream already begun: it ends, whole)
            assert status in (200, 503), (status, body)
            await asyncio.to_thread(engine.proc.wait, 30)
    finally:
        engine.stop()
    assert engine.proc.returncode == 0
    assert "stopped" in engine.log.read_text()
