"""S3: initial sync (1M and 10M narrow rows, a wide table): engine cold and warm against
Postgres's own COPY as JSON.

Run alone: `.venv/bin/python benchmarks/initial_sync.py [--quick] [--only narrow|10m|wide]
[--rows N] [--rounds N]`.

Tables (one Postgres for the run):
- `big`: narrow rows (id bigint, title text, n int), 1M (200,000 with `--quick`);
- `big10m`: the same, 10M rows (full run only);
- `wide`: 30 columns (id bigint, 19 text, 10 jsonb), ~1.2 kB per row as JSON.

Arms of each table, measured side by side in one run on the same database:
- `COPY (SELECT row_to_json(t) FROM <table> t) TO STDOUT`, read by `psql` into a pipe (the
  floor: Postgres producing the same rows as JSON; see `copy_json`);
- engine cold: a new shape, from `offset=-1` to up-to-date over HTTP, bodies read fully; time
  to first byte (the first response's headers) and the engine's peak RSS sampled every 20 ms
  throughout;
- engine warm: another client of the same shape (the shape log exists), three times;
- floor (the least a warm sync can cost here): the same answers served from files by nginx
  (the shipped tier's cache, `sendfile on`), read by the same client: a first pass fills
  the cache, then three hits. The "warm vs cold" row's cold/floor is the most cold/warm
  this machine allows for that table, warm/floor what the engine's warm path adds to it;
- for `big` only: proxy (collapsing and cache off: the forwarding cost), beside the
  floor's nginx miss (its filling pass) and hit.
COPY and cold alternate (three rounds for `big` and `wide` and two for `big10m` in the full
run, one with `--quick`, or `--rounds`) and report their medians and range, and the range of
the load average before the arms. CPU: engine (its kernel share in brackets, see below), Postgres
(all backends), COPY's reader and this load generator (the HTTP client reading the bodies).

Same conditions for both sides (12-05: at 10M rows cold/COPY was 0.76-0.83 alone and
1.37-1.42 after the other tables' arms; the engine's or Postgres's CPU for the same cold
sync doubled):
- the earlier arms' files (engine data directories, the previous table's cluster) are
  deleted before a table is loaded (`remove_leftovers_now`), so a table's arms do not run
  with the page cache of whatever ran before them;
- after the load, `VACUUM (FREEZE, ANALYZE)` and `CHECKPOINT`: the first scan of either
  side finds every hint bit set and no dirty buffer of the load's to write (the engine's
  TID-range scans use all of shared_buffers and wrote ~90 MB of them at 10M rows; COPY's
  ring-buffered seq scan did not);
- a `sync` before every arm (`settle`, not timed): the engine runs with `--no-fsync` as
  Postgres with `fsync=off`, so the load's and each cold sync's files would be written back
  30 s later, in whichever arm runs then. Only the side that writes pays for such a backlog:
  with 1.8 GB of dirty pages left before it (12-05, 10M, load 17-19), a cold sync took 38.4
  and 27.5 s against 20.5 and 21.0 s after a sync (engine CPU 6.39 and 4.84 s against 3.70
  and 3.90; its writer threads' kernel time 4-5x: the kernel throttles a writer once dirty
  pages pass ~2.5 GB here), while COPY took 33.8 s against 33.2 s. Before this, the 10M
  arm started with 1.2-1.8 GB dirty (the load, the earlier tables' arms);
- the order alternates (COPY first in even rounds, cold first in odd ones).
None of this removes work from either side: the engine still writes (and the kernel still
fills pages for) every chunk file inside its timed arm, and COPY reads the same table.

What these steps cannot make equal is this VM's memory: it is a Firecracker guest with
free page reporting, so free memory goes back to the host, and the first touch of such a
page faults in the host. A cold sync at 10M fills 1.6 GB of new page cache, and the
engine's kernel CPU (in brackets) shows which memory it got: 1.4-2.1 s when the pages were
recently used, 5.0-6.1 s when not (12-05, perf: 52% of the engine's samples in
`copy_folio_from_iter_atomic`, ~10 µs per 4 KiB page, all in the chunk writer threads),
which took cold/COPY at 10M from 0.65-0.83 to 0.94-1.30 (load 14-19), alone or after the
other tables alike. COPY fills no new memory. Which state a run gets depends on the whole
machine (other sessions' memory churn), not on the order of the arms. Each cold run now
reports the kernel's cost of new page cache just before it (`new_page_cost`, in the CPU
row): ~0.5-1 µs per 4 KiB page is the fast mode, ~5-10 µs the slow one. (12-05 night,
dirty pages ruled out: `sync` before each arm, 1.6 GB stays under the background writeback
threshold of 2.1 GB, nr_throttled_written 0, no reclaim; the engine's own share, the heap
given back and faulted in again after every chunk, ~300k faults per 10M-row sync, is gone
since `snapshot/heap.py`.)
Targets (issue 13 bar 5): cold <= 1.0x COPY; warm >= 10x faster than cold; engine RSS <=
150 MiB; time to first byte <= 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import psycopg
from _common import (
    PG_BIN,
    EngineProcess,
    NginxProcess,
    Postgres,
    ProxyProcess,
    Row,
    Stack,
    fmt,
    remove_leftovers_now,
    settle,
    token,
    verdict,
)

TABLES = {name: {"allow": [{"all_rows": True}]} for name in ("big", "big10m", "wide")}

WIDE_TEXT, WIDE_JSONB = 19, 10
#: Warm syncs (and nginx cache hits, the floor) per table; the median is reported.
WARM_RUNS = 3


@dataclass(frozen=True)
class Spec:
    table: str
    rows: int
    rounds: int
    fronts: bool  # proxy and nginx arms too


def create_table(url: str, spec: Spec) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if spec.table == "wide":
            cols = ["id bigint PRIMARY KEY"]
            cols += [f"t{i} text" for i in range(WIDE_TEXT)]
            cols += [f"j{i} jsonb" for i in range(WIDE_JSONB)]
            conn.execute(f"CREATE TABLE wide ({', '.join(cols)})")
            values = ["g"]
            values += [f"'text value {i} of row ' || g" for i in range(WIDE_TEXT)]
            values += [
                f"""jsonb_build_object('k', {i}, 'row', g, 'name', 'item "' || g || '"',
                    'tags', jsonb_build_array('a', 'b', g %% 7))"""
                for i in range(WIDE_JSONB)
            ]
            conn.execute(
                f"INSERT INTO wide SELECT {', '.join(values)} FROM generate_series(1, %s) g",
                (spec.rows,),
            )
        else:
            conn.execute(f"CREATE TABLE {spec.table} (id bigint PRIMARY KEY, title text, n int)")
            conn.execute(
                f"INSERT INTO {spec.table} SELECT g, 'title ' || g, g %% 1000 "
                "FROM generate_series(1, %s) g",
                (spec.rows,),
            )
        # Both sides then read a table in the same state: FREEZE sets every hint bit and the
        # visibility map now (not in the first arm's scan, whichever side that is), and
        # CHECKPOINT writes the load's dirty buffers now. The engine's scans (TID ranges, no
        # ring buffer) go through all of shared_buffers, so a first cold sync otherwise
        # wrote ~90 MB of the load's dirty buffers itself at 10M rows (pg_stat_bgwriter
        # buffers_backend 11.7K), which COPY's ring-buffered scan never touched.
        conn.execute(f"VACUUM (FREEZE, ANALYZE) {spec.table}")
        conn.execute("CHECKPOINT")
    settle()  # the load's 1-2 GB of heap and WAL written back now, not in the first arm


def copy_json_seconds(url: str, table: str) -> tuple[float, int]:
    """`COPY (SELECT row_to_json(t) ...)` read to the end: (seconds, bytes)."""
    seconds, n, _ = copy_json(url, table)
    return seconds, n


def copy_json(url: str, table: str) -> tuple[float, int, float]:
    """`COPY (SELECT row_to_json(t) ...)` read to the end: (seconds, bytes, the reader's CPU
    seconds).

    The reader is `psql` (libpq in C) writing to a pipe that this process reads in 1 MiB
    pieces into one reused buffer, as the engine's load generator reads its bodies. psycopg
    iterated row by row in Python here until 12-05: 5 CPU-seconds of reader per 10M rows
    against psql's ~0.8, which on this shared 2-core machine made COPY slower whenever the
    cores were contended, a tilt in the engine's favour (measured at 1M rows: 0.49-0.52 s
    against 0.07-0.09 s of reader CPU).
    """
    cmd = [str(PG_BIN / "psql"), url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c",
           f"\\copy (SELECT row_to_json(t) FROM {table} t) TO STDOUT"]  # fmt: skip
    buf = bytearray(1 << 20)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        stdout = cast(io.BufferedReader, proc.stdout)  # (Popen's default buffering)
        while got := stdout.readinto(buf):
            n += got
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"psql COPY of {table} failed ({proc.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    psql_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, n, psql_cpu + time.process_time() - c0


class PeakRSS:
    """Samples a process's RSS every 20 ms in a thread; `peak` is the highest seen."""

    def __init__(self, proc: EngineProcess) -> None:
        self.proc, self.peak = proc, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.rss())
            except (OSError, ValueError):
                pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Sync:
    seconds: float
    ttfb: float  # first response's headers
    nbytes: int
    requests: int
    client_cpu: float  # this process's CPU seconds meanwhile


