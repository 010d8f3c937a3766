"""The admin dashboard in headless Chromium (Debian's, driven by playwright-core).

A real engine process (`python -m sync_engine` with --admin-token) and a real database:
the browser visits every page state (sign-in and its error, the empty list, the form and its
error, a source right after create, reloaded, after a rotate, in the error state, an unknown
source, the list, signed out), fails on a stray "null", a console error or a `hidden`
element that shows, and saves a screenshot of each state to test-artifacts/dashboard-*.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.ports import free_port
from tests.support.waiting import WaitTimeout, wait_until

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "browser-test-admin-token-0123456789"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.getuid() == 0 and shutil.which("apt-get"):
        # like scripts/dev-postgres: install the Debian package when missing
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False,
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        found = shutil.which("chromium")
    if found is None:
        pytest.fail("Chromium is needed for the dashboard test: apt-get install -y chromium")
    return found


def _node_deps() -> None:
    if not (HERE / "node_modules" / "playwright-core").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=HERE, check=True)


def _get(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def engine_process(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(engine URL, admin URL) of a real engine process with an empty source registry."""
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "SYNC_ENGINE_ADMIN_TOKEN": TOKEN}
    env.pop("DATABASE_URL", None)
    env.pop("SYNC_ENGINE_DATABASE_URL", None)
    log = open(tmp_path / "engine.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_engine", "--port", str(port), "--admin-port",
         str(admin_port), "--data-dir", str(tmp_path / "data"), "--no-fsync"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    admin = f"http://127.0.0.1:{admin_port}"

    def admin_up() -> bool:
        try:
            _get(admin + "/api/info", TOKEN)
            return True
        except OSError:
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()
            return False

    try:
        try:
            wait_until(admin_up, timeout=60, interval=0.1, message="the admin API")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}:\n{(tmp_path / 'engine.log').read_text()}") from None
        yield f"http://127.0.0.1:{port}", admin
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_dashboard_creates_a_source_that_becomes_active(
    engine_process: tuple[str, str], db_url: str
) -> None:
    chromium = _chromium()
    _node_deps()
    engine_url, admin_url = engine_process
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'from the browser test')")
    ARTIFACTS.mkdir(exist_ok=True)
    out = subprocess.run(
        ["node", str(HERE / "dashboard.mjs")],
        env={**os.environ, "ADMIN_URL": admin_url, "ADMIN_TOKEN": TOKEN,
             "DATABASE_URL": db_url, "SOURCE_NAME": "browser-made",
             "BROKEN_DATABASE_URL": db_url.rsplit("/", 1)[0] + "/no_such_database",
             "ARTIFACTS": str(ARTIFACTS), "CHROMIUM": chromium},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["failures"] == [], seen["failures"]
    states = ["sign-in", "sign-in-error", "list-empty", "create", "create-error",
              "detail-created", "detail", "detail-rotated", "detail-from-list", "detail-error",
              "unknown-source", "list", "signed-out"]  # fmt: skip
    assert seen["audited"] == states
    for state in states:
        assert (ARTIFACTS / f"dashboard-{state}.png").stat().st_size > 5_000
    assert seen["secretShownAfterReload"] is False
    assert "does not exist" in seen["sourceError"]
    assert "database_url" in seen["formError"] or "connection string" in seen["formError"]
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

    # what the page showed is the real thing
    source = _get(f"{admin_url}/api/sources/{seen['sourceId']}", TOKEN)
    assert source["name"] == "browser-made" and source["state"] == "active"
    assert "browser-made" in seen["listed"] and "active" in seen["listed"]
    assert seen["sourceId"] in seen["curl"] and engine_url in seen["curl"]
    assert f"source_id: {seen['sourceId']}" in seen["proxy"]
    assert "secret_env: ENGINE_SECRET" in seen["proxy"]
    assert seen["rotatedSecret"] != seen["secret"]
    assert _get(f"{admin_url}/api/sources/{seen['sourceId']}", TOKEN)["previous_secret_expires_at"]
    # the secret shown at creation still works (grace period) and so does the rotated one
    for secret in (seen["secret"], seen["rotatedSecret"]):
        url = (f"{engine_url}/v1/shape?table=items&offset=-1&source_id={seen['sourceId']}"
               f"&secret={secret}")  # fmt: skip
        with urllib.request.urlopen(url, timeout=30) as resp:
            rows = json.loads(resp.read())
        assert rows[0]["value"]["title"] == "from the browser test"
