"""The engine refuses to serve a database without a secret on an address other hosts can
reach, unless `--insecure`: an operator who forgot `--secret` and bound 0.0.0.0 (so that a
proxy on another host could reach it) served every row to anyone, past the proxy, without a
word. Electric refuses to start without ELECTRIC_SECRET unless ELECTRIC_INSECURE=true."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support.engine_process import ROOT, EngineProcess


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SYNC_ENGINE_") and k not in ("DATABASE_URL", "PGPASSWORD")
    }


def test_no_secret_on_every_address_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sync_engine", "--database-url", "postgresql://x/y",
         "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out  # (a flag error, as the others)
    assert "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    for word in ("0.0.0.0", "without a secret", "--secret", "--insecure"):
        assert word in line, (word, line)


def test_insecure_serves_and_says_so(db_url: str, tmp_path: Path) -> None:
    engine = EngineProcess(db_url, tmp_path / "data", "--host", "0.0.0.0", "--insecure")
    try:
        engine.start()
        url = f"{engine.url}/v1/shape?table=pg_class_missing&offset=-1"
        try:
            urllib.request.urlopen(url, timeout=10)
        except urllib.error.HTTPError as e:  # (no secret asked: the table's 400)
            assert e.code == 400, e
        assert "without a secret (--insecure)" in engine.log_tail(20_000)
    finally:
        engine.stop()


def test_a_secret_on_every_address_starts_quietly(db_url: str, tmp_path: Path) -> None:
    engine = EngineProcess(db_url, tmp_path / "data", "--host", "0.0.0.0", "--secret", "s3")
    try:
        engine.start()
        assert "without a secret" not in engine.log_tail(20_000)
    finally:
        engine.stop()


def test_no_secret_on_loopback_starts_and_says_so(db_url: str, tmp_path: Path) -> None:
    """Loopback needs no secret (make run, the container, tests), but every local user
    reaches 127.0.0.1: the start says so in a line of its own."""
    engine = EngineProcess(db_url, tmp_path / "data")
    try:
        engine.start()
        log = engine.log_tail(20_000)
        assert "without a secret: every local user" in log, log
    finally:
        engine.stop()
