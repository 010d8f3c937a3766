"""A config file that is no regular file, or nested too deeply, is a config error: never a
hung proxy, never a traceback (config probe, two MEDIUMs).

- The config path replaced by a FIFO (`mkfifo`): `open()` with no writer blocks, so the
  proxy hung for good at start, and at a reload every request hung with it (the reload runs
  on the event loop). So did an issuer's `public_key_file` pointing at a FIFO. Now refused
  at once: "is not a regular file"; a reload keeps the last good config and says why.
- `[[[[...]]]]` 5,000 deep: a RecursionError out of PyYAML, a 3,000-line traceback at start;
  on a reload an error nobody saw (`/healthz` said `config_error: null`). Now a config error.

The proxy's own process for the start, a real proxy in front of a real engine for reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.proxy.real_proxies import ITEMS_SQL, items_config
from tests.support.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parents[2]
DEEP = "extra: " + "[" * 5000 + "]" * 5000 + "\n"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(*ITEMS_SQL)


def _start(config: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`shape-proxy --config config` as a process; it must exit at once (a bad config)."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(config), "--port", "1"],
        cwd=ROOT, env={**os.environ, **environ}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_a_fifo_or_a_deep_file_at_start_is_a_config_error(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    out = _start(fifo, environ)  # (it hung here: TimeoutExpired)
    assert out.returncode != 0 and "is not a regular file" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    deep = tmp_path / "deep.yaml"
    deep.write_text(yaml.safe_dump(items_config(engine, idp_server)) + DEEP)
    out = _start(deep, environ)
    assert out.returncode != 0 and "nested too deeply" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) < 10
    config = items_config(engine, idp_server)
    key = tmp_path / "key.pem"
    os.mkfifo(key)
    config["issuers"][0].pop("jwks_url")
    config["issuers"][0]["keys"] = [{"kid": "k", "public_key_file": str(key)}]
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text(yaml.safe_dump(config))
    out = _start(keyed, environ)
    assert out.returncode != 0 and "is not a regular file" in out.stderr, out.stderr


async def _reload_in_thread(proxy: Any) -> bool:
    """`reload()` off the loop, so a read blocked in `open()` fails this test instead of
    hanging it: past 20 s a watchdog thread (the loop may be blocked too: the config poll
    reads the file on it) opens a writer, a few times over (the old code read it twice, and
    the poll again), to let it go."""
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(20):
            return
        blocked.append(True)
        for _ in range(10):
            with contextlib.suppress(OSError):
                os.close(os.open(proxy.path, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.3)

    blocked: list[bool] = []
    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        result: bool = await asyncio.to_thread(proxy.app.holder.reload)
    finally:
        done.set()
    assert not blocked, "a read of the config blocked on the FIFO"
    return result


async def test_a_reload_of_a_fifo_or_a_deep_file_keeps_the_config_and_says_why(
    engine: EngineProcess,
    idp_server: Any,
    reloadable_proxy: Any,
) -> None:
    proxy = await reloadable_proxy(items_config(engine, idp_server))
    token = proxy.tokens.make()
    assert (await proxy.get("/v1/shape?table=items&offset=-1", token=token)).status == 200
    proxy.path.unlink()
    os.mkfifo(proxy.path)
    assert await _reload_in_thread(proxy) is False
    health = (await proxy.get("/healthz")).json()
    assert "is not a regular file" in health["config_error"], health
    assert (await proxy.get("/v1/shape?table=items&offset=-1", token=token)).status == 200
    proxy.path.unlink()
    proxy.path.write_text(yaml.safe_dump(proxy.config) + DEEP)
    assert await _reload_in_thread(proxy) is False
    health = (await proxy.get("/healthz")).json()
    assert "nested too deeply" in health["config_error"], health
    assert (await proxy.get("/v1/shape?table=items&offset=-1", token=token)).status == 200
