"""`shape-proxy explain --token -` reads the user's token from standard input (attack 21:50).

`--token TOKEN` puts a user's bearer token in the command line, which every user of the host
reads in `ps` (/proc/<pid>/cmdline) while it runs, and in the shell history. With `-` the
token comes from standard input: `shape-proxy token ... | shape-proxy explain --token - URL`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECRET = "demo-secret-for-stdin-tests-" + "q" * 20


def _shape_proxy(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPE_PROXY_")}
    env["DEMO_JWT_SECRET"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=ROOT, env=env, input=stdin,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_explain_reads_the_token_from_stdin() -> None:
    minted = _shape_proxy("token", "--sub", "bob", "--config", "config/demo.yaml")
    assert minted.returncode == 0, minted.stderr
    out = _shape_proxy(
        "explain", "--config", "config/demo.yaml", "--token", "-",
        "/v1/shape?table=todos&offset=-1", stdin=minted.stdout,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["allowed"] and report["params"] == ["bob"]


def test_explain_with_nothing_on_stdin_says_so() -> None:
    out = _shape_proxy(
        "explain", "--config", "config/demo.yaml", "--token", "-",
        "/v1/shape?table=todos&offset=-1", stdin="",
    )  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no token on standard input" in out.stderr, out.stderr
