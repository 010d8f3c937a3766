"""Many clients reading a big chunk slowly at once do not make the engine's memory grow with
their number (review 11:36: each send that checks the bytes it sends held a 1 MiB buffer while
its client took them; 200 slow readers = +195 MiB). At most `PIECE_BUFFERS` buffers exist;
the other sends are checked before they go out by `sendfile` (no buffer). Every client that
then reads gets the chunk byte for byte.

Through the engine served in-process (its memory traced by `tracemalloc`), with raw sockets
whose receive buffer is small and which read nothing until all the sends wait for them."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from sync_engine.http import sendfile
from sync_engine.log import verdicts
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine

READERS = 32


def _slow_reader(port: int, path: str) -> socket.socket:
    """A connection that asked for `path` and reads nothing yet (a 4 KiB receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return sock


def _body_of(sock: socket.socket) -> bytes:
    """The body of the one answer on `sock` (read to its end: the client asked to close)."""
    data = bytearray()
    with sock:
        while chunk := sock.recv(1 << 20):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert len(body) == length  # (whole: not cut)
    return body


async def test_many_slow_readers_of_a_checked_chunk_hold_a_bounded_number_of_buffers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, t text NOT NULL)")
    engine.sql("INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g")
    status, headers, _ = await engine.get(table="items", offset=-1)
    assert status == 200
    path = (
        f"/v1/shape?table=items&offset={headers['electric-offset']}"
        f"&handle={headers['electric-handle']}"
    )
    first = await engine.client.get(path)  # (checked before it: its sends check their bytes)
    expected = await first.read()
    # (a 10 MiB chunk file: more than the socket's buffers take)
    assert first.status == 200 and len(expected) > 8 << 20
    waiting: set[int] = set()
    real_wait = sendfile._Writable.wait

    async def wait(self: Any) -> None:  # (counts the sends waiting for their client)
        waiting.add(id(self))
        await real_wait(self)

    monkeypatch.setattr(sendfile._Writable, "wait", wait)
    port = engine.client.server.port
    assert port is not None
    readers: list[socket.socket] = []
    tracemalloc.start()
    try:
        readers += (_slow_reader(port, path) for _ in range(READERS))
        await wait_until_async(
            lambda: len(waiting) >= READERS, message="every send waits", timeout=60
        )
        # (what the sends' own code holds: the rest of the process's memory moves with what
        # else runs meanwhile, 17-25 MiB in CI, where these buffers are 8 MiB of it)
        sends = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, sendfile.__file__)]
        )
        held = sum(stat.size for stat in sends.statistics("filename"))
    finally:
        tracemalloc.stop()
    try:
        # (a buffer per send, the way before, held 32 MiB and more)
        limit = sendfile.PIECE_BUFFERS * sendfile.SEND_PIECE + (1 << 20)
        assert held < limit, f"{held / 2**20:.1f} MiB held by {READERS} sends' code"
        assert sendfile._pieces.most_held <= sendfile.PIECE_BUFFERS
        assert sendfile._pieces.refused >= READERS - sendfile.PIECE_BUFFERS  # (the way before)
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(READERS) as threads:  # (not the engine's: its checks run there)
            bodies = await asyncio.gather(
                *(loop.run_in_executor(threads, _body_of, s) for s in readers)
            )
        assert all(body == expected for body in bodies)
    finally:
        for reader in readers:
            reader.close()  # (read or not: the sends end)


async def test_a_send_finding_no_buffer_free_checks_the_chunk_before_it_whatever_was_kept(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way before, for a send with no piece buffer: its check reads the file even when a
    kept verdict stands (one vouches for cached pages only; here every verdict is made to
    stand, and the file is damaged after its check). The body is cut, then a 409."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, t text NOT NULL)")
    engine.sql("INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 12000) g")
    status, headers, _ = await engine.get(table="items", offset=-1)
    assert status == 200
    handle = headers["electric-handle"]
    path = f"/v1/shape?table=items&offset={headers['electric-offset']}&handle={handle}"
    first = await engine.client.get(path)
    assert first.status == 200 and len(await first.read()) > 1 << 20
    monkeypatch.setattr(sendfile, "PIECE_BUFFERS", 0)
    monkeypatch.setattr(verdicts, "holds", lambda *args: True)
    (chunk,) = engine.data_dir.rglob(f"{handle}.snapshot.00001.json")
    with open(chunk, "r+b") as f:
        f.seek(1000)
        was = f.read(1)
        f.seek(1000)
        f.write(bytes([was[0] ^ 0x01]))
    try:
        again = await engine.client.get(path)
        body = await again.read()
    except aiohttp.ClientPayloadError:
        pass  # (cut before its end: no complete answer)
    else:
        assert again.status == 409, f"the damaged chunk was sent whole ({len(body)} bytes)"
    assert (await engine.client.get(path)).status == 409
