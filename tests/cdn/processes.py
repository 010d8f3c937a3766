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

import aiohttp
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


async def assert_subsets_wait(session: aiohttp.ClientSession, base: str) -> str:
    """On a tier whose general read timeout (1 s) is shorter than its upstream stand-in's
    delay: a catch-up of `base` (a shape URL with its table) is the tier's 504, a subset (a
    GET with `subset__*`, a POST) the stand-in's 200 (its JSON echoes the method and body).
    Returns the subset GET's URL."""
    async with session.get(f"{base}&offset=-1") as r:
        assert r.status == 504, await r.read()  # (the shortened timeout holds)
    subset = f"{base}&offset=0_0&handle=1-2&subset__where=id%3E1&subset__limit=2"
    async with session.get(subset) as r:
        # on the tier before subsets had their own location: 504 upstream_timeout
        assert r.status == 200, await r.read()
        assert (await r.json())["asked"] == "GET"
    body = b'{"where":"id > 1"}'
    async with session.post(f"{base}&offset=0_0&handle=1-2", data=body) as r:
        assert r.status == 200, await r.read()
        answer = await r.json()
        assert answer["asked"] == "POST" and answer["body"] == body.decode()
    return subset
