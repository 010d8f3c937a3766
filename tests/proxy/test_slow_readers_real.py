"""Clients that stop reading a large answer must not lock everyone else out (attack 07:50,
MEDIUM).

An answer from the proxy's cache, or joined in flight, costs the engine nothing, so no
per-principal limit counts it; and a connection busy sending an answer was never closed to
make room at the connection cap. One address that asked for a large answer on as many
connections as the cap allows, and never read, held them all for `SEND_TIMEOUT` (60 s), then
reconnected: every other client got 503 "Too many connections" meanwhile. Now, at the cap
with no idle connection to close, the connection whose write has been stalled longest (its
client took nothing for `STALL_GRACE` seconds) is closed to make room.

Real path: `shape-proxy` (open.yaml) under `prlimit --nofile=256` (a cap of 32) in front of
a real engine and Postgres; raw sockets with a 1 KiB receive buffer for the slow readers.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import psycopg
import pytest

from proxy.connection_terms import STALL_GRACE
from tests.proxy.test_connection_flood_real import _get, _port, _proxy

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")


@pytest.mark.parametrize("spliced", [False, True], ids=["cached", "spliced"])
def test_slow_readers_of_a_large_answer_cannot_lock_others_out(
    db_url: str, tmp_path: Path, spliced: bool
) -> None:
    # spliced: no cache, no collapsing: each answer goes from the engine's socket to the
    # client's by splice(2), outside the transport, whose writing never pauses (review 08:47)
    settings = {"collapse": False, "cache": {"max_bytes": 0}} if spliced else None
    with _proxy(db_url, tmp_path, 256, settings=settings) as proxy_url:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE big (id int PRIMARY KEY, body text)")
        status, headers, _ = _get(proxy_url + "/v1/shape?table=big&offset=-1")
        assert status == 200
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g"
            )
        # (the log after the empty snapshot: one answer of ~4 MB, more than the kernel's
        # socket buffers take, as the attack's 3.1 MB catch-up)
        big = f"/v1/shape?table=big&offset=0_0&handle={headers['electric-handle']}"
        deadline = time.monotonic() + 10
        while True:
            status, _, body = _get(proxy_url + big)
            if len(body) > 3_000_000 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200 and len(body) > 3_000_000, len(body)
        port = _port(proxy_url)
        slow: list[socket.socket] = []
        try:
            for _ in range(40):  # past the cap of 32
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                sock.settimeout(5)
                try:
                    sock.connect(("127.0.0.1", port))
                    sock.sendall(f"GET {big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                except OSError:
                    sock.close()
                    continue
                slow.append(sock)  # never read
            time.sleep(STALL_GRACE + 1)
            deadline = time.monotonic() + 10
            while True:
                status, _, body = _get(f"{proxy_url}/v1/shape?table=items&offset=-1")
                if status != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == 200, body
            assert [m["value"]["title"] for m in json.loads(body) if "value" in m] == ["one"]
        finally:
            for sock in slow:
                sock.close()
