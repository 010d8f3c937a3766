"""The engine as a real subprocess (its CLI), for tests that need a process to kill or proxy.

Shared by the convergence, proxy real-path and other end-to-end tests; `apply_messages`
materialises shape messages the way the npm client's `Shape` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port
from tests.support.waiting import wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]
#: How long `start` waits for `/v1/health` 200. It returns as soon as the engine is healthy;
#: the bound is for a CI machine at load 16, where a cold start has taken over 20 s.
START_TIMEOUT = 60.0


#: Run a command as root without the capabilities that bypass file permissions, so that a
#: file made unreadable (chmod 000) is unreadable to it, as to an engine that is not root.
NO_DAC_OVERRIDE = (
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
    "--",
)


class EngineProcess:
    """`python -m sync_engine` on a free port; `start()` returns once `/v1/health` is 200."""

    def __init__(
        self, db_url: str, data_dir: Path, *extra_args: str, wrapper: tuple[str, ...] = ()
    ) -> None:
        """`wrapper`: a command the engine runs under (`NO_DAC_OVERRIDE`, say)."""
        self.db_url = db_url
        self.wrapper = wrapper
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"engine-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def secret(self) -> str | None:
        """The `--secret` the engine was started with, if any (for `/metrics`)."""
        args = list(self.extra_args)
        return args[args.index("--secret") + 1] if "--secret" in args else None

    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy; its output goes to `log`."""
        args = [*self.wrapper, sys.executable, "-m", "sync_engine", "--database-url", self.db_url,
                "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn and wait for `/v1/health` 200 (`wait_healthy`)."""
        self.spawn()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for `/v1/health` 200. On failure (the engine exits, or is not healthy
        within `timeout`) the process is killed, never left behind, and the AssertionError
        shows what the engine printed."""
        try:
            wait_until(self._healthy, timeout=timeout, interval=0.1, message="/v1/health 200")
        except BaseException as exc:
            self.stop()
            if isinstance(exc, AssertionError):
                raise AssertionError(f"{exc}; the engine printed:\n{self.log_tail()}") from None
            raise

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"engine exited with status {self.proc.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/v1/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:  # not listening yet, or 202/503 (HTTPError is an OSError)
            return False

    def log_tail(self, chars: int = 3000) -> str:
        """The end of what the engine printed (stdout and stderr)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no output)"

    async def parked_requests(self) -> int:
        """The engine's `sync_engine_parked_requests` gauge (`/metrics`): live requests
        (long-polls, SSE streams) waiting for their shape to change."""
        return await parked_requests(self.url, self.secret)

    async def until_parked(self, count: int = 1, timeout: float = 30.0) -> int:
        """Wait until at least `count` live requests are parked in the engine (instead of
        sleeping a while and hoping); returns how many are."""
        return await until_parked(self.url, self.secret, count, timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)  # (a SIGKILLed process is reaped at once unless stuck in the kernel)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; the process is gone when this returns."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


async def parked_requests(url: str, secret: str | None = None) -> int:
    """`sync_engine_parked_requests` from the `/metrics` of the engine at `url`."""
    params = {} if secret is None else {"secret": secret}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/metrics", params=params) as resp,
    ):
        text = await resp.text()
        assert resp.status == 200, text
    for family in text_string_to_metric_families(text):
        if family.name == "sync_engine_parked_requests":
            return int(family.samples[0].value)
    raise AssertionError(f"no sync_engine_parked_requests in {url}/metrics")


async def until_parked(
    url: str, secret: str | None = None, count: int = 1, timeout: float = 30.0
) -> int:
    """Wait until at least `count` live requests are parked in the engine at `url`."""

    async def parked() -> int:
        n = await parked_requests(url, secret)
        return n if n >= count else 0

    return await wait_until_async(
        parked, timeout=timeout, interval=0.02, message=f"{count} parked in the engine"
    )


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
    returns the rows, the handle and the offset. `extra`: more query parameters (such as
    `&where=...`), sent with every request, as the client sends its shape's parameters."""
    rows: dict[str, dict[str, Any]] = {}
    path = f"/v1/shape?table=items&offset=-1{extra}"
    for _ in range(50):
        reply = await proxy.get(path, token=token)
        assert reply.status == 200, reply.body
        apply_messages(rows, reply.json())
        handle, offset = reply.headers["electric-handle"], reply.headers["electric-offset"]
        if "electric-up-to-date" in reply.headers:
            return rows, handle, offset
        path = f"/v1/shape?table=items&offset={offset}&handle={handle}{extra}"
    raise AssertionError("never up to date")
