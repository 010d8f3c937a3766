"""Where a forward's CPU goes: user vs kernel time and system calls per request, for nginx,
the floor and the proxy in one run (issue 13, bar 4).

Run: `.venv/bin/python benchmarks/s1_split.py [--n 6000] [--rounds 3] [--baseline DIR]
[--kinds live,catch-up]` (not in `make bench`; about 1-2 minutes).

S1 measures each front's CPU per uncached forward as one number. This splits it, with the
fronts of S1's "nginx", "floor" and "proxy" arms (`--baseline DIR` adds another checkout's
proxy beside, as `proxy@base`) in front of one engine, the same answers and the same load
(`n` requests at c = 32 on kept-alive connections, arms alternated, `rounds` rounds):

- user and system CPU per request, from utime / stime in /proc/<pid>/stat of the front's
  processes (nginx: master and workers), summed over the rounds (the clock tick is 10 ms:
  6,000 requests of ~100 µs are ~60 ticks, so about +-2%);
- system calls per request by name, counted by the kernel's tracepoints in a separate pass
  (`perf stat -e 'syscalls:sys_enter_*' -p PIDS`: counters, no tracing, so the front runs at
  its own speed and batches as it would; `strace -c` slows it and changes the counts);
- voluntary context switches per request (a front that sleeps in epoll_wait between
  requests wakes once per batch of events).
Needs `perf` (Debian: linux-perf) and root (or perf_event_paranoid <= 1); without them the
system-call columns are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import _common
import psycopg
import s1_front
from _common import (
    EngineProcess,
    NginxProcess,
    Postgres,
    Process,
    ProxyProcess,
    Stack,
    machine,
    remove_later,
    token,
    tree,
)
from _common import load as machine_load
from edge_front import PlainNginxCallgrind, _callgrind_control, _callgrind_total

TICK = os.sysconf("SC_CLK_TCK")
#: What a front's CPU samples are grouped by (`_binary`).
_BINARIES = ("kernel", "nginx", "pcre", "python", "uvloop", "httptools", "multidict", "libc")


def _binary(dso: str) -> str:
    """A group of `_BINARIES` for one of perf's dso names (else the name itself)."""
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("libpython") or dso.startswith("python"):
        return "python"
    if dso.startswith("libc.so"):
        return "libc"
    if dso.startswith("libpcre"):
        return "pcre"
    module = dso.split(".cpython-")[0]
    return {"loop": "uvloop", "parser": "httptools", "url_parser": "httptools",
            "_multidict": "multidict"}.get(module, module)  # fmt: skip


def times(pids: list[int]) -> tuple[float, float, int, int]:
    """(user s, system s, voluntary, involuntary context switches) of `pids`, all threads."""
    user = system = 0.0
    vol = invol = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / TICK
            system += int(fields[12]) / TICK
            for task in Path(f"/proc/{pid}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            pass
    return user, system, vol, invol


def _start_perf(front: Process, *args: str) -> subprocess.Popen[bytes]:
    cmd = ["perf", *args, "-p", ",".join(str(p) for p in tree(front.pid))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_perf(perf: subprocess.Popen[bytes]) -> None:
    perf.send_signal(signal.SIGINT)
    perf.wait(30)


def _counts(out: Path, done: int) -> dict[str, float]:
    """`perf stat -x,` output: system calls per request by name."""
    counts: dict[str, float] = {}
    for line in out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].isdigit() and int(parts[0]) > 0:
            name = parts[2].removeprefix("syscalls:sys_enter_")
            counts[name] = int(parts[0]) / max(done, 1)
    out.unlink()
    return counts


def _shares(out: Path, keep: bool) -> dict[str, float]:
    """`perf report --sort dso` of a recording: shares of the samples by `_binary`."""
    report = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "--sort", "dso"],
                            capture_output=True, text=True).stdout  # fmt: skip
    if not keep:
        out.unlink()
    shares: dict[str, float] = {}
    for line in report.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%"):
            name = _binary(parts[1])
            shares[name] = shares.get(name, 0.0) + float(parts[0][:-1]) / 100
    return shares


def _temp() -> Path:
    return Path(tempfile.mkstemp(prefix="shapegate-bench-split-")[1])


