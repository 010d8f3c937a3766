"""Shared benchmark plumbing: a throwaway Postgres, engine / proxy / nginx processes, per-process
CPU and memory, shape-following clients, and the one-table report `run_all.py` prints.

Everything listens on 127.0.0.1 only. Processes are started by the scenario that needs them
and stopped by it (`Stack` closes what it opened, in reverse order).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENGINE_SECRET = "bench-engine-secret-0123456789abcdef"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
ISSUER = "https://bench.test/"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: Writers whose commit-to-client latency is measured say so on their session, as a production
#: database behaves: with synchronous_commit=off a commit returns before its WAL is flushed, and
#: logical decoding only sends flushed WAL, so a change would wait for the WAL writer
#: (wal_writer_delay, 200 ms). scripts/dev-postgres now keeps Postgres's default (on); this
#: keeps the measurement right against any cluster.
SYNC_COMMIT = "SET synchronous_commit = on"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the machine ----------------------------------------------------------------------------


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    nginx = "absent"
    if shutil.which("nginx"):
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        nginx = out.split("/", 1)[-1]
    pg = "?"
    if (PG_BIN / "postgres").exists():
        pg = subprocess.run([str(PG_BIN / "postgres"), "-V"], capture_output=True,
                            text=True).stdout.split()[2]  # fmt: skip
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem} RAM, Linux {platform.release()}; "
        f"{load()}; "
        f"Python {platform.python_version()}, aiohttp {_version('aiohttp')}, "
        f"uvloop {_version('uvloop')}, psycopg {_version('psycopg')}; PostgreSQL {pg} "
        f"(fsync=off); nginx {nginx}; no CPU pinning, load generator "
        "in the same machine (Python asyncio)"
    )


def load() -> str:
    """The machine's load now, and this process's scheduling weight: numbers measured on a
    shared machine are only comparable with the load they were measured under. With the
    kernel's autogroups, `nice` only orders processes of one session: another session's
    busy processes take an equal share of the cores whatever their nice value."""
    one, five, _ = os.getloadavg()
    text = f"load average {one:.1f} (5 min {five:.1f})"
    try:
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
            text += f", autogroup nice {Path('/proc/self/autogroup').read_text().split()[-1]}"
    except (OSError, IndexError):
        pass
    return text


def share_autogroup_nice(pid: int) -> None:
    """Give `pid`'s autogroup this process's autogroup nice (a Postgres cluster runs in a
    session of its own, so it would not share a benchmark's raised priority; root only)."""
    try:
        nice = Path("/proc/self/autogroup").read_text().split()[-1]
        if nice != "0":
            Path(f"/proc/{pid}/autogroup").write_text(nice)
    except (OSError, IndexError):
        pass


# --- per-process CPU and memory -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its reaped children (nginx workers: see tree)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def tree(pid: int) -> list[int]:
    out = [pid]
    for c in children(pid):
        out += tree(c)
    return out


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def rss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def pg_cpu(pg_dir: str) -> float:
    """CPU seconds of every Postgres backend of the cluster in `pg_dir` (postmaster tree)."""
    pid = int((Path(pg_dir) / "data" / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # exited backends
    return tree_cpu(pid) + reaped


# --- processes ------------------------------------------------------------------------------


_LEFTOVERS: list[str] = []


def remove_later(path: str | Path) -> None:
    """Delete a stopped process's directory when the benchmark process exits, not now.

    ext4 skips recently freed inodes when it allocates new ones: right after an engine's
    data directory (thousands of shape files) is removed, the next arm's file creation scans
    past them (perf: `recently_deleted`, `find_inode_bit` and inode-table reads were 45% of
    the engine's CPU in a shape storm that followed another arm's cleanup, 1.9 s -> 3.1 s).
    The harness must not slow the next measurement with its own housekeeping.
    """
    if not _LEFTOVERS:
        atexit.register(_remove_leftovers)
    _LEFTOVERS.append(str(path))


def _remove_leftovers() -> None:
    for path in _LEFTOVERS:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)
    _LEFTOVERS.clear()


def remove_leftovers_now() -> None:
    """Delete every stopped process's directory kept so far (`remove_later`), then flush.

    For a scenario whose arms must not depend on what ran before it (S3's tables): the
    earlier arms' files otherwise stay in the page cache, dirty or not, until the run
    ends, so a later arm starts with less free memory and others' writeback pending.
    Call it before setting up the next arm's data, never between two measured arms.
    """
    _remove_leftovers()
    os.sync()


def settle() -> float:
    """Flush every dirty page (`sync`) before an arm; returns the seconds it took.

    The engine runs with `--no-fsync` as Postgres runs with `fsync=off`, so files written
    by one arm (a cold sync's chunk files, a table's load) are written back by the kernel
    30 s later, in whatever arm runs then. Flushing between arms leaves that cost out of
    both sides instead of landing on whichever side follows.
    """
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


class Postgres:
    """A throwaway cluster from scripts/dev-postgres; `stat_statements` preloads the module."""

    def __init__(self, *, stat_statements: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="shapegate-bench-pg-")
        self.port = free_port()
        self.url = self._start()
        share_autogroup_nice(self.postmaster())
        if stat_statements:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            self._pg_ctl("restart")
            share_autogroup_nice(self.postmaster())
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _start(self) -> str:
        out = subprocess.run(
            [str(ROOT / "scripts" / "dev-postgres"), "start", self.dir, str(self.port)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return next(x.split("=", 1)[1] for x in out.splitlines() if x.startswith("DATABASE_URL="))

    def postmaster(self) -> int:
        return int((Path(self.dir) / "data" / "postmaster.pid").read_text().split()[0])

    def _pg_ctl(self, action: str) -> None:
        cmd = [str(PG_BIN / "pg_ctl"), "-D", f"{self.dir}/data", "-w", "-t", "60",
               "-l", f"{self.dir}/server.log", action]  # fmt: skip
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    def cpu(self) -> float:
        return pg_cpu(self.dir)

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "dev-postgres"), "stop", self.dir], check=False,
                       capture_output=True)  # fmt: skip
        remove_later(self.dir)


class Process:
    """A child process with a base URL; `stop()` terminates it (then kills)."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def rss(self) -> float:
        return rss_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def wait_http(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.url} exited:\n{self.tail()}")
                try:
                    async with s.get(self.url + path) as r:
                        await r.read()
                        if r.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.url}{path} did not come up:\n{self.tail()}")


class EngineProcess(Process):
    def __init__(self, db_url: str, *extra: str, secret: str | None = ENGINE_SECRET,
                 fsync: bool = False) -> None:  # fmt: skip
        self.port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="shapegate-bench-engine-")
        self.log = Path(self.data_dir + ".log")
        cmd = [
            sys.executable,
            "-m",
            "sync_engine",
            "--port",
            str(self.port),
            "--data-dir",
            self.data_dir,
            "--log-level",
            "WARNING",
        ]
        # The database URL (a dev-postgres one holds its password) and the secret reach the
        # engine through its environment, as in the container: not on a command line `ps` shows.
        env = {**os.environ, "SYNC_ENGINE_DATABASE_URL": db_url}
        env.pop("SYNC_ENGINE_SECRET", None)
        if secret:
            env["SYNC_ENGINE_SECRET"] = secret
        if not fsync:
            cmd.append("--no-fsync")
        self.secret = secret
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([*cmd, *extra], cwd=ROOT, stdout=out, stderr=out, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        await self.wait_http("/v1/health")

    def cpu_seconds(self) -> float:  # older scripts' name
        return self.cpu()

    def stop(self) -> None:
        super().stop()
        remove_later(self.data_dir)
        remove_later(self.log)  # (its log sat next to it, left in /tmp by every run)


#: Per-principal limits raised out of the way (a load generator is one principal).
#: Per-principal limits lifted: the load generator is one principal holding up to 20,000 live
#: requests (`max_held` counts held long-polls and SSE streams, joiners included).
UNLIMITED = {
    "max_concurrent": 1_000_000,
    "rate": 1e9,
    "burst": 1_000_000_000,
    "max_held": 1_000_000,
    "new_shape_rate": 1e9,
    "new_shape_burst": 1_000_000_000,
}


class ProxyProcess(Process):
    """`python -m proxy` in front of `upstream`, HS256 JWTs, `tables` as the policy."""

    def __init__(self, upstream: str, tables: dict[str, Any], *, collapse: bool,
                 cache_bytes: int, secret: str | None = ENGINE_SECRET,
                 extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        """`extra` is merged into the config's top-level sections (e.g. `limits`)."""
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="shapegate-bench-proxy-"))
        self.config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "upstream": {"url": upstream, "pool_size": 8192, "first_byte_timeout": 90,
                         **({"secret_env": "ENGINE_SECRET"} if secret else {})},
            "issuers": [{"issuer": ISSUER, "audience": "bench", "algorithms": ["HS256"],
                         "keys": [{"secret_env": "BENCH_JWT_SECRET"}]}],
            "tables": tables,
            "collapse": collapse,
            "cache": {"max_bytes": cache_bytes},
            "metrics": {"allow_loopback": True},  # (scenarios read the proxy's /metrics)
            # Scenarios drive many clients from one token: per-principal limits out of the
            # way unless a scenario sets them (S7 measures them).
            "limits": dict(UNLIMITED),
        }  # fmt: skip
        for section, values in (extra or {}).items():
            current = self.config.get(section)
            self.config[section] = ({**current, **values} if isinstance(current, dict)
                                    else values)  # fmt: skip
        path = self.dir / "proxy.yaml"
        path.write_text(json.dumps(self.config))  # JSON is YAML
        self.env = {"ENGINE_SECRET": secret or "", "BENCH_JWT_SECRET": JWT_SECRET}
        self.log = self.dir / "proxy.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "--config", str(path), "--log-level", "WARNING"],
                env={**os.environ, **self.env}, cwd=ROOT, stdout=out, stderr=out,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        await self.wait_http("/healthz")

    async def upstream_requests(self) -> float:
        """The proxy's count of requests it sent to the engine."""
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("shape_proxy_upstream_requests_total "):
                return float(line.split()[1])
        return 0.0

    def direct_url(self, engine: str, claims: dict[str, Any], pairs: list[tuple[str, str]]) -> str:
        """The engine URL this proxy builds for `pairs` from a user with `claims`."""
        return self.build_direct_url(self.config["tables"], engine, claims, pairs,
                                     secret=self.env["ENGINE_SECRET"] or None)  # fmt: skip

    @staticmethod
    def build_direct_url(tables: dict[str, Any], engine: str, claims: dict[str, Any],
                         pairs: list[tuple[str, str]],
                         secret: str | None = ENGINE_SECRET) -> str:  # fmt: skip
        """The engine URL a proxy with policy `tables` builds (no proxy process needed)."""
        from proxy.config.loader import build_config
        from proxy.http.params import parse_shape_query
        from proxy.policy.evaluate import evaluate
        from proxy.upstream.url import build_upstream_url

        config = {
            "upstream": {"url": engine, **({"secret_env": "ENGINE_SECRET"} if secret else {})},
            "issuers": [{"issuer": ISSUER, "audience": "bench", "algorithms": ["HS256"],
                         "keys": [{"secret_env": "BENCH_JWT_SECRET"}]}],
            "tables": tables,
        }  # fmt: skip
        env = {"ENGINE_SECRET": secret or "", "BENCH_JWT_SECRET": JWT_SECRET}
        decision = evaluate(build_config(config, env).policy, claims, parse_shape_query(pairs))
        return str(build_upstream_url(engine, decision, source_id=None, secret=secret))

    def stop(self) -> None:
        super().stop()
        remove_later(self.dir)


