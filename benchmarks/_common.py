"""Shared benchmark plumbing: a throwaway Postgres, an engine process, machine description."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"
    )


class Postgres:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="shapegate-bench-pg-")
        self.port = free_port()
        out = subprocess.run(
            [str(ROOT / "scripts" / "dev-postgres"), "start", self.dir, str(self.port)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.url = next(
            x.split("=", 1)[1] for x in out.splitlines() if x.startswith("DATABASE_URL=")
        )

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "dev-postgres"), "stop", self.dir], check=False)


class EngineProcess:
    def __init__(self, db_url: str, *extra: str) -> None:
        self.port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="shapegate-bench-engine-")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sync_engine",
                "--database-url",
                db_url,
                "--port",
                str(self.port),
                "--data-dir",
                self.data_dir,
                "--log-level",
                "WARNING",
                *extra,
            ],
            cwd=ROOT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(self.url + "/v1/health") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("engine did not start")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
