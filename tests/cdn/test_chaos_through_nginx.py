"""The chaos run (tests/node/chaos.test.mjs) through the shipped nginx tier in front of the proxy.

    npm client -> nginx (config/nginx, real) -> proxy (config/examples/open.yaml) -> engine

The same clients, writers and faults as straight to the engine and through the proxy (the engine
and the proxy SIGKILLed and started again, Postgres restarted fast and immediate, sometimes a
TRUNCATE), with nginx caching what the headers allow in between. Caching must never freeze a
client on stale data or lose it rows: a 409 must get through, and what was cached for a handle
must not outlive its rotation in a way that loses rows. Every client must end with exactly its
shape's rows (`SELECT`), and must have taken every change its view was handed.

`CHAOS_SEED=<n>` repeats a run's choices; the seed is printed in the output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAOS = ROOT / "tests" / "node" / "chaos.test.mjs"


def test_chaos_through_nginx_in_front_of_the_proxy() -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "tests/node/node_modules/@electric-sql/client").is_dir():
        pytest.fail("needs node and `make node-deps` (cd tests/node && npm ci)")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    env = {**os.environ, "SHAPEGATE_NODE_VIA": "cdn", "PYTHON": sys.executable}
    proc = subprocess.run(
        [node, "--test", "--test-concurrency=1", str(CHAOS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert "# pass 1" in out and "cdn:" in out, out[-5000:]
