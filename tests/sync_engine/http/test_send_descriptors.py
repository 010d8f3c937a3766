"""A chunk file sent by `sendfile` holds two descriptors besides its connection's (the file
and a duplicate of the socket): they count against the file limit, and a send takes them
only when the limit has them, so a herd of big sends never runs the engine out.

The connection cap counted a connection as one descriptor, and the sends' two more only
at its next recount (attack round 5, INFO): connections let in while idle (long-polls, a
keep-alive pool) that then all asked a big chunk at once took 3 each, and past the limit
the engine failed where it opened anything: a chunk answered 503 "Too many open files",
a socket not duplicated (the answer cut short after its head), a shape log or Postgres
connection not opened. Now a send that would eat into half of `FD_RESERVE` is a 503 with
Retry-After before anything is opened; the cap counts what sends hold at once.

Real path: the engine as a process under a file limit of 600 (`prlimit`), a 6 MB chunk
file, raw sockets that never read (a 4 kB receive buffer).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.engine_process import EngineProcess

LIMIT = 600


def _connect_all(port: int, attempts: int) -> list[socket.socket]:
    """Connections the engine let in and kept (those refused at its cap answer 503 at
    once; at the cap it closes one that sent nothing yet to make room for a new one)."""
    made = []
    for _ in range(attempts):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        made.append(s)
    time.sleep(1.0)
    kept = []
    for s in made:
        s.setblocking(False)
        try:
            s.recv(1, socket.MSG_PEEK)  # (a 503, or closed to make room for a newer one)
            refused = True
        except BlockingIOError:
            refused = False
        except OSError:
            refused = True
        s.setblocking(True)
        if refused:
            s.close()
        else:
            kept.append(s)
    return kept


def _head(s: socket.socket) -> bytes:
    """The answer's first bytes: its head, and a 503's whole body."""
    s.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        got = s.recv(4096)
        if not got:
            break
        data += got
    if data.startswith(b"HTTP/1.1 503"):
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        while len(body) < length and (got := s.recv(4096)):
            body += got
        data = head + b"\r\n\r\n" + body
    return data


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
@pytest.mark.timeout(180)
async def test_a_herd_of_big_sends_never_runs_the_engine_out_of_descriptors(
    db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL)")
        conn.execute("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g")
    engine = EngineProcess(
        db_url,
        tmp_path / "data",
        "--chunk-bytes",
        str(6 << 20),
        wrapper=("prlimit", f"--nofile={LIMIT}:{LIMIT}", "--"),
    )
    await asyncio.to_thread(engine.start)
    herd: list[socket.socket] = []
    try:
        # The snapshot's chunks, followed as a client does: the herd asks the biggest.
        sizes: dict[bytes, int] = {}
        query, handle = b"offset=-1", b""
        while True:
            with socket.create_connection(("127.0.0.1", engine.port)) as s:
                s.sendall(b"GET /v1/shape?table=big&%s HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\n\r\n" % query)  # fmt: skip
                answer = b""
                while got := s.recv(1 << 20):
                    answer += got
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            assert head.startswith(b"http/1.1 200"), answer[:300]
            sizes[query] = len(answer)
            if b"\r\nelectric-up-to-date:" in head:
                break
            handle = head.split(b"electric-handle: ", 1)[1].split(b"\r\n", 1)[0]
            offset = head.split(b"electric-offset: ", 1)[1].split(b"\r\n", 1)[0]
            query = b"offset=%s&handle=%s" % (offset, handle)
        biggest = max(sizes, key=sizes.__getitem__)
        assert sizes[biggest] > 4 << 20, sizes  # (a chunk file of MBs: sent by sendfile)
        request = b"GET /v1/shape?table=big&%s HTTP/1.1\r\nHost: x\r\n\r\n" % biggest

        herd = await asyncio.to_thread(_connect_all, engine.port, LIMIT)
        assert len(herd) > (LIMIT - 256) // 2, len(herd)  # (let in: more than sends may hold)
        for s in herd:
            s.sendall(request)
        heads = await asyncio.to_thread(lambda: [_head(s) for s in herd])
        statuses = [h[:12] for h in heads]
        assert set(statuses) <= {b"HTTP/1.1 200", b"HTTP/1.1 503"}, set(statuses)
        refused = [h for h in heads if h.startswith(b"HTTP/1.1 503")]
        assert statuses.count(b"HTTP/1.1 200") >= 16, statuses.count(b"HTTP/1.1 200")
        for h in refused:
            assert b"retry-after: 1" in h.lower() and b'"too_many_sends"' in h, h
        print("sends", statuses.count(b"HTTP/1.1 200"), "refused", len(refused), "of", len(herd))
        await asyncio.sleep(0.5)
        assert "Too many open files" not in engine.log_tail(200_000)
    finally:
        for s in herd:
            s.close()
        engine.stop()
