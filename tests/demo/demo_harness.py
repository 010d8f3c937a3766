"""Start and stop the `make run` demo for tests: free ports, its own data dir, bounded waits.

`DemoRun` runs `make run` (the real entry point) in a checkout with every port chosen free
and `DEMO_DATA_DIR` in a temporary directory, waits for the banner (printed only once the
engine, proxy and demo server answer health), and stops it with `make stop`/`make clean`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BANNER = "shapegate demo is running"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is needed for the demo test: apt-get install -y chromium")
    return found


def node_deps() -> None:
    here = Path(__file__).resolve().parent
    if not (here / "node_modules" / "playwright-core").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=here, check=True)


@dataclass
class DemoRun:
    checkout: Path
    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    out_path: Path | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
        env.pop("DATABASE_URL", None)
        env.update({name: str(port) for name, port in self.ports.items()})
        env["DEMO_DATA_DIR"] = str(self.data_dir)
        env.update(self.extra_env)
        return env

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def __enter__(self) -> DemoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180) -> str:
        """`make run` in the background; returns its output up to and including the banner.

        Use the run as a context manager (`with DemoRun(...) as run: run.start()`), so that a
        start that fails half-way is stopped and cleaned up too.
        """
        if not self.ports:
            self.ports = {n: free_port() for n in ("ENGINE_PORT", "PROXY_PORT", "DEMO_PORT")}
            self.ports["PG_PORT"] = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = self.data_dir.parent / f"{self.data_dir.name}-make-run.out"
        out = open(self.out_path, "wb")
        # `make run` as from a terminal, where Ctrl-C is not ignored: a test process started in
        # the background by a non-interactive shell (`nohup pytest ... &`) ignores SIGINT, its
        # children inherit that, and bash can neither trap nor reset a signal ignored when it
        # started, so `make run`'s INT trap would never run (its engine, which sets its own
        # handler, still stops: "the engine exited").
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            self.proc = subprocess.Popen(
                ["make", "--no-print-directory", "run"],
                cwd=self.checkout, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            if ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            if BANNER in text and "Run it:" in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"make run exited ({self.proc.returncode}):\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no banner after {timeout} s:\n{text[-4000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        assert self.out_path is not None
        return self.out_path.read_text(errors="replace")

    def make(self, target: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", target], cwd=self.checkout, env=self.env(),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def stop(self, clean: bool = True) -> None:
        """`make stop` (or `make clean`), then make sure nothing of this run is left."""
        try:
            self.make("clean" if clean else "stop")
        finally:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
