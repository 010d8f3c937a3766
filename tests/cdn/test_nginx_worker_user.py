"""Started as root, the nginx tier's cache is not readable by `nobody` (attack 21:42).

Every cache file begins with its key, the engine URL with the engine `secret` in it.
config/nginx/render.py run as root made nginx's workers run as `nobody` and gave them the
directory, so any other service running as `nobody` (a common default for unrelated
daemons) could read the secret and every cached shape. Now they run as a dedicated account
(`render.WORKER_USER`, made if missing, or `--user NAME`), and `nobody` is refused.

Here: the real nginx rendered by render.py as root, a scripted engine answering a cacheable
200, one request through the tier; then a process running as `nobody` tries to read the
cache file that holds the secret. Also: a cache directory that already existed with a loose
mode is made 0700. Only as root (as a non-root user nginx and its cache run as that user).
"""

from __future__ import annotations

import http.server
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cdn.processes import nginx_binary, running, status_of
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "config" / "nginx" / "render.py"
SECRET = "cdn-secret-not-for-nobody-5b2e81"
CACHED = re.compile(r"[0-9a-f]{32}")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="nginx drops privileges only as root")


class _Engine(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "public, max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def engine() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_cache_is_not_readable_by_nobody(engine: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="shapegate-nginx-"))
    scratch.chmod(0o755)  # (nginx's workers run as an unprivileged account)
    conf_dir = scratch / "nginx"
    (conf_dir / "cache").mkdir(parents=True)
    (conf_dir / "cache").chmod(0o755)  # (made by hand, or by an older render.py, loosely)
    port = free_port()
    rendered = subprocess.run(
        [sys.executable, str(RENDER), "--dir", str(conf_dir), "--listen", f"127.0.0.1:{port}",
         "--engine", f"127.0.0.1:{engine}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    nginx = [nginx_binary(), "-c", str(conf_dir / "nginx.conf"), "-p", str(conf_dir)]
    with running(nginx, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        url = f"http://127.0.0.1:{port}/v1/shape?table=items&offset=-1&secret={SECRET}"
        assert status_of(url) == 200
        files: list[Path] = []
        deadline = time.monotonic() + 30
        while not files and time.monotonic() < deadline:  # (renamed into place as it ends)
            # (the entry's own name: its key's MD5; a temporary file has a suffix)
            files = [p for p in (conf_dir / "cache").rglob("*") if CACHED.fullmatch(p.name)]
            time.sleep(0.05)
    try:
        assert len(files) == 1, files
        cached = files[0]
        assert SECRET.encode() in cached.read_bytes()  # (what nobody must not read)
        as_nobody = subprocess.run(
            ["cat", str(cached)], user="nobody", capture_output=True, timeout=30
        )
        assert as_nobody.returncode != 0 and SECRET.encode() not in as_nobody.stdout
        owner = pwd.getpwuid(cached.stat().st_uid).pw_name
        assert owner == "shapegate-nginx", owner
        assert (conf_dir / "cache").stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_nobody_is_refused_as_the_worker_user(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, str(RENDER), "--dir", str(tmp_path / "nginx"), "--user", "nobody"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "must not run as `nobody`" in refused.stderr
    assert not (tmp_path / "nginx" / "nginx.conf").exists()