async def syscalls(front: Process, url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    """System calls per request of `front` by name, while n requests run (see module doc)."""
    out = _temp()
    perf = _start_perf(front, "stat", "-x", ",", "-o", str(out), "-e", "syscalls:sys_enter_*")
    await asyncio.sleep(1.5)  # (attached: several hundred counters per thread)
    _, done, _ = await s1_front.load(url, headers, n, 32, 120)
    _stop_perf(perf)
    return _counts(out, done)


async def profile(front: Process, url: str, headers: dict[str, str], n: int,
                  keep: Path | None) -> dict[str, float]:  # fmt: skip
    """Where `front`'s time goes, as shares of its CPU samples by binary (the kernel, the
    interpreter, uvloop, httptools, libc...): `perf record` at 10 kHz while n requests run.
    `keep`: leave the recording there (for `perf report -i FILE --sort sym`)."""
    out = keep or _temp()
    perf = _start_perf(front, "record", "-q", "-e", "cpu-clock", "-F", "10000", "-o", str(out))
    await asyncio.sleep(1.0)
    await s1_front.load(url, headers, n, 32, 120)
    _stop_perf(perf)
    return _shares(out, keep is not None)


class _UnderCallgrind:
    """While inside, `sys.executable` runs Python under callgrind (for `ProxyProcess` and
    `FloorProcess`, which start `sys.executable`): one output file per process in `dir`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.count = 0
        self.saved = sys.executable
        self.root: Path | None = None

    def __call__(self, root: Path | None) -> _UnderCallgrind:
        """The next process is another checkout's (its .venv, its directory), if `root`."""
        self.root = root
        return self

    def __enter__(self) -> Path:
        self.count += 1
        out = self.dir / f"callgrind{self.count}.out"
        wrapper = self.dir / f"python{self.count}"
        python = self.saved if self.root is None else str(self.root / ".venv" / "bin" / "python")
        wrapper.write_text(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file="
                           f"{out} {python} \"$@\"\n")  # fmt: skip
        wrapper.chmod(0o755)
        sys.executable = str(wrapper)
        return out

    def __exit__(self, *_: object) -> None:
        sys.executable = self.saved


async def _instructions(front: Process, out: Path, url: str, headers: dict[str, str], n: int,
                        concurrency: int) -> float:  # fmt: skip
    """User-space instructions per request of `front` (under callgrind), n requests."""
    await s1_front.load(url, headers, 50, concurrency, 300)
    _callgrind_control("-z", front.pid)
    _, done, _ = await s1_front.load(url, headers, n, concurrency, 300)
    _callgrind_control("-d", front.pid)
    return _callgrind_total(out) / max(done, 1)


async def callgrind_counts(stack: Stack, engine: EngineProcess, proxy: ProxyProcess,
                           targets: dict[str, tuple[str, dict[str, str]]], n: int,
                           baseline: Path | None) -> None:  # fmt: skip
    """User-space instructions per request of each front, each as one process under
    callgrind (nginx: one worker, no master), at c = 32 and c = 1 (load-independent; the
    kernel's share is not in it: see the system calls above)."""
    directory = Path(tempfile.mkdtemp(prefix="shapegate-bench-split-cg-"))
    wrap = _UnderCallgrind(directory)
    nginx = stack.add(PlainNginxCallgrind(engine.port))
    fronts: dict[str, tuple[Process, Path]] = {"nginx": (nginx, nginx.dir / "callgrind.out")}
    with wrap(None) as out:
        fronts["floor"] = (stack.add(s1_front.FloorProcess(engine.port)), out)
    with wrap(None) as out:
        fronts["proxy"] = (stack.add(ProxyProcess(engine.url, s1_front.TABLES, collapse=False,
                                                  cache_bytes=0)), out)  # fmt: skip
    if baseline is not None:
        with wrap(baseline) as out:
            root, _common.ROOT = _common.ROOT, baseline  # (`s1_front.baseline_proxy`'s way)
            try:
                base = ProxyProcess(engine.url, s1_front.TABLES, collapse=False, cache_bytes=0)
            finally:
                _common.ROOT = root
            fronts["proxy@base"] = (stack.add(base), out)
    for front, _ in fronts.values():
        path = "/healthz" if isinstance(front, ProxyProcess) else "/v1/health"
        await front.wait_http(path, timeout=300)
    print("\nUser-space instructions per request (callgrind, each front one process):")
    print("| arm | c = 32 | c = 1 |\n|---|---|---|")
    for arm, (front, out) in fronts.items():
        url, headers = targets[arm]
        url = f"{front.url}/v1/{url.split('/v1/', 1)[1]}"  # (the same request, to this one)
        many = await _instructions(front, out, url, headers, n, 32)
        one = await _instructions(front, out, url, headers, max(n // 4, 100), 1)
        print(f"| {arm} | {many / 1000:.1f}K | {one / 1000:.1f}K |")
    remove_later(directory)


async def run(n: int, rounds: int, kinds: list[str], baseline: Path | None,
              keep_dir: Path | None = None, callgrind: int = 0) -> None:  # fmt: skip
    stack = Stack()
    try:
        pg = stack.add(Postgres())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text, title text)")
            conn.execute("INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-a' ELSE "
                         "'org-b' END, 'title ' || i FROM generate_series(1, 100) i")  # fmt: skip
            conn.execute("CREATE TABLE blob (id int PRIMARY KEY, payload text)")
            conn.execute("INSERT INTO blob SELECT i, md5(i::text) FROM generate_series(1, 10) i")
        engine = stack.add(EngineProcess(pg.url))
        await engine.wait_ready()
        tables = s1_front.TABLES
        proxy = stack.add(ProxyProcess(engine.url, tables, collapse=False, cache_bytes=0))
        nginx = stack.add(NginxProcess(engine.port, cache=False))
        floor = stack.add(s1_front.FloorProcess(engine.port))
        fronts: dict[str, Process] = {"nginx": nginx, "floor": floor, "proxy": proxy}
        if baseline is not None:
            fronts["proxy@base"] = stack.add(s1_front.baseline_proxy(baseline, engine.url))
        for p in fronts.values():
            await p.wait_ready()  # type: ignore[attr-defined]
        auth = {"Authorization": f"Bearer {token(**s1_front.CLAIMS)}"}
        answers = await s1_front.prepare(pg, proxy, auth)
        names = {"live": "small live answer", "catch-up": "1 KiB catch-up",
                 "follower": "follower (new cursor each request)"}  # fmt: skip
        perf = shutil.which("perf") is not None
        print(machine())
        for kind in kinds:
            pairs = answers[names[kind]]
            direct = proxy.direct_url(engine.url, {"sub": "u1", **s1_front.CLAIMS}, pairs)
            query = "&".join(f"{k}={v}" for k, v in pairs)
            targets: dict[str, tuple[str, dict[str, str]]] = {
                "nginx": (direct.replace(engine.url, nginx.url), {}),
                "floor": (direct.replace(engine.url, floor.url), {}),
            }
            for arm, front in fronts.items():
                if arm.startswith("proxy"):
                    targets[arm] = (f"{front.url}/v1/shape?{query}", auth)
            for url, headers in targets.values():
                await s1_front.load(url, headers, 200, 4, 30)
            user = dict.fromkeys(targets, 0.0)
            system = dict.fromkeys(targets, 0.0)
            vol = dict.fromkeys(targets, 0)
            count = dict.fromkeys(targets, 0)
            engine_cpu = dict.fromkeys(targets, 0.0)
            for _ in range(rounds):
                for arm, (url, headers) in targets.items():
                    pids = tree(fronts[arm].pid)
                    u0, s0, v0, _ = times(pids)
                    e0 = engine.cpu()
                    _, done, _ = await s1_front.load(url, headers, n, 32, 120)
                    u1, s1, v1, _ = times(pids)
                    user[arm] += u1 - u0
                    system[arm] += s1 - s0
                    vol[arm] += v1 - v0
                    engine_cpu[arm] += engine.cpu() - e0
                    count[arm] += done
            calls: dict[str, dict[str, float]] = {}
            where: dict[str, dict[str, float]] = {}
            if perf:
                for arm, (url, headers) in targets.items():
                    calls[arm] = await syscalls(fronts[arm], url, headers, n)
                    keep = keep_dir / f"{kind}-{arm}.data" if keep_dir else None
                    where[arm] = await profile(fronts[arm], url, headers, n, keep)
            print(f"\n## {names[kind]}: {rounds} x {n} requests per arm at c=32; "
                  f"{machine_load()}")  # fmt: skip
            print("| arm | user µs/req | system µs/req | total | total / nginx | system calls "
                  "/ req | voluntary switches / req | engine µs/req | the calls |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|")
            base = (user["nginx"] + system["nginx"]) / max(count["nginx"], 1)
            for arm in targets:
                c = max(count[arm], 1)
                u, s = user[arm] / c * 1e6, system[arm] / c * 1e6
                total = (u + s) / 1e6
                per = calls.get(arm, {})
                top = sorted(per.items(), key=lambda kv: -kv[1])
                shown = ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.02)
                print(f"| {arm} | {u:.1f} | {s:.1f} | {u + s:.1f} | {total / base:.2f}x | "
                      f"{sum(per.values()):.2f} | {vol[arm] / c:.2f} | "
                      f"{engine_cpu[arm] / c * 1e6:.0f} | {shown} |")  # fmt: skip
            if where:
                print("\nCPU µs per request by binary (perf record shares x the total above):")
                print("| arm | " + " | ".join(_BINARIES) + " | other |")
                print("|---|" + "---|" * (len(_BINARIES) + 1))
                for arm in targets:
                    c = max(count[arm], 1)
                    total = (user[arm] + system[arm]) / c * 1e6
                    share = where.get(arm, {})
                    cells = [share.get(b, 0.0) * total for b in _BINARIES]
                    print(f"| {arm} | " + " | ".join(f"{x:.1f}" for x in cells)
                          + f" | {total - sum(cells):.1f} |")  # fmt: skip
            if callgrind:
                await callgrind_counts(stack, engine, proxy, targets, callgrind, baseline)
    finally:
        stack.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="live,catch-up")
    ap.add_argument("--baseline", type=Path, help="another checkout whose proxy runs beside")
    ap.add_argument("--keep", type=Path, help="keep the perf recordings in this directory")
    ap.add_argument("--callgrind", type=int, default=0, metavar="N",
                    help="then count user-space instructions per request over N requests "
                         "with each front under callgrind (slow: minutes)")  # fmt: skip
    a = ap.parse_args()
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(run(a.n, a.rounds, a.kinds.split(","), a.baseline, a.keep, a.callgrind)))
