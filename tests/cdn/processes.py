"""Subprocesses the tests start and stop: nginx, the proxy's CLI."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Seconds a process is given to end once terminated (then killed), and then once killed.
STOP_WAIT = 10


@contextlib.contextmanager
def running(command: list[str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`command` started (`subprocess.Popen(command, **popen)`) for the block, then stopped:
    terminated, and killed if it has not ended `STOP_WAIT` seconds later."""
    process: subprocess.Popen[bytes] = subprocess.Popen(command, **popen)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_WAIT)


def status_of(url: str, *, timeout: float = 30) -> int:
    """The HTTP status of a GET of `url` (its body read), asked again while nothing listens
    there yet (a server just started), for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # (not listening yet)


def nginx_binary() -> str:
    """The installed nginx (the test fails, saying how to install it, if there is none)."""
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    return path
