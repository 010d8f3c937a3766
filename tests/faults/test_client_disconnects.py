"""Clients that go away mid-answer: a big snapshot chunk cut off while the kernel sends its
file, SSE streams and long-polls dropped while they wait or while changes flow, connections
reset (RST) instead of closed. The engine must hold nothing for them afterwards (no file
descriptor, no parked request), keep its replication going, and serve the next client whole.

Real path: the engine as a process on a private Postgres cluster; raw sockets for the
clients that vanish (a RST needs SO_LINGER 0), a writer committing all along.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows, until_equal
from tests.support.waiting import wait_until_async

ROWS = 6_000
#: The engine's --snapshot-quiet in the parked-request test (its default is 2 s).
QUIET = 0.5


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _vanish(port: int, target: str, read: int, *, reset: bool) -> bytes:
    """Send a GET for `target`, read about `read` bytes of the answer, then go away: a RST
    (`reset`) or a plain close. Returns the start of what was read (its status line)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head, got = b"", 0
    while got < read:
        data = await asyncio.wait_for(reader.read(65536), 30)
        if not data:
            break
        head += data[: max(0, 64 - len(head))]
        got += len(data)
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    return head


@pytest.mark.timeout(240)
async def test_clients_that_vanish_mid_answer_leave_nothing_behind(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    cluster.query("INSERT INTO items SELECT g, 0 FROM generate_series(21, %s) g", (ROWS,))
    cluster.query("ALTER TABLE items ADD COLUMN pad text NOT NULL DEFAULT repeat('x', 200)")
    engine = EngineProcess(
        cluster.url, tmp_path / "data", "--long-poll-timeout", "1", "--chunk-bytes", "1000000"
    )
    await asyncio.to_thread(engine.start)
    assert engine.proc is not None
    pid = engine.proc.pid
    writer = Writer(cluster.url, first_id=100_000)
    stop_writer = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            follower = Follower(engine.url, "id % 7 = 0", increments=True)
            stop = asyncio.Event()
            following = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, timeout=60, message="live")
            async with session.get(
                engine.url + "/v1/shape", params={"table": "items", "offset": "-1"}
            ) as r:
                assert r.status == 200
                handle = r.headers["electric-handle"]
                await r.read()
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(lambda: writer.committed >= 20, timeout=30, message="writes")
            baseline = _fds(pid)

            async with session.get(  # (the tip: live requests are 400 at `now`)
                engine.url + "/v1/shape",
                params={"table": "items", "handle": handle, "offset": "now"},
            ) as r:
                assert r.status == 200, await r.read()
                tip = r.headers["electric-offset"]
            base = f"/v1/shape?table=items&handle={handle}&offset={tip}&live=true"
            vanishing = []
            for i in range(60):
                reset = i % 2 == 0
                kind = i % 3
                if kind == 0:  # a big snapshot chunk (a file sent by the kernel), cut off
                    target, read = f"/v1/shape?table=items&offset=-1&x={i}", 20_000
                elif kind == 1:  # an SSE stream at the tip, dropped while changes flow
                    target, read = f"{base}&live_sse=true&x={i}", 2_000
                else:  # a long-poll at the tip, dropped as it is answered
                    target, read = f"{base}&x={i}", 1
                vanishing.append(_vanish(engine.port, target, read, reset=reset))
            heads = await asyncio.gather(*vanishing)
            # (answered: the old test's live requests at `now` were all 400s, at once)
            assert all(h.startswith(b"HTTP/1.1 200 ") for h in heads), heads

            # nothing held for them: no descriptor (allow a few for the engine's own churn),
            # no parked request but the follower's
            await wait_until_async(
                lambda: _fds(pid) <= baseline + 5,
                timeout=30,
                message=f"descriptors back near {baseline}",
            )
            await wait_until_async(
                lambda: _parked_at_most(engine, 1), timeout=30, message="parked requests"
            )
            stop_writer.set()
            await writing
            # replication went on, and a new client gets the whole snapshot
            await until_equal(
                [follower], [expected_rows(cluster.url, "id % 7 = 0", ("id", "v", "pad"))], 60
            )
            stop.set()
            await following
            rows: dict[str, object] = {}
            params = {"table": "items", "offset": "-1"}
            while True:
                async with session.get(engine.url + "/v1/shape", params=params) as r:
                    assert r.status == 200, await r.read()
                    for m in orjson.loads(await r.read()):
                        if "key" in m:
                            rows[m["key"]] = m["value"]["id"] if "value" in m else None
                    if "electric-up-to-date" in r.headers:
                        break
                    params = {
                        "table": "items",
                        "offset": r.headers["electric-offset"],
                        "handle": r.headers["electric-handle"],
                    }
            (count,), *_ = cluster.query("SELECT count(*) FROM items")
            assert len(rows) == count
        follower.assert_clean()
        assert "Traceback" not in engine.log_tail(1_000_000)
    finally:
        stop_writer.set()
        engine.stop()


