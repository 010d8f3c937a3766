"""Snapshot chunks sent as their files (`os.sendfile`). A client that stops reading in the
middle of one is cut after `SEND_TIMEOUT` (60 s; 0.5 s here), as a stalled long-poll or SSE
stream is; a file changed in place during its send is not answered whole (the last test).

The chunk's bytes go from the file to the socket with `os.sendfile`, past the transport, so the
transport's stall guard (`LiveConnection`) never saw them: the send waited for the socket to
take more for as long as the client kept its connection, holding the handler, the chunk file and
a descriptor of the socket. Real path: the in-process engine on a real socket, real Postgres, a
raw client socket with a small receive buffer.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.http import live
from tests.sync_engine.engine_harness import SETTINGS, Engine

#: Snapshot chunks of 4 MB after a first one of 1 MB (more than 1 MB is sent as its file), a 6 MB
#: table: chunk 1 is sent with sendfile, more than the kernel's buffers take for a client that
#: reads nothing.
CHUNK_BYTES = 4 << 20


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", chunk_bytes=CHUNK_BYTES
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def _drain(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the socket gives within `timeout` seconds, and whether it ended (EOF or a
    reset) rather than went quiet."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while piece := await loop.sock_recv(sock, 1 << 16):
                got += piece
    except TimeoutError:
        return bytes(got), False
    except ConnectionError:
        pass
    return bytes(got), True


async def _big_table(engine: Engine) -> str:
    """A 6 MB table `big` synced once to up-to-date (its snapshot written whole: chunk 1 is
    sent as its file now, and its bytes no longer grow); the shape's handle. The first
    answer alone comes while the snapshot is still being written (ci89: chunk 1 read early
    was shorter than the one sent)."""
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    engine.sql("INSERT INTO big SELECT g, repeat('x', 3000) FROM generate_series(1, 2000) g")
    rows, handle, _ = await engine.sync(table="big")
    assert len(rows) == 2000
    return handle


async def _slow_reader(engine: Engine, handle: str) -> socket.socket:
    """A raw client with a small receive buffer that has asked for chunk 1 of `big` and read
    nothing yet: the send is still going on while it does not read."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        server = engine.client.server
        await loop.sock_connect(sock, (server.host, server.port))
        target = f"/v1/shape?table=big&offset=0_0&handle={handle}"
        await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    except BaseException:
        sock.close()
        raise
    return sock


async def test_a_client_that_stops_reading_a_snapshot_file_is_cut(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "SEND_TIMEOUT", 0.5)
    handle = await _big_table(engine)
    sock = await _slow_reader(engine, handle)
    try:
        await asyncio.sleep(3 * live.SEND_TIMEOUT)  # (reads nothing)
        got, ended = await _drain(sock, 10.0)
    finally:
        sock.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))  # fmt: skip
    assert length > 3 * (1 << 20)  # (chunk 1, sent as its file)
    # cut: the connection ended short of the body (it used to wait, then send it all)
    assert ended and len(body) < length, (ended, len(body), length)


async def test_a_shape_whose_chunk_a_client_is_reading_is_not_evicted(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """`--max-shapes` retires the least recently requested shapes no client is reading now:
    a client in the middle of a chunk (a slow one takes minutes over 10 MB) was not counted
    as reading, so a churn of new shapes retired its shape under it, and its next request
    got a 409 and began again, for ever (attack). Its shape is in use while the answer is
    written; the new shapes make room among the idle ones."""
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        chunk_bytes=CHUNK_BYTES,
        max_shapes=3,
    )
    client = await aiohttp_client(build_app(settings))
    source = client.app[SOURCES]["default"]
    await source.ready.wait()
    source.registry.min_idle = 0.0  # (the shapes just used may go too: only sending keeps)
    engine = Engine(client, db_url, tmp_path / "data")
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    engine.sql("INSERT INTO big SELECT g, repeat('x', 3000) FROM generate_series(1, 2000) g")
    status, h, _ = await engine.get(table="big", offset="-1")
    assert status == 200
    handle = h["electric-handle"]
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (client.server.host, client.server.port))
        target = f"/v1/shape?table=big&offset=0_0&handle={handle}"
        await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        shape = source.shape(handle)
        head = await asyncio.wait_for(loop.sock_recv(sock, 1024), 10)  # (then stops reading)
        assert head.startswith(b"HTTP/1.1 200"), head
        for i in range(1, 6):  # (more new shapes than the limit)
            status, _, body = await engine.get(table="big", where=f"id = {i}", offset="-1")
            assert status == 200, body
        assert not shape.rotated  # (was retired by the third new shape)
    finally:
        sock.close()
    status, h, _ = await engine.get(table="big", offset="0_0", handle=handle)
    assert status == 200, h
    assert len(source.registry) <= 3


async def test_a_chunk_file_written_to_during_its_send_is_not_answered_whole(
    engine: Engine,
) -> None:
    """A snapshot chunk file written to in place while it is being sent is not answered whole.

    Every send of a chunk is checked (size and crc32 against what was written), then the kernel
    sends the file (`os.sendfile`), reading it again: bytes changed between the two went out
    unchecked, a 200 with one wrong value a client keeps (chaos 17:40: 80 of 120 answers in
    flight at the change). Now the send compares the file's `fstat` after it with the one taken
    before the check, and a file changed meanwhile ends the connection short of the body's
    length (clients retry); the next request finds the damage and answers 409.

    The raw client's small receive buffer keeps the send going on when the file is written.
    """
    handle = await _big_table(engine)
    chunk = next(engine.data_dir.rglob(f"{handle}.snapshot.00001.json"))
    loop = asyncio.get_running_loop()
    sock = await _slow_reader(engine, handle)
    try:
        first = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)  # (checked: sending)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        # One payload byte near the file's end changed in place, through the filesystem.
        at = chunk.stat().st_size - 100
        fd = os.open(chunk, os.O_RDWR)
        try:
            assert os.pread(fd, 1, at) == b"x"
            os.pwrite(fd, b"y", at)
        finally:
            os.close(fd)
        rest, ended = await _drain(sock, 30.0)
    finally:
        sock.close()
    got = first + rest
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))  # fmt: skip
    assert length > 3 * (1 << 20)  # (chunk 1, sent as its file)
    # Not answered whole: the connection ended short of the body (it used to send it all,
    # the changed byte in it, and `]`).
    assert ended and len(body) < length, (ended, len(body), length)
    # The next request for it checks the file, finds it damaged: 409, not the changed row.
    status, h, body2 = await engine.get(table="big", offset="0_0", handle=handle)
    assert status == 409, (status, body2[:200])


async def test_a_chunk_file_unlinked_during_its_send_is_answered_whole(engine: Engine) -> None:
    """Its shape retired meanwhile (a rotation, a delete): the file's bytes did not change, only
    its link count (and with it the change time), so the answer in flight completes."""
    handle = await _big_table(engine)
    chunk = next(engine.data_dir.rglob(f"{handle}.snapshot.00001.json"))
    expected = b"[" + chunk.read_bytes() + b"]"
    loop = asyncio.get_running_loop()
    sock = await _slow_reader(engine, handle)
    try:
        first = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)  # (checked: sending)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        chunk.unlink()
        got = first
        while len(got.partition(b"\r\n\r\n")[2]) < len(expected):
            piece = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
            assert piece, "the connection ended short of the body"
            got += piece
    finally:
        sock.close()
    assert got.partition(b"\r\n\r\n")[2] == expected
