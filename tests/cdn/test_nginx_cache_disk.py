"""The nginx tier (config/nginx) with a cache disk that fails: no log line carries the engine
secret, the client never gets a cut answer as a whole one, and the operator still sees it.

    test client -> nginx (config/nginx, real) -> counting pass-through -> engine (real)

Every nginx error-log line about a request quotes the request line and the upstream URL,
and the proxy puts the engine `secret` in both. The tier logged at `crit`, and a cache write
that fails (full disk, a read-only or lost volume) is logged at `crit`: 2 lines with the
secret per request. Found by attack (20:12, a 200 KiB tmpfs as the tier's directory).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.cdn.test_nginx import SECRET, Stack, _read, _stack


@pytest.fixture
async def stack(db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with _stack(db_url, tmp_path, {}) as s:
        s.sql("INSERT INTO items SELECT g, repeat('x', 500) || g FROM generate_series(6, 3000) g")
        yield s


async def _fetch(s: aiohttp.ClientSession, url: str) -> tuple[int, bytes] | str:
    """(status, body), or the error that ended the answer before it was whole."""
    try:
        async with s.get(url) as r:
            return r.status, await r.read()
    except aiohttp.ClientError as e:
        return repr(e)


async def _fails_then_recovers(
    stack: Stack, failing: object, heal: object, *, keeps_stored: bool
) -> None:
    assert stack.nginx_dir is not None
    cache = stack.nginx_dir / "cache"
    direct = stack.counter.engine  # the engine itself, not through nginx
    # force_close: aiohttp retries a request once on a reused connection it finds closed.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        status, stored = await _fetch_ok(s, stack.url(offset="-1", columns="id,title"))
        assert status == 200 and len(stored) > 300_000  # an answer nginx cannot hold in RAM
        assert callable(failing) and callable(heal)
        failing(cache)
        try:
            if keeps_stored:  # what was stored before is still served
                assert await _fetch(s, stack.url(offset="-1", columns="id,title")) == (200, stored)
            # An answer nginx must store fails: the client sees it cut or refused, never as a
            # whole answer (no 200 with a body the engine did not send whole).
            for _ in range(3):
                got = await _fetch(s, stack.url(offset="-1", columns="title,id"))
                assert isinstance(got, str) or got[0] >= 500, got[:1]
        finally:
            heal(cache)
        # Space back: the same URL is answered whole, and stored.
        url = stack.url(offset="-1", columns="title,id")
        assert await _fetch_ok(s, url) == await _fetch_ok(s, url.replace(stack.nginx, direct))
    log = _read(stack.nginx_log)
    assert SECRET not in log, "an nginx log line carries the engine secret"
    # The operator still sees every failed answer in the access log.
    failed = re.findall(r'"GET /v1/shape" 200 \d+ done= cache=MISS upstream=200', log)
    assert len(failed) >= 3, log[-2000:]


async def _fetch_ok(s: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    got = await _fetch(s, url)
    assert not isinstance(got, str), got
    return got


def _read_only(cache: Path) -> None:
    for d, _, _ in os.walk(cache):
        os.chmod(d, 0o555)  # root's nginx workers run unprivileged: they cannot write either


def _writable(cache: Path) -> None:
    for d, _, _ in os.walk(cache):
        os.chmod(d, 0o700)


async def test_a_cache_write_that_fails_never_logs_the_secret(stack: Stack) -> None:
    """The cache directory cannot be written (as a full disk, without needing root)."""
    await _fails_then_recovers(stack, _read_only, _writable, keeps_stored=True)


def _full_tmpfs(cache: Path) -> None:
    owner = cache.stat()  # (render.py's: nginx's workers' account)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o",
         f"size=200k,mode=0700,uid={owner.st_uid},gid={owner.st_gid}", "tmpfs", str(cache)],
        check=True, capture_output=True,
    )  # fmt: skip


def _unmount(cache: Path) -> None:
    subprocess.run(["umount", "-l", str(cache)], check=True, capture_output=True)


async def test_a_full_cache_disk_never_logs_the_secret(stack: Stack) -> None:
    """The real thing: a 200 KiB tmpfs over the cache directory. nginx writes part of a
    370 KB answer (`pwritev() has written only ...`), and cuts it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    probe = Path(stack.nginx_dir or "/nonexistent") / "probe"
    probe.mkdir()
    try:
        _full_tmpfs(probe)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    _unmount(probe)
    # (The stored entry is hidden under the mount: nginx fetches it again, and fails too.)
    await _fails_then_recovers(stack, _full_tmpfs, _unmount, keeps_stored=False)
