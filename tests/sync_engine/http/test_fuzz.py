"""The engine under a seeded storm of random and malformed requests, as a real process.

Thousands of requests (`tests/support/fuzz_inputs.py`: odd tables, where fragments including ones
that fail only in Postgres or nest hundreds of levels, columns, offsets, handles, flags,
numbered params, subset params and POST bodies, percent-escapes of invalid UTF-8, NUL
bytes, huge and repeated values) against `python -m sync_engine` over real Postgres. What a
user checks: no 5xx, every 4xx a JSON body, no traceback or ERROR in the engine's log,
and afterwards the engine is healthy and still syncing (a follower receives a new insert).
The counts by status are printed (`-s`) for the record.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from yarl import URL

from tests.support.engine_process import EngineProcess, apply_messages
from tests.support.fuzz_inputs import (
    ITEMS_DDL,
    FuzzRequest,
    edge_requests,
    loud_log_lines,
    raw_requests,
    shape_requests,
)

SEED = int(os.environ.get("FUZZ_SEED", "20261203"))
COUNT = int(os.environ.get("FUZZ_COUNT", "2400"))
RAW_COUNT = 200
CONCURRENCY = 24


@pytest.fixture
def engine_proc(db_url: str, tmp_path: Path) -> Iterator[EngineProcess]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(ITEMS_DDL)
        conn.execute(
            "INSERT INTO items SELECT g, CASE WHEN g % 7 = 0 THEN 'secret-' || g ELSE g::text END,"
            " g % 10, ARRAY['a', 't' || g], '2024-01-01'::timestamptz + g * interval '1 hour'"
            " FROM generate_series(1, 50) g"
        )
    engine = EngineProcess(
        db_url, tmp_path / "data",
        "--long-poll-timeout", "1", "--sse-timeout", "1", "--no-fsync", "--allow-delete",
    )  # fmt: skip
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


async def sync(session: aiohttp.ClientSession, base: str) -> tuple[dict[str, Any], str, str]:
    rows: dict[str, Any] = {}
    params = {"table": "items", "offset": "-1"}
    while True:
        async with session.get(base + "/v1/shape", params=params) as resp:
            assert resp.status == 200, await resp.text()
            apply_messages(rows, await resp.json())
            handle, offset = resp.headers["electric-handle"], resp.headers["electric-offset"]
            if "electric-up-to-date" in resp.headers:
                return rows, handle, offset
        params = {"table": "items", "offset": offset, "handle": handle}


async def send(
    session: aiohttp.ClientSession, base: str, req: FuzzRequest, handle: str, offset: str
) -> tuple[int, bytes, str]:
    query = req.query.replace("%7Bhandle%7D", handle).replace("%7Boffset%7D", offset)
    url = URL(base + "/v1/shape?" + query if query else base + "/v1/shape", encoded=True)
    async with session.request(req.method, url, data=req.body, headers=req.headers) as resp:
        return resp.status, await resp.read(), resp.headers.get("content-type", "")


async def send_raw(host: str, port: int, data: bytes) -> tuple[int, bytes, str]:
    """One raw request on its own connection; the status, body and content type."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(lines[0].split()[1]), body, headers.get("content-type", "")


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def check_answer(req: FuzzRequest, status: int, raw: bytes, content_type: str) -> str | None:
    """What is wrong with one answer, or None."""
    if status >= 500:
        return f"{status}: {raw[:300]!r}"
    if 400 <= status < 500 and req.method != "HEAD":
        if not content_type.startswith("application/json"):
            return f"{status} with content-type {content_type!r}: {raw[:200]!r}"
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return f"{status} with a body that is not JSON: {raw[:200]!r}"
        if status != 409 and not isinstance(body.get("message", body.get("error")), str):
            return f"{status} without a message: {raw[:200]!r}"
    if b"secret-" in raw and "where" in req.query and status >= 400:
        return f"{status} quotes a row value: {raw[:300]!r}"
    return None


