"""A client that the cache puts a few chunks behind stays on SSE through the nginx tier.

    npm client (liveSse) -> nginx (config/nginx, real) -> counting pass-through -> engine

nginx answers a new client's catch-up at the tip from its cache (the engine marks it
`max-age=60, stale-while-revalidate=300`, as Electric does; Electric's own cache.test.ts wants it
cached), so the client goes live at an older offset. When the shape grew by several chunks since,
the engine answered that SSE request with one chunk and ended the stream; the client resumed from
there and got the next chunk, and so on: streams of a few milliseconds. Client 1.5.28 takes an SSE
stream under 1 s as a buffering proxy, and after three in a row falls back to long polling for
good (console.warn "... Falling back to long polling ..."). nginx streams SSE unbuffered and
uncached (`@shapegate_sse`) and its timeouts are above the engine's 60 s stream: the short
streams were the engine's answers, not nginx's doing (see docs/cdn.md, "SSE behind a cache").

The engine here runs with 2 kB chunks, so a backlog of 12 rows of 0.6 kB spans several chunks (as
a busy shape's 10 MB chunks do in production).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.cdn.test_nginx import ROOT, SECRET, Stack, _stack
from tests.support.waiting import wait_until_async

SCRIPT = Path(__file__).with_name("sse_behind_cache.mjs")
CHUNK_BYTES = "2000"


@pytest.fixture
async def small_chunk_stack(db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with _stack(db_url, tmp_path, {"SYNC_ENGINE_CHUNK_BYTES": CHUNK_BYTES}) as s:
        yield s


async def _engine_catch_up(stack: Stack, handle: str, offset: str) -> tuple[int, set[int]]:
    """Non-live requests straight to the engine (not through nginx, whose cache must keep what
    client A left there) from `offset` to up-to-date: how many, and the ids they carried."""
    ids: set[int] = set()
    async with aiohttp.ClientSession() as s:
        for n in range(1, 200):
            params = {"table": "items", "secret": SECRET, "handle": handle, "offset": offset}
            async with s.get(f"{stack.counter.engine}/v1/shape", params=params) as r:
                assert r.status == 200, await r.text()
                ids |= {int(m["value"]["id"]) for m in await r.json() if "value" in m}
                if "electric-up-to-date" in r.headers:
                    return n, ids
                offset = r.headers["electric-offset"]
    raise AssertionError("never up to date")


async def test_a_client_the_cache_puts_chunks_behind_stays_on_sse(
    small_chunk_stack: Stack,
) -> None:
    stack = small_chunk_stack
    node = shutil.which("node")
    if node is None or not (ROOT / "tests/node/node_modules/@electric-sql/client").is_dir():
        pytest.fail("needs node and `make node-deps` (cd tests/node && npm ci)")
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), f"{stack.nginx}/v1/shape", SECRET,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def report(phase: str) -> dict[str, Any]:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, (await proc.stderr.read()).decode()[-5000:]
        got: dict[str, Any] = json.loads(line)
        assert got["phase"] == phase, got
        return got

    try:
        a = await report("a")
        # The shape grows by 12 transactions while nobody follows it.
        for i in range(100, 112):
            stack.sql(f"INSERT INTO items VALUES ({i}, repeat('x', 600))")

        async def in_the_log() -> bool:
            return (
                set(range(100, 112)) <= (await _engine_catch_up(stack, a["handle"], a["offset"]))[1]
            )

        await wait_until_async(in_the_log, message="the 12 inserts in the shape log")
        chunks, _ = await _engine_catch_up(stack, a["handle"], a["offset"])
        assert chunks >= 3, f"the backlog spans {chunks} chunk(s): the test would prove nothing"

        proc.stdin.write(b"go 17\n")  # 5 rows + 12
        await proc.stdin.drain()
        b = await report("b")
        requests = b["requests"]
        live = [r for r in requests if r["live"] == "true"]
        # The premise: B's catch-up came from nginx's cache and left it where A was.
        assert any(r["cache"] in ("HIT", "STALE") and r["live"] is None for r in requests), b
        assert live and live[0]["offset"] == a["offset"] and live[0]["sse"] == "true", b
        # What the client made of it: still on SSE, one stream open, no fallback.
        assert b["fallbacks"] == 0, b
        assert requests[-1]["sse"] == "true" and not requests[-1]["ended"], b

        # ... and a new change comes over that same stream.
        stack.sql("INSERT INTO items VALUES (500, 'live over sse')")
        proc.stdin.write(b"live 500\n")
        await proc.stdin.drain()
        after = await report("live")
        assert after["fallbacks"] == 0, after
        assert len(after["requests"]) == len(requests), after
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_sse_answer_through_the_tier_still_says_not_to_buffer_it(
    small_chunk_stack: Stack,
) -> None:
    """The engine marks every SSE answer `X-Accel-Buffering: no`, for any nginx or CDN in
    front of it (docs/cdn.md). nginx takes `X-Accel-*` upstream headers for itself and drops
    them, so through the tier (and the proxy in front of it) the client's answer had none: a
    user's own nginx in front then buffered the stream, and client 1.5.28 falls back to long
    polling after three streams it takes for buffered (twin 05:27). The tier passes it on."""
    stack = small_chunk_stack
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.url(offset="-1")) as r:
            assert r.status == 200
            handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
        live = {"handle": handle, "offset": offset, "live": "true", "live_sse": "true"}
        seen = []
        for base in (f"{stack.counter.engine}/v1/shape?", f"{stack.nginx}/v1/shape?"):
            url = base + urlencode({"table": "items", **live, "secret": SECRET})
            async with s.get(url) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                seen.append(r.headers.get("X-Accel-Buffering"))
    assert seen == ["no", "no"], seen