class _Response(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection whose bodies are counted, not kept.

    The load generator shares the two cores with what it measures, so it reads into one
    reused buffer: what a client that streams the body to its own store would pay, with
    no per-response copies (aiohttp's client joined each 10 MB body: about twice this
    CPU). Content-Length and chunked bodies (the proxy streams).
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(1 << 20))
        self.pending = bytearray()
        self.state = "head"
        self.left = 0
        self.nbytes = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.done: asyncio.Future[None] | None = None
        self.headers_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed mid-response"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        data = self.view[:nbytes]
        while data and self.done is not None and not self.done.done():
            data = self._feed(data)

    def _take(self, data: memoryview, sep: bytes) -> tuple[bytes | None, memoryview]:
        self.pending += data
        i = self.pending.find(sep)
        if i < 0:
            return None, data[len(data) :]
        line = bytes(self.pending[:i])
        rest = memoryview(bytes(self.pending[i + len(sep) :]))
        self.pending.clear()
        return line, rest

    def _feed(self, data: memoryview) -> memoryview:
        if self.state in ("body", "chunk"):
            n = min(self.left, len(data))
            self.left -= n
            self.nbytes += n
            if not self.left:
                self.state = "chunk-end" if self.state == "chunk" else self._finish()
            return data[n:]
        line, data = self._take(data, b"\r\n\r\n" if self.state == "head" else b"\r\n")
        if line is None:
            return data
        if self.state == "head":
            self.headers_at = time.perf_counter()
            first, *lines = line.decode("latin-1").split("\r\n")
            self.status = int(first.split(" ", 2)[1])
            self.headers = {}
            for h in lines:
                k, _, v = h.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            if self.headers.get("transfer-encoding") == "chunked":
                self.state = "size"
            else:
                self.left = int(self.headers.get("content-length", "0"))
                self.state = "body" if self.left else self._finish()
        elif self.state == "size":
            self.left = int(line.split(b";")[0], 16)
            self.state = "chunk" if self.left else "trailer"
        elif self.state == "chunk-end":
            self.state = "size"
        elif self.state == "trailer" and not line:
            self.state = self._finish()
        return data

    def _finish(self) -> str:
        assert self.done is not None
        self.done.set_result(None)
        return "head"

    async def get(self, path: str, headers: dict[str, str], host: str) -> None:
        assert self.transport is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.nbytes, self.done = 0, asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        await self.done


