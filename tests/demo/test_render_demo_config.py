"""`make run DEMO_ORIGINS=...`: a frontend developer's own app may sync from the demo proxy.

scripts/render-demo-config wrote only the demo page's two origins into the config it renders,
so an app on Vite's dev server (another origin) got an opaque CORS failure and adding the
origin to config/demo.yaml did nothing (newuser 2026-12-07, MEDIUM). Real path: the script as
run-demo runs it, the real proxy started on the rendered file, a browser's preflight from the
extra origin answered with that origin allowed, and one from elsewhere not.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "scripts" / "render-demo-config"


def _render(tmp_path: Path, *extra: str) -> Path:
    target = tmp_path / "proxy.yaml"
    args = [sys.executable, str(RENDER), str(ROOT / "config" / "demo.yaml"), str(target),
            "--engine-port", str(free_port()), "--proxy-port", str(free_port()),
            "--demo-port", "5200"]  # fmt: skip
    for value in extra:
        args += ["--allow-origin", value]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
    return target


def _preflight(port: int, origin: str) -> dict[str, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/shape?table=todos&offset=-1", method="OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return dict(r.headers)
    except urllib.error.HTTPError as e:
        return dict(e.headers)


def test_extra_origins_are_added_to_the_demo_pages(tmp_path: Path) -> None:
    # run-demo passes DEMO_ORIGINS as one argument, empty when unset
    rendered = yaml.safe_load(_render(tmp_path, "").read_text())
    assert rendered["cors"]["allow_origins"] == [
        "http://127.0.0.1:5200", "http://localhost:5200",
    ]  # fmt: skip
    rendered = yaml.safe_load(
        _render(
            tmp_path, "http://localhost:5173 https://app.example/,http://127.0.0.1:5200"
        ).read_text()
    )
    assert rendered["cors"]["allow_origins"] == [
        "http://127.0.0.1:5200", "http://localhost:5200", "http://localhost:5173",
        "https://app.example",
    ]  # fmt: skip


def test_the_proxy_on_the_rendered_config_allows_the_extra_origin(tmp_path: Path) -> None:
    config = _render(tmp_path, "http://localhost:5173")
    port = yaml.safe_load(config.read_text())["server"]["port"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ENGINE_SECRET": secrets.token_hex(32),
        "DEMO_JWT_SECRET": secrets.token_hex(32),
    }
    log = tmp_path / "proxy.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--config", str(config)], cwd=ROOT, env=env,
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except (OSError, urllib.error.HTTPError):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        allowed = _preflight(port, "http://localhost:5173")
        assert allowed.get("Access-Control-Allow-Origin") == "http://localhost:5173", allowed
        refused = _preflight(port, "http://localhost:5999")
        assert "Access-Control-Allow-Origin" not in refused, refused
    finally:
        proc.terminate()
        proc.wait(20)
