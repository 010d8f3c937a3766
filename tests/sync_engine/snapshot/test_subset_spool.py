"""A big subset's answer is written as its rows arrive and sent from a file, never held whole.

A whole-table subset (`{"where": "true"}` on a 20 MB table) was `fetchall()`ed, every row
parsed and marked, and the body serialized whole before its first byte was sent: ~3x the
answer in memory per request until its client read it, and 40 clients that did not read took
the engine to 4 GB, never given back. Now the rows are written to a spool (memory up to 64 KB,
then an unlinked file; memory again for what a full disk refuses) as Postgres sends them,
the response is sent from it at the client's pace, and the bytes all answers hold at once are
bounded (`BUDGET.limit`, `SPOOL_BUDGET` by default: past it, a 503 with Retry-After; a 400
for an answer over it alone). What a client reads is the same bytes as before: the object
`orjson.dumps` gave.

Real path: the engine's app on a real server, real Postgres; the memory is the engine's
Python allocations (`tracemalloc`) while a client reads the answer 64 KB at a time.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.snapshot import subset as subset_module
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

ROWS = 3000  # (x ~1.1 KB: a 3.5 MB answer)


def _open_spools(data_dir: Path) -> list[str]:
    """The engine's open files that were deleted in `data_dir` (its spools)."""
    fds = Path("/proc/self/fd")
    found = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(data_dir)) and target.endswith("(deleted)"):
            found.append(target)
    return found


async def test_a_big_subset_is_sent_from_its_spool_within_a_budget(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL)")
    engine.sql(
        "INSERT INTO big SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, %s) g",
        (ROWS,),
    )
    _, handle, offset = await engine.sync(table="big", log="changes_only")
    path = f"/v1/shape?table=big&log=changes_only&offset={offset}&handle={handle}"

    # A client reading 64 KB at a time: the engine never holds the answer whole.
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        resp = await client.post(path, json={"where": "true"})
        assert resp.status == 200
        length = int(resp.headers["content-length"])
        read = 0
        async for part in resp.content.iter_chunked(1 << 16):
            read += len(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == length > ROWS * 1000
    assert peak < length / 4, f"{peak} bytes allocated at once for a {length}-byte answer"

    # The bytes are those of the whole object serialized at once (as the answer was built),
    # every row there, marked with the metadata's mark.
    resp = await client.post(path, json={"where": "true"})
    body = await resp.read()
    assert resp.status == 200 and len(body) == int(resp.headers["content-length"])
    parsed = orjson.loads(body)
    assert orjson.dumps(parsed) == body
    assert sorted(int(m["value"]["id"]) for m in parsed["data"]) == list(range(1, ROWS + 1))
    mark = parsed["metadata"]["snapshot_mark"]
    assert {m["headers"]["snapshot_mark"] for m in parsed["data"]} == {mark}
    assert resp.headers["electric-snapshot"] == "true"
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    # (a small answer, kept in memory, is the same object)
    resp = await client.post(path, json={"where": "id <= 2"})
    small = await resp.read()
    assert orjson.dumps(orjson.loads(small)) == small
    assert len(orjson.loads(small)["data"]) == 2

    # A full disk: what it refuses stays in memory, and the answer is the same.
    taken = 0

    def full_disk(fd: int, data: bytes) -> int:
        nonlocal taken
        if taken >= 300_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        done = os.write(fd, data[: 300_000 - taken])
        taken += done
        return done

    monkeypatch.setattr(subset_module, "_write", full_disk)
    resp = await client.post(path, json={"where": "true"})
    refused = await resp.read()
    assert resp.status == 200 and len(refused) == int(resp.headers["content-length"])
    assert taken == 300_000
    again = orjson.loads(refused)
    assert orjson.dumps(again) == refused
    assert [m["key"] for m in again["data"]] == [m["key"] for m in parsed["data"]]
    monkeypatch.undo()
    assert subset_module.BUDGET.held == 0

    # A query failing past the first spooled rows is its 400, as before, and frees its spool.
    resp = await client.post(path, json={"where": f"1 / (id - {ROWS - 10}) > -5"})
    assert resp.status == 400, await resp.text()
    assert "division by zero" in (await resp.json())["errors"]["subset"]["where"][0]
    assert subset_module.BUDGET.held == 0

    # A client that leaves mid-answer frees it too (its file closed: no spool left open).
    host, port = client.server.host, client.server.port
    assert isinstance(port, int)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.setblocking(False)
    head = (
        f"GET {path}&subset__where=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ).encode()
    await loop.sock_sendall(sock, head)
    got = await loop.sock_recv(sock, 4096)
    assert got.startswith(b"HTTP/1.1 200"), got
    sock.close()
    await wait_until_async(lambda: subset_module.BUDGET.held == 0, message="answer freed")
    assert not _open_spools(tmp_path / "data")

    # Past the budget: a 503 with Retry-After; nothing stays held.
    monkeypatch.setattr(subset_module.BUDGET, "limit", subset_module.BUDGET.limit)  # (restored)
    subset_module.set_spool_budget(1 << 20)  # (--subset-spool-budget)
    assert subset_module.BUDGET.take(600_000)  # (as if other answers held it)
    try:
        resp = await client.post(path, json={"where": "id <= 500"})
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["code"] == "subset_budget"
        assert int(resp.headers["retry-after"]) >= 1
        assert subset_module.BUDGET.held == 600_000
    finally:
        subset_module.BUDGET.give(600_000)
    resp = await client.post(path, json={"where": "id <= 500"})  # (under it: answered)
    assert resp.status == 200
    assert len((await resp.json())["data"]) == 500
    # An answer over the whole budget alone is a 400: no retry could get it.
    resp = await client.post(path, json={"where": "true"})
    assert resp.status == 400, await resp.text()
    assert "fewer rows" in (await resp.json())["errors"]["subset"]["where"][0]
    assert subset_module.BUDGET.held == 0