class NginxProcess(Process):
    """The shipped config/nginx tier in front of `engine_port`; `cache=False` forwards only."""

    def __init__(self, engine_port: int, *, cache: bool = True, access_log: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="shapegate-bench-nginx-"))
        sys.path.insert(0, str(ROOT / "config" / "nginx"))
        from render import render

        conf = render(self.dir, f"127.0.0.1:{self.port}", f"127.0.0.1:{engine_port}")
        site = self.dir / "shapegate.conf"
        text = site.read_text()
        if not access_log:  # the benchmark reads no access log; writing it costs nginx CPU
            text = text.replace("access_log /dev/stdout shapegate;", "access_log off;")
        if not cache:
            text = text.replace("proxy_cache shapegate;", "proxy_cache off;")
        site.write_text(text)
        self.log = self.dir / "nginx.out"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        err = str(self.dir / "error.log")
        subprocess.run([nginx, "-t", "-q", "-c", str(conf), "-e", err], check=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([nginx, "-c", str(conf), "-e", err],
                                         stdout=out, stderr=out)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        await self.wait_http("/v1/health")

    def stop(self) -> None:
        super().stop()
        remove_later(self.dir)


@dataclass
class Stack:
    """Processes opened by a scenario, closed in reverse order."""

    items: list[Any] = field(default_factory=list)

    def add(self, item: Any) -> Any:
        self.items.append(item)
        return item

    def close(self) -> None:
        for item in reversed(self.items):
            try:
                item.stop()
            except Exception as exc:  # keep closing the rest
                print(f"  (could not stop {item!r}: {exc})", file=sys.stderr)
        self.items.clear()


def token(**claims: Any) -> str:
    import jwt

    now = int(time.time())
    body = {"iss": ISSUER, "aud": "bench", "sub": "u1", "iat": now, "exp": now + 7200, **claims}
    return str(jwt.encode(body, JWT_SECRET, algorithm="HS256"))


# --- clients --------------------------------------------------------------------------------


async def follow(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
                 *, retry_503: bool = True) -> tuple[int, int, str, str, int]:  # fmt: skip
    """GET `url` (an `offset=-1` URL) and follow chunks to up-to-date.

    Returns (bytes, requests, handle, offset, 503s). 503s are retried after Retry-After, as
    Electric's client does.
    """
    total = requests = unavailable = 0
    query = "offset=-1"
    base = url.replace("offset=-1", "").rstrip("&")
    while True:
        async with session.get(f"{base}&{query}", headers=headers) as r:
            body = await r.read()
            requests += 1
            if r.status == 503 and retry_503:
                unavailable += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            if r.status != 200:
                raise RuntimeError(f"{r.status} from {base[:80]}: {body[:300]!r}")
            total += len(body)
            handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
            query = f"offset={offset}&handle={handle}"
            if "electric-up-to-date" in r.headers:
                return total, requests, handle, offset, unavailable


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive GET client on asyncio streams.

    Thousands of long-polling clients in one Python process: aiohttp's client costs several
    times more CPU per request than this, and that CPU is taken from the 2 cores the system
    under test runs on. Handles Content-Length and chunked bodies; reconnects when needed.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, path_qs: str, headers: dict[str, str] | None = None
                      ) -> tuple[int, dict[str, str], asyncio.StreamReader]:  # fmt: skip
        """Send a GET; returns status, lower-cased headers, and the reader at the body."""
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(f"GET {path_qs} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        return status, hdrs, self.reader

    async def chunks(self, hdrs: dict[str, str]) -> Any:
        """Yield the body's pieces as they arrive."""
        assert self.reader is not None
        if hdrs.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in hdrs:
            n = int(hdrs["content-length"])
            if n:
                yield await self.reader.readexactly(n)
        else:
            yield await self.reader.read()
            self.close()
            return
        if hdrs.get("connection", "").lower() == "close":
            self.close()

    async def get(self, path_qs: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        try:
            status, hdrs, _ = await self.request(path_qs, headers)
            body = b"".join([c async for c in self.chunks(hdrs)])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.close()
            raise
        return status, hdrs, body


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


# --- the report -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a scenario, the arms measured side by side, their ratio."""

    scenario: str
    metric: str
    arms: list[tuple[str, str]]
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "ok", "MISS", or "" when there is no target


def fmt(x: float, unit: str = "") -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + (f" {unit}" if unit else "")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def table(rows: Iterable[Row]) -> str:
    """A Markdown table (readable as plain text too)."""
    head = ["scenario", "metric", "arms (same run)", "ratio", "target", ""]
    lines = [head]
    for r in rows:
        arms = " · ".join(f"{name} {value}" for name, value in r.arms)
        lines.append([r.scenario, r.metric, arms, r.ratio, r.target, r.verdict])
    out = []
    for i, cells in enumerate(lines):
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        if i == 0:
            out.append("|" + "|".join("---" for _ in cells) + "|")
    return "\n".join(out)
