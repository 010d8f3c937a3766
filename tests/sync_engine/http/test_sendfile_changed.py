"""A snapshot chunk file written to in place while it is being sent is not answered whole.

Every send of a chunk is checked (size and crc32 against what was written), then the kernel
sends the file (`os.sendfile`), reading it again: bytes changed between the two went out
unchecked, a 200 with one wrong value a client keeps (chaos 17:40: 80 of 120 answers in
flight at the change). Now the send compares the file's `fstat` after it with the one taken
before the check, and a file changed meanwhile ends the connection short of the body's
length (clients retry); the next request finds the damage and answers 409.

Real path: the in-process engine on a real socket, real Postgres, a raw client socket with a
small receive buffer, so the send is still going on when the file is written.
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
from tests.sync_engine.engine_harness import SETTINGS, Engine
from tests.sync_engine.http.test_sendfile_stall import CHUNK_BYTES, _drain


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", chunk_bytes=CHUNK_BYTES
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_a_chunk_file_written_to_during_its_send_is_not_answered_whole(
    engine: Engine,
) -> None:
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    engine.sql("INSERT INTO big SELECT g, repeat('x', 3000) FROM generate_series(1, 2000) g")
    status, h, _ = await engine.get(table="big", offset="-1")  # (written: sent as its file now)
    assert status == 200
    handle = h["electric-handle"]
    chunk = next(engine.data_dir.rglob(f"{handle}.snapshot.00001.json"))
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        server = engine.client.server
        await loop.sock_connect(sock, (server.host, server.port))
        target = f"/v1/shape?table=big&offset=0_0&handle={handle}"
        await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
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
