"""The engine as a real subprocess (its CLI), for tests that need a process to kill or proxy.

Shared by the convergence, proxy real-path and other end-to-end tests; `apply_messages`
materialises shape messages the way the npm client's `Shape` does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProcess:
    """`python -m sync_engine` on a free port; `start()` returns once `/v1/health` is 200."""

    def __init__(self, db_url: str, data_dir: Path, *extra_args: str) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"engine-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        args = [sys.executable, "-m", "sync_engine", "--database-url", self.db_url,
                "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("engine exited:\n" + self.log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/v1/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("engine did not become healthy:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def apply_messages(rows: dict[str, dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    """Apply inserts, updates and deletes to `rows` (key -> value), as `Shape` does."""
    for m in messages:
        if "key" not in m:
            continue
        op = m["headers"]["operation"]
        if op == "insert":
            rows[m["key"]] = dict(m["value"])
        elif op == "update":
            rows[m["key"]].update(m["value"])
        elif op == "delete":
            rows.pop(m["key"], None)


async def sync_through(
    proxy: Any, token: str, extra: str = ""
) -> tuple[dict[str, dict[str, Any]], str, str]:
    """Follow the `items` shape through `proxy` as ShapeStream does, from -1 to up-to-date;
    returns the rows, the handle and the offset. `extra`: more query parameters."""
    rows: dict[str, dict[str, Any]] = {}
    path = f"/v1/shape?table=items&offset=-1{extra}"
    for _ in range(50):
        reply = await proxy.get(path, token=token)
        assert reply.status == 200, reply.body
        apply_messages(rows, reply.json())
        handle, offset = reply.headers["electric-handle"], reply.headers["electric-offset"]
        if "electric-up-to-date" in reply.headers:
            return rows, handle, offset
        path = f"/v1/shape?table=items&offset={offset}&handle={handle}"
    raise AssertionError("never up to date")