async def test_fuzz_requests_never_500(engine_proc: EngineProcess, capsys: Any) -> None:
    base = engine_proc.url
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        _, handle, offset = await sync(session, base)
        statuses: collections.Counter[int] = collections.Counter()
        by_kind: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        problems: list[str] = []
        reasons: collections.Counter[str] = collections.Counter()
        queue = list(shape_requests(SEED, COUNT))
        started = time.monotonic()

        async def worker() -> None:
            while queue:
                req = queue.pop()
                try:
                    status, raw, ctype = await send(session, base, req, handle, offset)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    problems.append(f"{req.method} {req.path[:200]!r}: {exc!r}")
                    continue
                statuses[status] += 1
                if status == 400 and raw.startswith(b"{"):
                    reasons[str(orjson.loads(raw).get("errors", raw[:60]))[:70]] += 1
                by_kind[req.kind][status] += 1
                wrong = check_answer(req, status, raw, ctype)
                if wrong:
                    problems.append(
                        f"{req.method} {req.path[:200]!r} body={req.body!r:.100}: {wrong}"
                    )

        raw_queue = list(raw_requests(SEED, RAW_COUNT))

        async def raw_worker() -> None:
            while raw_queue:
                data = raw_queue.pop()
                req = FuzzRequest("RAW", "", kind="raw")
                try:
                    status, raw, ctype = await send_raw("127.0.0.1", engine_proc.port, data)
                except (TimeoutError, OSError, IndexError, ValueError) as exc:
                    problems.append(f"raw {data[:120]!r}: no HTTP answer ({exc!r})")
                    continue
                statuses[status] += 1
                by_kind["raw"][status] += 1
                wrong = check_answer(req, status, raw, ctype)
                if wrong:
                    problems.append(f"raw {data[:120]!r}: {wrong}")

        await asyncio.gather(
            *(worker() for _ in range(CONCURRENCY)), *(raw_worker() for _ in range(4))
        )
        elapsed = time.monotonic() - started
        with capsys.disabled():  # the counts go into the closing note
            print(f"\nfuzz seed {SEED}: {sum(statuses.values())} requests in {elapsed:.1f}s;"
                  f" by status {dict(sorted(statuses.items()))}")  # fmt: skip
            for kind, counts in sorted(by_kind.items()):
                print(f"  {kind}: {dict(sorted(counts.items()))}")
            print("  most frequent 400s:", *reasons.most_common(12), sep="\n    ")
        assert not problems, "\n".join(problems[:30])
        assert sum(statuses.values()) == COUNT + RAW_COUNT

        # healthy and still syncing: a follower at the tip receives a new insert
        log = engine_proc.log.read_text(errors="replace")
        assert not loud_log_lines(log), "\n".join(loud_log_lines(log)[:20])
        async with session.get(base + "/v1/health") as resp:
            assert resp.status == 200 and (await resp.json()) == {"status": "active"}
        rows, handle, offset = await sync(session, base)
        assert len(rows) == 50

        async def follow() -> list[Any]:
            params = {"table": "items", "offset": offset, "handle": handle, "live": "true"}
            async with session.get(base + "/v1/shape", params=params) as resp:
                assert resp.status == 200
                return list(await resp.json())

        waiting = asyncio.create_task(follow())
        await asyncio.sleep(0)
        with psycopg.connect(engine_proc.db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items (id, title, n) VALUES (1000, 'after the storm', 1)")
        deadline = time.monotonic() + 15
        messages = await waiting
        while not any(m.get("value", {}).get("title") == "after the storm" for m in messages):
            assert time.monotonic() < deadline, messages
            messages = await follow()


async def test_edge_requests_are_json_4xx(engine_proc: EngineProcess) -> None:
    """Each malformed input in each parameter (`edge_requests`: invalid UTF-8, NUL bytes,
    `%zz`, repeated and unknown parameters, 100 KB values, 1,000 parentheses deep, lone
    surrogates, whitespace only, 5,000-digit integers, in the URL and in a POST body):
    every answer below 500, every 4xx a JSON body with a message, nothing loud logged."""
    base = engine_proc.url
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        _, handle, offset = await sync(session, base)
        requests = list(edge_requests())
        statuses: collections.Counter[int] = collections.Counter()
        problems: list[str] = []

        async def worker() -> None:
            while requests:
                req = requests.pop(0)
                status, raw, ctype = await send(session, base, req, handle, offset)
                statuses[status] += 1
                wrong = check_answer(req, status, raw, ctype)
                if wrong:
                    problems.append(f"{req.method} {req.query[:160]!r} {req.body!r:.120}: {wrong}")

        await asyncio.gather(*(worker() for _ in range(4)))
        print(f"\nedge requests: by status {dict(sorted(statuses.items()))}")
        assert not problems, "\n".join(problems[:30])
        log = engine_proc.log.read_text(errors="replace")
        assert not loud_log_lines(log), "\n".join(loud_log_lines(log)[:20])
        async with session.get(base + "/v1/health") as resp:
            assert resp.status == 200
