"""Real clients through the shipped layout under rotations, an engine crash and a deleted shape.

    npm client -> proxy (config/examples/open.yaml) -> nginx (config/nginx, real) -> engine

tests/cdn/tier_convergence.test.mjs: two writers; a TRUNCATE, an ALTER TABLE ADD COLUMN, the
engine SIGKILLed and started again, the shape DELETEd on the engine, in a seeded order; a new
client after each. nginx keeps what the engine's headers allow (`offset=-1` for an hour), so a
new client's first answer may name a handle that was rotated away: the client must either see
it as stale (a handle it knows expired: it retries with a cache buster) or follow it to the
engine's 409 and refetch. Every client ends with exactly Postgres's rows, and none is handed a
change its view cannot take (applied twice, or of a row it never got).

`TIER_SEED=<n>` repeats a run (printed); `TIER_FAULTS=truncate,engine-kill,...` and
`TIER_ROUNDS=3` make longer runs; `TIER_DUMP=<file>` writes every client's requests and the logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST = Path(__file__).with_name("tier_convergence.test.mjs")


def test_clients_through_proxy_nginx_engine_converge_after_rotations_and_a_crash() -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "tests/node/node_modules/@electric-sql/client").is_dir():
        pytest.fail("needs node and `make node-deps` (cd tests/node && npm ci)")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("SHAPEGATE_NODE_VIA", None)  # the test builds its own layout
    proc = subprocess.run(
        [node, "--test", "--test-concurrency=1", str(TEST)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert "# pass 1" in out, out[-5000:]
