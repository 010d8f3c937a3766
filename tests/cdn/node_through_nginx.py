"""Run one of tests/node's files through the shipped nginx tier (`SHAPEGATE_NODE_VIA=cdn`:
npm client -> nginx (config/nginx, real) -> proxy (config/examples/open.yaml) -> engine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_through_nginx(test_file: Path, needs_package: str, timeout: float) -> None:
    """Passes when the node file's one test passed through nginx; fails with the end of
    its output otherwise."""
    node = shutil.which("node")
    if node is None or not (ROOT / "tests/node/node_modules" / needs_package).is_dir():
        pytest.fail("needs node and `make node-deps` (cd tests/node && npm ci)")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    env = {**os.environ, "SHAPEGATE_NODE_VIA": "cdn", "PYTHON": sys.executable}
    proc = subprocess.run(
        [node, "--test", "--test-concurrency=1", str(test_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert "# pass 1" in out and "cdn:" in out, out[-5000:]
