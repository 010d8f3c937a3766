"""Front CPU per forward over real sockets against a canned engine: S1's small live answer
without Postgres, its user and kernel CPU apart.

Run: `.venv/bin/python benchmarks/fwd_live.py [N] [--arms proxy,floor,nginx] [--baseline DIR]`.

Why: S1 measures the proxy, nginx and the floor in front of a real engine, whose own CPU
(and Postgres's) shares the two cores and moves the numbers from run to run;
`floor_inprocess.py` measures only the Python of one forward, without the kernel and the
event loop. This is between the two: each front forwards to a canned engine (a uvloop
server writing `floor_inprocess.ANSWER`, the recorded small live answer, to every request)
and a pipelining-free load generator of its own protocols keeps `--concurrency` requests in
flight; each front's user and system CPU per request are read from /proc, so whatever the
proxy adds beyond the floor is seen as Python (user) or as syscalls (system). `--baseline
DIR` runs another checkout's proxy beside (a before/after in one run). Arms run in turn,
several rounds; the best (least CPU) round of each is reported, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import (  # noqa: E402
    ENGINE_SECRET,
    ISSUER,
    JWT_SECRET,
    UNLIMITED,
    NginxProcess,
    free_port,
    token,
    tree,
)
from floor_inprocess import ANSWER, QUERY  # noqa: E402

TABLES = {"items": {"allow": [{"where": "org_id = {{org_id}}",
                               "columns": ["id", "org_id", "title"]}]}}  # fmt: skip


class _Engine(asyncio.Protocol):
    """Answers every complete request head with the canned answer (GETs only: no body)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        n = buf.count(b"\r\n\r\n")
        if n:
            self.transport.write(ANSWER * n)  # type: ignore[attr-defined]
            buf = buf[buf.rfind(b"\r\n\r\n") + 4 :]
        self.buf = buf


#: Reconnections in progress (a task must be referenced until it is done).
_RECONNECTS: set[asyncio.Task[object]] = set()


class _Client(asyncio.Protocol):
    """One kept-alive client connection sending the next request once its answer is in."""

    def __init__(
        self, request: bytes, left: list[int], done: asyncio.Future[None], port: int
    ) -> None:
        self.port = port
        self.request = request
        self.left = left
        self.done = done
        self.buf = b""
        self.need = -1
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        if self.left[0] <= 0:
            if not self.done.done() and self.left[1] == 0:
                self.done.set_result(None)
            return
        self.left[0] -= 1
        self.left[1] += 1
        self.waiting = True
        self.transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting and not self.done.done():
            self.done.set_exception(RuntimeError("connection lost with a request in flight"))
        elif self.left[0] > 0 and not self.done.done():  # (nginx's keepalive_requests: 1000)
            loop = asyncio.get_running_loop()
            task = loop.create_task(loop.create_connection(
                lambda: _Client(self.request, self.left, self.done, self.port),
                "127.0.0.1", self.port))  # fmt: skip
            _RECONNECTS.add(task)
            task.add_done_callback(_RECONNECTS.discard)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                at = head.find(b"content-length:")
                if not head.startswith(b"http/1.1 200") or at < 0:
                    if not self.done.done():
                        self.done.set_exception(RuntimeError(f"answer: {self.buf[:400]!r}"))
                    return
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
                self.close = b"connection: close" in head
                self.need = end + 4 + length
            if len(self.buf) < self.need:
                return
            self.buf = self.buf[self.need :]
            self.need = -1
            self.waiting = False
            self.left[1] -= 1
            if self.close:  # (its next request goes on a new connection: `connection_lost`)
                self.transport.close()
                if self.left[0] <= 0 and self.left[1] == 0 and not self.done.done():
                    self.done.set_result(None)
                return
            self._next()


def _cpu(pid: int) -> tuple[float, float]:
    user = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


