"""A live client's refresh through the shipped nginx tier is answered by the engine, not the cache.

    pglite-sync (npm) -> nginx (config/nginx, real) -> proxy (config/examples/open.yaml) -> engine

tests/node/multi-shape-refresh.test.mjs: pglite-sync's multi-table sync applies a change of one
table once the other table's shape, refreshed by MultiShapeStream, names an up-to-date LSN past
it. nginx served that refresh (a non-live request with `cursor`, the same URL every time until
the idle shape's long-poll ends) from its cache with the first refresh's old LSN, so every change
after the first waited for the idle table's long-poll to end. The node test runs straight to the
engine and through the proxy in `make test`; here through nginx.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST = ROOT / "tests" / "node" / "multi-shape-refresh.test.mjs"


def test_a_live_clients_refresh_is_not_answered_from_the_cache() -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "tests/node/node_modules/@electric-sql/pglite-sync").is_dir():
        pytest.fail("needs node and `make node-deps` (cd tests/node && npm ci)")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    env = {**os.environ, "SHAPEGATE_NODE_VIA": "cdn", "PYTHON": sys.executable}
    proc = subprocess.run(
        [node, "--test", "--test-concurrency=1", str(TEST)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert "# pass 1" in out and "cdn:" in out, out[-5000:]
