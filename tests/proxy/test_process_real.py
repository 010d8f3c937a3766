"""The real `python -m proxy` process leaves nothing behind: its memory stays flat when
clients leave big answers early, and a clean stop ends every task and logs no error. One
engine and proxy serve both tests (the last one stops it).

Memory (attack 11:20):

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

A clean stop (chaos 20:00): after SSE traffic every SIGTERM logged, at error level, "Task was
destroyed but it is pending!" with a traceback, for `SharedStreams._run`: a shared stream whose
last client left (or that a revocation ended) is forgotten and cancelled, and the shutdown
waited only for the streams still on record, so the loop closed under a forgotten one. SSE
clients on raw sockets, on shared streams, one shape's clients leaving just before the stop;
then SIGTERM: the proxy exits 0, logs no error, and its held live answers end cleanly at once
(each SSE client's stream as the engine's own ends: it reconnects), not aborted after the
shutdown timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.upstream.client import UpstreamResponse
from proxy.upstream.collapsing import Flights
from proxy.upstream.sse import SharedStreams, StreamSpec
from tests.proxy.engines import ProxyProcess, healthy, open_proxy_process
from tests.support.databases import create_database, drop_database
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def proxy(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """`python -m proxy` in front of an engine (1 MiB chunks) on a table of ~3 MB."""
    dbname, db_url = create_database(pg_server_url)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE big (id int PRIMARY KEY, payload text)")
            conn.execute(
                "INSERT INTO big SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 3000) g"
            )
        work = tmp_path_factory.mktemp("proxy-process")
        engine_args = ["--no-fsync", "--chunk-bytes", "1048576"]
        with open_proxy_process(db_url, work, engine_args) as process:
            yield process
    finally:
        drop_database(pg_server_url, dbname)


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


def _initial(url: str) -> tuple[str, str]:
    """(handle, offset) of the shape at `url` (offset=-1), its snapshot read whole."""
    with urllib.request.urlopen(url, timeout=30) as reply:
        reply.read()
        return reply.headers["electric-handle"], reply.headers["electric-offset"]


def test_clients_leaving_big_answers_early_leave_nothing_behind(proxy: ProxyProcess) -> None:
    url, port, proc = proxy.url, proxy.port, proxy.process
    handle, offset = _initial(f"{url}/v1/shape?table=big&offset=-1")
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


def _sse(port: int, target: str) -> socket.socket:
    """An SSE request to the proxy on a raw socket; returns once its head arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"GET {target}&live=true&live_sse=true HTTP/1.1\r\nHost: x\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        piece = sock.recv(4096)
        assert piece, received
        received += piece
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    """What the proxy sends until it closes the connection."""
    received = b""
    while piece := sock.recv(65536):
        received += piece
    return received


def test_sigterm_after_sse_traffic_ends_cleanly_and_logs_no_error(proxy: ProxyProcess) -> None:
    """(Last in the module: it stops the shared proxy.)"""
    clients = []
    for where in ("", "&where=id>2990"):
        handle, offset = _initial(f"{proxy.url}/v1/shape?table=big&offset=-1{where}")
        target = f"/v1/shape?table=big&offset={offset}&handle={handle}{where}"
        clients += [_sse(proxy.port, target) for _ in range(3)]
    # One shape's clients all leave: its shared stream is forgotten and cancelled.
    for sock in clients[3:]:
        sock.close()
    staying = clients[:3]
    time.sleep(0.2)
    proxy.process.send_signal(signal.SIGTERM)
    try:
        ends = [_read_to_end(sock) for sock in staying]
    finally:
        for sock in staying:
            sock.close()
    assert proxy.process.wait(10) == 0
    # Each client's SSE stream ended cleanly (the chunked body's terminator), so it
    # reconnects at once rather than after a broken stream.
    assert all(end.endswith(b"0\r\n\r\n") for end in ends), ends
    log = proxy.log.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records and records[-1]["message"] == "stopped", log
    assert not [r for r in records if r.get("level") in ("error", "critical")], log
    assert "Task was destroyed" not in log, log


async def test_close_waits_for_forgotten_streams_and_flights() -> None:
    """The shutdown's own wait, in process: a shared stream (or flight) whose last client
    left is forgotten and cancelled; `close` must still wait until its task has ended (it
    waited only for those on record, and the loop could close under the others)."""
    never: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()

    async def opener() -> UpstreamResponse:
        return await never

    streams = SharedStreams()
    spec = StreamSpec(("k",), "0_0", (0, 0, 0), 0)
    stream, _ = streams.join(spec, opener, lambda _: pytest.fail("no headers"))
    stream_task = stream.task
    flights = Flights()
    flight, _ = flights.join(
        ("GET", "u", "", "", ""), opener, lambda _: pytest.fail("no headers"), lambda _: None
    )
    flight_task = flight.task
    await asyncio.sleep(0)  # (both are waiting for the engine)
    streams.leave(stream)  # (the last client left: forgotten, cancelled)
    flights.leave(flight)
    await streams.close()
    await flights.close()
    assert stream_task is not None and stream_task.done()
    assert flight_task is not None and flight_task.done()