async def _parked_at_most(engine: EngineProcess, n: int) -> bool:
    return await engine.parked_requests() <= n


async def _park(port: int, target: str) -> asyncio.StreamWriter:
    """Send a GET for `target` on a raw connection and leave it open (the answer unread)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return writer


def _close(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


@pytest.mark.timeout(180)
async def test_a_parked_live_request_is_let_go_when_its_client_closes(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """A long-poll or SSE stream held at the tip is given up as soon as its client's
    connection closes (FIN or RST), not at the end of its long-poll timeout: a reconnect
    storm would otherwise multiply the held waiters. A client that stays gets its change."""
    # Timeouts far past the test's waits: only the client's going can let the requests go.
    # (Postgres asked every `QUIET` s while a snapshot is slow: the watch below sees 3 asks.)
    engine = EngineProcess(
        cluster.url,
        tmp_path / "data",
        "--long-poll-timeout",
        "900",
        "--sse-timeout",
        "900",
        "--snapshot-quiet",
        str(QUIET),
    )
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            params = {"table": "items", "offset": "-1"}
            while True:
                async with session.get(engine.url + "/v1/shape", params=params) as r:
                    assert r.status == 200, await r.read()
                    await r.read()
                    params = {
                        "table": "items",
                        "offset": r.headers["electric-offset"],
                        "handle": r.headers["electric-handle"],
                    }
                    if "electric-up-to-date" in r.headers:
                        break
            tip = "/v1/shape?" + "&".join(f"{k}={v}" for k, v in params.items())

            async def stay() -> list[dict[str, object]]:
                async with session.get(
                    engine.url + tip + "&live=true&cursor=still",
                    timeout=aiohttp.ClientTimeout(total=120),
                ) as r:
                    assert r.status == 200, await r.read()
                    return list(orjson.loads(await r.read()))

            still = asyncio.create_task(stay())
            await engine.until_parked(1, timeout=60)
            gone = [await _park(engine.port, f"{tip}&live=true&cursor={i}") for i in range(6)] + [
                await _park(engine.port, f"{tip}&live=true&live_sse=true&x={i}") for i in range(2)
            ]
            await engine.until_parked(1 + len(gone), timeout=60)

            for i, writer in enumerate(gone):
                _close(writer, reset=i % 2 == 0)
            # Let go at once (the old engine held them 900 s): only the client that stayed.
            await wait_until_async(
                lambda: _parked_at_most(engine, 1), timeout=60, message="parked back to 1"
            )
            assert await engine.parked_requests() == 1
            assert not still.done()

            cluster.query("INSERT INTO items VALUES (21, 7)")
            got = await still
            assert [m["value"] for m in got if "key" in m] == [{"id": "21", "v": "7"}]

            # A request waiting for a new shape's snapshot (a lock in its query's way) whose
            # client goes is let go too (the old engine held it for its 60 s).
            with psycopg.connect(cluster.url) as locker:
                locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
                waiting = await _park(engine.port, "/v1/shape?table=items&offset=-1&where=v>0")
                await engine.until_parked(1, timeout=60)
                _close(waiting, reset=False)
                await wait_until_async(
                    lambda: _parked_at_most(engine, 0), timeout=30, message="no parked request"
                )
                # and stays let go: the old engine's request parked again after each of its
                # checks that Postgres answers (every `--snapshot-quiet`), while the lock held
                loop = asyncio.get_running_loop()
                watch_until = loop.time() + 3 * QUIET
                while loop.time() < watch_until:
                    assert await engine.parked_requests() == 0
            async with session.get(
                engine.url + "/v1/shape", params={"table": "items", "offset": "-1", "where": "v>0"}
            ) as r:
                assert r.status == 200, await r.read()
                rows = [m["value"]["id"] for m in orjson.loads(await r.read()) if "key" in m]
                assert rows == ["21"]
        assert "Traceback" not in engine.log_tail(1_000_000)
    finally:
        engine.stop()
