"""An engine with registered sources, served in-process, and its admin API."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiohttp.test_utils import TestClient, TestServer

from sync_engine.admin import build_admin_app
from sync_engine.app import MANAGER, build_app
from sync_engine.settings import Settings
from sync_engine.tenants.manager import SourceManager
from tests.support.engine_process import apply_messages
from tests.support.ports import free_port
from tests.support.waiting import WaitTimeout, wait_until, wait_until_async

PGBIN = next(
    (d for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
     if (d / "initdb").exists()),
    None,
)  # fmt: skip


_template: Path | None = None
_template_lock = threading.Lock()


def _initialized() -> Path:
    """A data directory fresh from `initdb`, made once per test process and copied for each
    cluster: a copy takes a fraction of initdb's 1.5-3 s, which every fault test paid (the
    clusters are the same files: nothing in them names the copy)."""
    global _template
    with _template_lock:
        if _template is None:
            assert PGBIN is not None
            top = Path(tempfile.mkdtemp(prefix="shapegate-pg-template-"))
            atexit.register(shutil.rmtree, top, True)
            if os.getuid() == 0:
                shutil.chown(top, "postgres", "postgres")
            cmd: tuple[str, ...] = (
                str(PGBIN / "initdb"), "-D", str(top / "data"), "-U", "postgres", "-A",
                "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
            if os.getuid() == 0:
                cmd = ("runuser", "-u", "postgres", "--", *cmd)
            subprocess.run(cmd, check=True, capture_output=True)
            _template = top / "data"
        return _template


class Cluster:
    """A private Postgres cluster whose settings a test may change and restart."""

    def __init__(self, wal_level: str) -> None:
        if PGBIN is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.dir = Path(tempfile.mkdtemp(prefix="shapegate-src-pg-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        root = os.getuid() == 0
        if root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        self._run("cp", "-a", str(_initialized()), str(self.dir / "data"))
        with open(self.dir / "data" / "postgresql.conf", "a") as f:
            f.write(f"\nwal_level = {wal_level}\nfsync = off\nmax_replication_slots = 10\n")

    def _run(self, *cmd: str) -> None:
        if os.getuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        subprocess.run(cmd, check=True, capture_output=True)

    def start(self) -> None:
        assert PGBIN is not None  # (__init__ raised if it were)
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                  str(self.dir / "server.log"), "-w", "-t", "30", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1"
                  f" -c unix_socket_directories={self.dir}", "start")  # fmt: skip

    def restart(self) -> None:
        assert PGBIN is not None  # (__init__ raised if it were)
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                  str(self.dir / "server.log"), "-m", "fast", "-w", "-t", "30",
                  "restart")  # fmt: skip

    def stop_server(self) -> None:
        """Stop Postgres at once (as a crash would), keeping the cluster to start again."""
        assert PGBIN is not None  # (__init__ raised if it were)
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                  "-w", "stop")  # fmt: skip

    def stop(self) -> None:
        assert PGBIN is not None  # (__init__ raised if it were)
        try:
            self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                      "-w", "stop")  # fmt: skip
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def sql(self, query: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query)


TOKEN = "test-admin-token-0123456789"
SETTINGS = Settings(long_poll_timeout=2.0, sse_timeout=4.0, sse_keepalive=1.0, fsync=False,
                    out_of_bounds_wait=1.0, schema_check_interval=0.5,
                    admin_token=TOKEN)  # fmt: skip


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


#: What any request with wrong or missing credentials gets, whatever is wrong.
UNAUTHORIZED = {"message": "Unauthorized - Invalid API secret"}


def make_items(url: str, names: list[str]) -> None:
    """An `items` table in the database at `url`, one row per name (ids from 1)."""
    sql(url, "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    for i, n in enumerate(names, 1):
        sql(url, "INSERT INTO items VALUES (%s, %s)", (i, n))


class MultiEngine:
    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.data_dir = data_dir
        self.settings = replace(SETTINGS, data_dir=data_dir, **overrides)
        self.client: TestClient[Any, Any] | None = None
        self.admin: TestClient[Any, Any] | None = None

    async def start(self) -> MultiEngine:
        app = build_app(self.settings)
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        self.admin = TestClient(TestServer(build_admin_app(self.settings, app[MANAGER])))
        await self.admin.start_server()
        return self

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
        if self.client is not None:
            await self.client.close()
            self.client = None

    @property
    def manager(self) -> SourceManager:
        assert self.client is not None
        return self.client.app[MANAGER]

    # -- admin API ------------------------------------------------------------------------

    async def api(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                  token: str | None = TOKEN) -> tuple[int, Any]:  # fmt: skip
        assert self.admin is not None
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if data is not None:
            headers["content-type"] = "application/json"
        resp = await self.admin.request(method, path, data=data, headers=headers)
        text = await resp.read()
        return resp.status, (orjson.loads(text) if text else None)

    async def add(self, name: str, url: str, **extra: Any) -> dict[str, Any]:
        status, body = await self.api("POST", "/api/sources",
                                      {"name": name, "database_url": url, **extra})  # fmt: skip
        assert status == 201, body
        return body

    def parked(self, source_id: str) -> int:
        """Requests of a source waiting for one of its shapes to change."""
        return self.manager.running[source_id].parked_requests

    async def until_parked(self, source_id: str, count: int = 1) -> None:
        """Wait until at least `count` requests of the source are parked."""
        await wait_until_async(lambda: self.parked(source_id) >= count, message="parked")

    async def wait_state(self, source_id: str, state: str, timeout: float = 30,
                         code: str | None = None) -> dict[str, Any]:  # fmt: skip
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            status, body = await self.api("GET", f"/api/sources/{source_id}")
            assert status == 200, body
            if body["state"] == state and (code is None or body["error_code"] == code):
                return body
            await asyncio.sleep(0.2)
        raise AssertionError(f"source never became {state} ({code}): {body}")

    # -- /v1/shape ------------------------------------------------------------------------

    async def get(self, source_id: str | None, secret: str | None,
                  **params: Any) -> tuple[int, dict[str, str], Any]:  # fmt: skip
        assert self.client is not None
        q = {k: str(v) for k, v in params.items()}
        if source_id is not None:
            q["source_id"] = source_id
        if secret is not None:
            q["secret"] = secret
        resp = await self.client.get("/v1/shape", params=q)
        raw = await resp.read()
        body = orjson.loads(raw) if raw else None
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body

    async def sync(self, source_id: str | None, secret: str,
                   **params: Any) -> tuple[dict[str, dict[str, Any]], str, str]:  # fmt: skip
        rows: dict[str, dict[str, Any]] = {}
        status, h, body = await self.get(source_id, secret, offset="-1", **params)
        assert status == 200, body
        handle, offset = h["electric-handle"], h["electric-offset"]
        apply(rows, body)
        for _ in range(1000):
            status, h, body = await self.get(source_id, secret, offset=offset, handle=handle,
                                             **params)  # fmt: skip
            assert status == 200, body
            apply(rows, body)
            offset = h["electric-offset"]
            if "electric-up-to-date" in h:
                return rows, handle, offset
        raise AssertionError("never up to date")

    async def follow(self, source_id: str, secret: str, handle: str, offset: str,
                     rows: dict[str, dict[str, Any]], **params: Any) -> str:  # fmt: skip
        """One live request from (handle, offset); applies what comes; returns the new offset."""
        status, h, body = await self.get(source_id, secret, offset=offset, handle=handle,
                                         live="true", **params)  # fmt: skip
        assert status == 200, body
        apply(rows, body)
        return h["electric-offset"]


apply = apply_messages


ROOT = Path(__file__).resolve().parents[3]
PROCESS_TOKEN = "process-test-admin-token-0123456789"


class AdminEngine:
    """`python -m sync_engine` as a process, with an admin listener and no single database."""

    def __init__(self, data_dir: Path, log: Path, *args: str,
                 env: dict[str, str] | None = None, nofile: int | None = None) -> None:  # fmt: skip
        """`nofile`: the process's descriptor limit (soft and hard), for a low connection cap."""
        self.port, self.admin_port = free_port(), free_port()

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        full = {**os.environ, "SYNC_ENGINE_ADMIN_TOKEN": PROCESS_TOKEN, **(env or {})}
        full.pop("DATABASE_URL", None)
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sync_engine", "--port", str(self.port), "--admin-port",
                 str(self.admin_port), "--data-dir", str(data_dir), "--no-fsync", *args],
                cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit,
            )  # fmt: skip
        try:
            wait_until(self._up, timeout=60, interval=0.1, message="the admin API")
        except WaitTimeout as exc:
            self.stop()
            raise AssertionError(f"{exc}:\n{log.read_text()}") from None

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/", timeout=2).close()
            return True
        except OSError:
            return False

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={
                "authorization": f"Bearer {PROCESS_TOKEN}",
                "content-type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def shape_status(self, source_id: str, secret: str) -> int:
        q = f"table=items&offset=-1&source_id={source_id}&secret={secret}"
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/v1/shape?{q}", timeout=30
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