async def sync(url: str, headers: dict[str, str] | None = None) -> Sync:
    """Follow `url` (offset=-1) to up-to-date, reading every body fully."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    base = f"{parts.path}?{parts.query}".replace("offset=-1", "").rstrip("&")
    query = "offset=-1"
    total = requests = 0
    ttfb = 0.0
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(_Response, host, port)
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        while True:
            await conn.get(f"{base}&{query}", headers or {}, f"{host}:{port}")
            if not requests:
                ttfb = conn.headers_at - t0
            requests += 1
            if conn.status != 200:
                raise RuntimeError(f"{conn.status} from {base[:80]}")
            total += conn.nbytes
            handle, offset = conn.headers["electric-handle"], conn.headers["electric-offset"]
            query = f"offset={offset}&handle={handle}"
            if "electric-up-to-date" in conn.headers:
                break
        return Sync(time.perf_counter() - t0, ttfb, total, requests, time.process_time() - c0)
    finally:
        transport.close()


#: Bytes of new page cache `new_page_cost` writes (a sample: 4% of a 10M-row cold sync's).
PAGE_PROBE = 64 << 20


def new_page_cost(directory: str) -> tuple[float, str]:
    """Kernel µs per 4 KiB page of new page cache right now: `PAGE_PROBE` bytes written to a
    new file in `directory`. Returns (µs, the file's path): delete it after the arm.

    On this VM (virtio-balloon free page reporting, order 9) free memory is given back to
    the host, and the first touch of such a page faults in the host: ~10 µs per page against
    ~0.6 µs for a page freed a moment ago (12-05, 1.6 GB of 10 MiB files: 4.0 s of kernel
    CPU new, 0.36 s right after deleting the same amount, 0.25 s overwriting cached pages).
    A cold sync writes its chunks into new page cache, so this is its mode. The file is kept
    until the arm ends so that the arm does not get its freed pages."""
    path = os.path.join(directory, f"page-probe-{os.getpid()}")
    buf = bytes(1 << 20)  # (the zero page: reading it costs no fault)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        s0 = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
        for _ in range(PAGE_PROBE >> 20):
            os.write(fd, buf)
        stime = resource.getrusage(resource.RUSAGE_THREAD).ru_stime - s0
    finally:
        os.close(fd)
    return stime * 1e6 / (PAGE_PROBE >> 12), path


def _sys_cpu(pid: int) -> float:
    """A process's kernel CPU seconds (all its threads): for the engine's cold sync, mostly
    the page cache its chunk files go into."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def _range(xs: list[float]) -> str:
    return f"{fmt(min(xs), 's')}-{fmt(max(xs), 's')}"


async def measure(pg: Postgres, spec: Spec, warm: bool = True) -> list[Row]:
    remove_leftovers_now()  # earlier arms' files: deleted now, before this table's load
    create_table(pg.url, spec)
    # Warm Postgres's buffers for every arm. `run_all` skips it for 10M rows (15-60 s): just
    # after create_table's VACUUM a first COPY of that table was not slower than a second.
    if warm:
        copy_json_seconds(pg.url, spec.table)
    pairs = [("table", spec.table), ("offset", "-1")]
    stack = Stack()
    copies: list[float] = []
    colds: list[Sync] = []
    loads: list[float] = []  # the 1-minute load average before each arm
    page_costs: list[float] = []  # `new_page_cost` before each cold arm
    peak = 0.0
    try:
        # COPY and cold sync alternate for `rounds` rounds and each reports its median: a
        # single ~1 s sample of either moves by 10-15% on this shared machine. The order
        # swaps every round (COPY first in even rounds, cold first in odd ones: ABBA), so
        # neither side always runs in the state the other leaves, and every arm starts
        # after a `sync` (`settle`). Every cold round is a fresh engine (a new data
        # directory, so a new shape and snapshot); the last one stays for the warm arms.
        for i in range(spec.rounds):
            last = i == spec.rounds - 1
            engine = EngineProcess(pg.url)
            if last:
                stack.add(engine)
            try:
                await engine.wait_ready()
                direct = ProxyProcess.build_direct_url(TABLES, engine.url, {"sub": "u1"}, pairs)
                for arm in ("copy", "cold") if i % 2 == 0 else ("cold", "copy"):
                    settle()
                    loads.append(os.getloadavg()[0])
                    if arm == "copy":
                        pg0 = pg.cpu()
                        copy_s, copy_bytes, copy_client_cpu = copy_json(pg.url, spec.table)
                        copy_pg_cpu = pg.cpu() - pg0
                        copies.append(copy_s)
                        continue
                    page_us, probe = new_page_cost(os.path.dirname(engine.data_dir))
                    page_costs.append(page_us)
                    e0, pg0, sys0 = engine.cpu(), pg.cpu(), _sys_cpu(engine.pid)
                    rss = PeakRSS(engine)
                    try:
                        cold = await sync(direct)
                    finally:
                        peak = max(peak, rss.stop())
                        os.unlink(probe)
                    cold_cpu, cold_pg_cpu = engine.cpu() - e0, pg.cpu() - pg0
                    cold_sys = _sys_cpu(engine.pid) - sys0
                    colds.append(cold)
            finally:
                if not last:
                    engine.stop()
        copy_s = statistics.median(copies)
        cold_s = statistics.median(c.seconds for c in colds)
        ttfb = max(c.ttfb for c in colds)
        # Warm: WARM_RUNS syncs of the existing shape log, their median (one ~0.1 s sample
        # moved by 30% on this shared machine); engine CPU per sync.
        e0 = engine.cpu()
        rss = PeakRSS(engine)
        warms = [await sync(direct) for _ in range(WARM_RUNS)]
        peak = max(peak, rss.stop())
        warm_cpu = (engine.cpu() - e0) / WARM_RUNS
        warm_sync = _median_sync(warms)
        floors, floor_cpu, fill = await nginx_floor(stack, engine, direct)
        floor = _median_sync(floors)
        label = f"S3 initial sync {spec.rows:,} rows" + (" (wide)" if spec.table == "wide" else "")
        spread = (f"; median of {spec.rounds}: COPY {_range(copies)}, cold "
                  f"{_range([c.seconds for c in colds])}") if spec.rounds > 1 else ""  # fmt: skip
        spread += f"; load {min(loads):.1f}-{max(loads):.1f}"
        cold_pages = ", ".join(
            f"{fmt(c.seconds, 's')} at {us:.1f} µs" for c, us in zip(colds, page_costs, strict=True)
        )
        last_cold = colds[-1]
        out = [
            Row(label, f"wall time to up-to-date ({last_cold.nbytes / 1e6:.0f} MB, "
                       f"{last_cold.requests} requests{spread})",
                [("COPY json", fmt(copy_s, "s")), ("engine cold", fmt(cold_s, "s")),
                 ("warm", fmt(warm_sync.seconds, "s"))],
                f"cold/COPY {cold_s / copy_s:.2f}", "<= 1.0 (issue 13)",
                verdict(cold_s / copy_s <= 1.0)),
            Row(label, f"warm vs cold (median of {WARM_RUNS}: warm "
                       f"{_range([w.seconds for w in warms])}, floor = nginx cache hits of "
                       f"the same answers {_range([f.seconds for f in floors])})",
                [("cold", fmt(cold_s, "s")), ("warm", fmt(warm_sync.seconds, "s")),
                 ("floor", fmt(floor.seconds, "s"))],
                f"cold/warm {cold_s / warm_sync.seconds:.1f}x, warm/floor "
                f"{warm_sync.seconds / floor.seconds:.2f}, "
                f"cold/floor {cold_s / floor.seconds:.1f}x",
                ">= 10x (issue 13)", verdict(cold_s / warm_sync.seconds >= 10)),
            Row(label, "time to first byte (cold), peak engine RSS (cold + warm)",
                [("TTFB", fmt(ttfb, "s")), ("RSS", fmt(peak, "MiB"))],
                "", "TTFB <= 0.5 s, RSS <= 150 MiB (issue 13)",
                verdict(ttfb <= 0.5 and peak <= 150)),
            Row(label, "CPU s: engine (Postgres) / load generator",
                [("COPY", f"({fmt(copy_pg_cpu)}) / {fmt(copy_client_cpu)}"),
                 ("cold", f"{fmt(cold_cpu)} [kernel {fmt(cold_sys)}] ({fmt(cold_pg_cpu)}) / "
                          f"{fmt(last_cold.client_cpu)}"),
                 ("warm", f"{fmt(warm_cpu)} / {fmt(warm_sync.client_cpu)}"),
                 ("floor", f"nginx {fmt(floor_cpu)} / {fmt(floor.client_cpu)}"),
                 ("cold runs at new page cache µs/4 KiB", cold_pages),
                 ("rows/s cold", fmt(spec.rows / cold_s)),
                 ("COPY json MB", fmt(copy_bytes / 1e6))], "", "", ""),
        ]  # fmt: skip
        if spec.fronts:
            out.append(await fronts(stack, engine, label, warm_sync.seconds, fill, floor))
    finally:
        stack.close()
    return out


async def nginx_floor(stack: Stack, engine: EngineProcess,
                      direct: str) -> tuple[list[Sync], float, Sync]:  # fmt: skip
    """The floor of a warm sync: the same answers (status, headers, bodies) served from
    files by nginx (the shipped tier's cache, `sendfile on`), read by the same load
    generator over the same kind of connection. A first pass fills the cache (nginx
    "miss"); then WARM_RUNS hits. Returns (the hits, nginx's CPU s per hit, the fill)."""
    nginx = stack.add(NginxProcess(engine.port, cache=True))
    await nginx.wait_ready()
    via = direct.replace(engine.url, nginx.url)
    fill = await sync(via)
    c0 = nginx.cpu()
    hits = [await sync(via) for _ in range(WARM_RUNS)]
    return hits, (nginx.cpu() - c0) / WARM_RUNS, fill


def _median_sync(runs: list[Sync]) -> Sync:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


async def fronts(stack: Stack, engine: EngineProcess, label: str, warm_s: float,
                 fill: Sync, hit: Sync) -> Row:  # fmt: skip
    proxy = stack.add(ProxyProcess(engine.url, TABLES, collapse=False, cache_bytes=0))
    await proxy.wait_ready()
    auth = {"Authorization": f"Bearer {token()}"}
    proxied = await sync(f"{proxy.url}/v1/shape?table=big&offset=-1", auth)
    return Row(label, "front tiers vs warm direct",
               [("warm", fmt(warm_s, "s")), ("proxy", fmt(proxied.seconds, "s")),
                ("nginx miss", fmt(fill.seconds, "s")), ("nginx hit", fmt(hit.seconds, "s"))],
               f"warm/proxy {warm_s / proxied.seconds:.2f}, "
               f"warm/nginx-hit {warm_s / hit.seconds:.2f}",
               "proxy >= 0.8x direct (anchors S3)",
               verdict(warm_s / proxied.seconds >= 0.8))  # fmt: skip


def specs(quick: bool, rows_n: int | None = None, rounds: int | None = None) -> dict[str, Spec]:
    many = rounds or (1 if quick else 3)
    return {
        "narrow": Spec("big", rows_n or (200_000 if quick else 1_000_000), many, fronts=True),
        "wide": Spec("wide", 50_000 if quick else 300_000, many, fronts=False),
        **({} if quick else {"10m": Spec("big10m", 10_000_000, rounds or 2, fronts=False)}),
    }  # fmt: skip


async def run(
    quick: bool,
    rows_n: int | None = None,
    only: str | None = None,
    rounds: int | None = None,
    warm: bool = True,
) -> list[Row]:
    stack = Stack()
    out: list[Row] = []
    try:
        pg = stack.add(Postgres())
        for name, spec in specs(quick, rows_n, rounds).items():
            if only is None or name == only:
                out += await measure(pg, spec, warm)
    finally:
        stack.close()
    return out


if __name__ == "__main__":
    from _common import machine, table

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=None, help="narrow rows (default 1M)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["narrow", "wide", "10m"], default=None)
    ap.add_argument("--rounds", type=int, default=None, help="COPY/cold rounds per table")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()  # as run_all.py: keep the load generator's share of the CPU small
    except ImportError:
        pass
    print(machine())
    print(table(asyncio.run(run(a.quick, a.rows, a.only, a.rounds))))
