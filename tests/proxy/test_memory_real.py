"""The proxy's memory stays flat when clients leave big answers early (attack 11:20).

A client asking for a chunk behind the tip (a catch-up or live request the engine answers at
once with ~1 MB) that read the first bytes and closed left about the answer's size in the
proxy for good: the shared engine request's task, cancelled, kept its CancelledError, whose
traceback kept the flight and every chunk it had read (a cycle through `Flight.task`), and the
engine connection closed mid-body kept its buffered bytes (cycles parser <-> protocol <->
body). Only the cyclic collector frees those, and the real proxy runs it rarely (`tune_gc`,
a first-generation threshold of 500,000): RSS went 80 -> 1148 MB over 800 such requests.

Real path: `python -m proxy` (config/examples/open.yaml, so its own gc tuning: `open_proxy_process`)
in front of a real engine (1 MiB chunks) and Postgres; raw sockets that read 1,000 bytes and reset. The
proxy's RSS from /proc after a warm-up and after 300 more requests: ~+0.5 MB each on the old
code (+99 MB over 200), under +10 MB in all now; the bound (60 MB) is far from both.
"""

from __future__ import annotations

import socket
import struct
import urllib.request
from pathlib import Path

import psycopg

from tests.proxy.engines import healthy, open_proxy_process
from tests.support.waiting import wait_until


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def _leave_early(port: int, target: str) -> None:
    """Ask for `target`, read the first 1,000 bytes of the answer, then reset."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_clients_leaving_big_answers_early_leave_nothing_behind(
    db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 3000) g"
        )
    engine_args = ["--no-fsync", "--chunk-bytes", "1048576"]
    with open_proxy_process(db_url, tmp_path, engine_args) as proxy:
        url, port, proc = proxy.url, proxy.port, proxy.process
        with urllib.request.urlopen(f"{url}/v1/shape?table=big&offset=-1", timeout=30) as r:
            handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
            r.read()
        assert offset != "-1"

        def leave(i: int) -> None:
            live = "&live=true" if i % 2 else ""
            _leave_early(
                port, f"/v1/shape?table=big&offset={offset}&handle={handle}{live}&cache-buster=c{i}"
            )

        # Warm-up: pools, the allocator's arenas and mmap threshold (RSS settles at about
        # 150 MB within ~400 such requests and stays there: +4 MB over the next 1,600).
        for i in range(400):
            leave(i)
        before = _rss_mb(proc.pid)
        for i in range(400, 700):
            leave(i)
        wait_until(lambda: healthy(url), timeout=10, interval=0.1)
        after = _rss_mb(proc.pid)
        assert after - before < 60, f"proxy RSS {before:.0f} -> {after:.0f} MB over 300 requests"
