"""A request naming a shape with an offset that shape never handed out (one of an earlier
generation of the definition) is a 409 must-refetch, never a log served from there.

Chaos seed 800: after a 409 on a `requestSnapshot`, @electric-sql/client 1.5.28 moves its stream
to the 409's handle at its OLD offset without a must-refetch (`fetchSnapshotWithRetry` takes the
handle with `withHandle`); the engine, wiped meanwhile, served the new shape's log from that offset
and the changes_only client kept rows deleted while the engine was down, for good.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from aiohttp.test_utils import TestServer

from sync_engine.app import SOURCES, build_app
from sync_engine.settings import Settings
from tests.support.engine_process import ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

MUST_REFETCH = [{"headers": {"control": "must-refetch"}}]
NPM_CHANGES_ONLY = Path(__file__).with_name("npm_changes_only.mjs")


async def _real_offset(engine: Engine, handle: str, offset: str, row: int) -> str:
    """Insert row `row` and follow the shape live until it came: a real offset of it."""
    engine.sql("INSERT INTO items VALUES (%s, %s)", (row, f"t{row}"))
    rows: dict[str, dict[str, Any]] = {}
    offset = await engine.follow_live(rows, handle, offset, str(row), table="items")
    assert not offset.startswith("0_"), offset
    return offset


async def test_an_offset_of_another_generation_is_a_409(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1')")
    _, old, offset = await engine.sync(table="items")
    old_offset = await _real_offset(engine, old, offset, 2)
    resp = await engine.client.delete("/v1/shape", params={"table": "items", "handle": old})
    assert resp.status == 202
    _, new, offset = await engine.sync(table="items")
    assert new != old

    async def answer(offset: str, **params: str) -> tuple[int, str, Any]:
        resp = await engine.client.get(
            "/v1/shape", params={"table": "items", "handle": new, "offset": offset, **params}
        )
        raw = await resp.read()
        body = json.loads(raw) if resp.content_type == "application/json" else raw
        return resp.status, resp.headers.get("electric-handle", ""), body

    sse = {"live": "true", "live_sse": "true"}
    # the new shape's log is empty: no real offset is its own
    for params in ({}, {"live": "true"}, sse):
        assert await answer(old_offset, **params) == (409, new, MUST_REFETCH), params
    # with transactions of its own: the old offset is below its first one
    own = await _real_offset(engine, new, offset, 3)
    for params in ({}, {"live": "true"}, sse):
        assert await answer(old_offset, **params) == (409, new, MUST_REFETCH), params
    # its own offsets, and an SSE up-to-date's `<lsn>_0`, are served
    status, _, body = await answer(offset)
    assert status == 200 and any(m.get("value", {}).get("id") == "3" for m in body), body
    status, _, body = await answer(own)
    assert status == 200, body
    status, _, body = await answer(f"{own.split('_')[0]}_0")
    assert status == 200, body


async def _serve(settings: Settings, data: Path, port: int) -> TestServer:
    """The engine's app on a real server at `port`, on the data dir `data`."""
    server = TestServer(build_app(replace(settings, data_dir=data)), port=port)
    await server.start_server()
    await server.app[SOURCES]["default"].ready.wait()
    return server


async def _crash(server: TestServer) -> None:
    """Stop the engine as a crash would for its clients: every connection cut at once (a
    graceful close waits for the held long-polls and SSE streams)."""
    assert server.runner is not None and server.runner.server is not None
    for conn in server.runner.server.connections:
        if conn.transport is not None:
            conn.transport.abort()
    await server.close()


class _NpmClient:
    """`npm_changes_only.mjs`: the real client following `items` (changes_only); what it said."""

    def __init__(self, url: str, *modes: str) -> None:
        self.args = ("node", str(NPM_CHANGES_ONLY), f"{url}/v1/shape", "items", *modes)
        self.said: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        self.reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.said.append(json.loads(line))

    def snapshot(self, where: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"where": where}).encode() + b"\n")

    def view(self) -> dict[str, Any] | None:
        return next((s["rows"] for s in reversed(self.said) if "rows" in s), None)

    def snapshots(self) -> int:
        return max((s.get("snapshot", 0) for s in self.said), default=0)

    def conflicts(self) -> list[str]:
        return [s["url"] for s in self.said if s.get("status") == 409]

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s; its output read to the end (bounded: a teardown
        waiting on a process or pipe with no limit held a CI run until its time limit)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), 10)
        if self.reading is not None:
            await asyncio.wait_for(self.reading, 10)


async def test_npm_changes_only_clients_converge_after_a_wipe_during_request_snapshot(
    db_url: str, tmp_path: Path
) -> None:
    """The chaos scenario with the real npm client, long-polling from `offset: 'now'` and over
    SSE: changes_only Shapes holding every row, the engine killed, its data dir wiped, rows
    deleted, a `requestSnapshot` made while it is down (its first answer is the 409 to the new
    shape), the engine started again: each Shape must end up holding exactly `SELECT` (they
    kept the deleted rows). Before the wipe no 409 at all: the clients went live on a shape
    with an empty log (offsets `0_inf`, from `now` and from subset answers), then its first
    transaction landed at a real offset."""

    def sql(query: str) -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(query.encode())

    def select() -> dict[str, dict[str, Any]]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows = conn.execute(b"SELECT id, title FROM items ORDER BY id").fetchall()
        return {f'"public"."items"/"{i}"': {"id": i, "title": t} for i, t in rows}

    async def all_hold_select(message: str) -> None:
        expected: dict[str, Any] = {}

        def holds() -> bool:
            expected.update(select())
            return all(c.view() == expected for c in clients)

        await wait_until_async(
            holds,
            timeout=20,
            message=f"{message}: {[c.view() for c in clients]} != {expected};"
            f" the clients said {[c.said[-6:] for c in clients]}",
        )

    sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    sql("INSERT INTO items SELECT g, 't' || g FROM generate_series(1, 6) g")
    settings = replace(SETTINGS, database_url=db_url)
    port = free_port()
    engine = await _serve(settings, tmp_path / "data", port)
    url = f"http://127.0.0.1:{port}"
    clients = [_NpmClient(url, "now"), _NpmClient(url, "sse")]
    try:
        await asyncio.gather(*(c.start() for c in clients))
        for c in clients:
            c.snapshot("id < 100")
        await all_hold_select("the first snapshot")
        sql("INSERT INTO items VALUES (7, 't7')")  # (the shape's first transaction)
        await all_hold_select("a live insert")
        assert [c.conflicts() for c in clients] == [[], []]  # (no 409 of their own offsets)
        await _crash(engine)
        sql("DELETE FROM items WHERE id IN (2, 5); UPDATE items SET title = 'x' WHERE id = 3")
        for c in clients:
            c.snapshot("id < 4")
        await asyncio.sleep(0.3)  # (their first tries fail: the engine is down)
        engine = await _serve(settings, tmp_path / "wiped", port)  # (an empty data dir)
        await wait_until_async(
            lambda: all(c.snapshots() == 2 for c in clients), timeout=20, message="2nd snapshot"
        )
        sql("INSERT INTO items VALUES (8, 't8')")
        await all_hold_select("after the wipe")
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
        await engine.close()