async def _load(port: int, request: bytes, n: int, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    left = [n, 0]
    done: asyncio.Future[None] = loop.create_future()
    transports = []
    for _ in range(concurrency):
        t, _ = await loop.create_connection(
            lambda: _Client(request, left, done, port), "127.0.0.1", port
        )
        transports.append(t)
    await asyncio.wait_for(done, 120)
    for t in transports:
        t.close()


def _proxy(root: Path, engine_port: int, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "upstream": {"url": f"http://127.0.0.1:{engine_port}", "pool_size": 8192,
                     "first_byte_timeout": 90, "secret_env": "ENGINE_SECRET"},
        "issuers": [{"issuer": ISSUER, "audience": "bench", "algorithms": ["HS256"],
                     "keys": [{"secret_env": "BENCH_JWT_SECRET"}]}],
        "tables": TABLES, "collapse": False, "cache": {"max_bytes": 0},
        "limits": dict(UNLIMITED),
    }  # fmt: skip
    path = workdir / f"proxy-{port}.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "ENGINE_SECRET": ENGINE_SECRET, "BENCH_JWT_SECRET": JWT_SECRET}
    return subprocess.Popen(
        [str(root / ".venv" / "bin" / "python"), "-m", "proxy", "--config", str(path),
         "--log-level", "WARNING"],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def _wait_port(port: int) -> None:
    for _ in range(300):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


async def main(n: int, arms: list[str], rounds: int, concurrency: int,
               baseline: Path | None) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    engine_port = free_port()
    server = await loop.create_server(_Engine, "127.0.0.1", engine_port)
    workdir = Path(tempfile.mkdtemp(prefix="shapegate-fwd-live-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    nginx = None
    ports: dict[str, int] = {}
    try:
        for arm in arms:
            port = free_port()
            if arm == "proxy":
                procs[arm] = _proxy(HERE.parent, engine_port, port, workdir)
            elif arm == "base":
                assert baseline is not None
                procs[arm] = _proxy(baseline, engine_port, port, workdir)
            elif arm == "floor":
                procs[arm] = subprocess.Popen(  # noqa: ASYNC220 (started before any load)
                    [sys.executable, str(HERE / "floor_forwarder.py"), str(port),
                     f"127.0.0.1:{engine_port}"], stdout=subprocess.DEVNULL,
                )  # fmt: skip
            elif arm == "nginx":
                nginx = NginxProcess(engine_port, cache=False)
                port = int(nginx.url.rsplit(":", 1)[1])
                procs[arm] = nginx.proc
            ports[arm] = port
        for port in ports.values():
            await _wait_port(port)
        auth = f"Authorization: Bearer {token(org_id='org-a')}\r\n"
        requests = {}
        for arm, port in ports.items():
            if arm in ("proxy", "base"):
                target, extra = f"/v1/shape?{QUERY}", auth
            else:  # (the engine URL the proxy builds, roughly: the canned engine ignores it)
                target, extra = f"/v1/shape?{QUERY}&secret=x&where=org_id%3D%27org-a%27", ""
            requests[arm] = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                             "User-Agent: node\r\nAccept: */*\r\n\r\n").encode()  # fmt: skip
            await _load(port, requests[arm], 2000, concurrency)  # warm-up
        best: dict[str, tuple[float, float, float, float]] = {}
        for _ in range(rounds):
            for arm, port in ports.items():
                pid = procs[arm].pid
                u0, s0 = _cpu(pid)
                t0, g0 = time.perf_counter(), time.process_time()
                await _load(port, requests[arm], n, concurrency)
                dt, gen = time.perf_counter() - t0, (time.process_time() - g0) / n * 1e6
                u1, s1 = _cpu(pid)
                user, system = (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6
                if arm not in best or user + system < sum(best[arm][:2]):
                    best[arm] = (user, system, n / dt, gen)
        load = os.getloadavg()
        print(f"N={n} x {rounds} rounds, c={concurrency}, load {load[0]:.2f} {load[1]:.2f}")
        for arm, (user, system, rps, gen) in best.items():
            print(f"{arm:>6}: {user + system:6.1f} µs/req (user {user:5.1f}, sys {system:5.1f})"
                  f"  {rps:7.0f} req/s; load generator and engine {gen:.1f} µs/req")  # fmt: skip
        if "nginx" in best:
            ng = sum(best["nginx"][:2])
            ratios = [f"{a} {sum(v[:2]) / ng:.2f}x" for a, v in best.items() if a != "nginx"]
            print("  ratios to nginx: " + ", ".join(ratios))
    finally:
        for arm, p in procs.items():
            if arm == "nginx" and nginx is not None:
                nginx.stop()
            else:
                p.terminate()
                p.wait(15)
        server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=20000)
    ap.add_argument("--arms", default="proxy,floor,nginx")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--baseline", type=Path)
    a = ap.parse_args()
    arms = a.arms.split(",")
    if a.baseline is not None and "base" not in arms:
        arms.append("base")
    uvloop.run(main(a.n, arms, a.rounds, a.concurrency, a.baseline))
