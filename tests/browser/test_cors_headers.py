"""A page sending request headers of its own syncs through the proxy (newuser 16:44).

    Chromium (page on its own origin) --> shape-proxy (real process) --> sync-engine
        (real process) --> Postgres

The page's ShapeStream (the real @electric-sql/client) passes `headers: {'X-Tenant': 'acme',
Authorization: 'Bearer ...', 'sentry-trace': ..., baggage: ...}`, as apps and tracing SDKs do.
Chromium asks the proxy's preflight for those names; the proxy allowed a fixed list only, so
Chromium refused every request ("Request header field baggage is not allowed by
Access-Control-Allow-Headers in preflight response") and the client retried for ever as a
network error: the page never got a row. The preflight of an allowed Origin now reflects the
names asked for; the engine still gets none of them (tests/proxy/test_preflight_request_headers.py).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import psycopg
import pytest
import yaml

from tests.browser.test_h2_front import CLIENT_DIST, _chromium, _node_deps, _stop
from tests.support.engine_process import EngineProcess
from tests.support.ports import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SECRET = "cors-test-engine-secret-0123456789"
HMAC = "cors-test-token-key-0123456789abcdef0123456789"
ISSUER, AUDIENCE = "https://idp.example", "shapegate"

pytestmark = pytest.mark.timeout(240)

#: The page: one ShapeStream of org-a's items, with the page's own headers. `state.failures`
#: counts fetches the browser failed (a refused preflight is one: a TypeError to the page).
PAGE = """<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<script type="module">
import { ShapeStream } from "/client/index.mjs";
const q = new URLSearchParams(location.search);
const state = (window.state = { rows: {}, upToDate: false, failures: 0, fetched: 0 });
async function fetchClient(input, init) {
  try {
    const response = await fetch(input, init);
    state.fetched++;
    return response;
  } catch (error) {
    state.failures++;
    throw error;
  }
}
const stream = new ShapeStream({
  url: q.get("shape"),
  params: { table: "items" },
  headers: {
    Authorization: `Bearer ${q.get("token")}`,
    "X-Tenant": "acme",
    "sentry-trace": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
    baggage: "sentry-environment=production,sentry-release=1.0.0",
  },
  fetchClient,
});
stream.subscribe((messages) => {
  for (const m of messages) {
    const op = m.headers && m.headers.operation;
    if (op === "insert" || op === "update") state.rows[m.value.id] = m.value.title;
    else if (op === "delete") delete state.rows[m.value.id];
    else if (m.headers && m.headers.control === "up-to-date") state.upToDate = true;
  }
});
</script>
"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    """The page's own origin: the page and the client's ESM build."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        name = path.removeprefix("/client/")
        if path == "/":
            self._send(200, PAGE.encode(), "text/html")
        elif path.startswith("/client/") and "/" not in name and (CLIENT_DIST / name).is_file():
            self._send(200, (CLIENT_DIST / name).read_bytes(), "text/javascript")
        else:
            self._send(404, b"", "text/plain")


@dataclass
class Stack:
    page_origin: str
    proxy: str
    proxy_log: Path


@pytest.fixture
def stack(db_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Postgres, engine, proxy (org members see their org's rows) and the page's server."""
    _chromium()
    _node_deps()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'acme', 'a1'), (2, 'other', 'b1'), "
                     "(3, 'acme', 'a3')")  # fmt: skip
    page_port, proxy_port = free_port(), free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    engine = EngineProcess(db_url, tmp_path / "data", "--secret", SECRET, "--no-fsync")
    config = {
        "upstream": {"url": engine.url, "secret_env": "ENGINE_SECRET"},
        "issuers": [
            {
                "issuer": ISSUER,
                "audience": [AUDIENCE],
                "algorithms": ["HS256"],
                "keys": [{"secret_env": "TOKEN_KEY"}],
            }
        ],
        "cors": {"allow_origins": [page_origin]},
        "tables": {
            "items": {
                "allow": [
                    {"name": "member", "where": "org_id = {{org_id}}", "columns": ["id", "title"]}
                ]
            }
        },
    }
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(yaml.safe_dump(config))
    proxy_log = tmp_path / "proxy.log"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), _PageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        engine.start()
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config_file), "--port",
             str(proxy_port), "--log-format", "text"],
            cwd=ROOT, stdout=proxy_log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "ENGINE_SECRET": SECRET, "TOKEN_KEY": HMAC,
                 "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        url = f"http://127.0.0.1:{proxy_port}"

        def healthy() -> bool:
            assert proxy is not None and proxy.poll() is None, proxy_log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(healthy, timeout=60, interval=0.2, message="the proxy's /v1/health")
        yield Stack(page_origin, url, proxy_log)
    finally:
        if proxy is not None:
            _stop(proxy)
        engine.stop()
        server.shutdown()
        server.server_close()


def test_a_page_adding_its_own_headers_syncs_its_rows(stack: Stack) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "org_id": "acme", "iat": now,
         "exp": now + 600},
        HMAC, algorithm="HS256",
    )  # fmt: skip
    page = f"{stack.page_origin}/?" + urlencode(
        {"shape": stack.proxy + "/v1/shape", "token": token}
    )
    out = subprocess.run(
        ["node", str(HERE / "test_cors_headers.mjs")],
        env={**os.environ, "PAGE_URL": page, "CHROMIUM": _chromium(), "WAIT_MS": "30000"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    state = result["state"]
    # What the page's user sees: its org's rows, and the browser refused nothing.
    assert state["rows"] == {"1": "a1", "3": "a3"}, (result, stack.proxy_log.read_text()[-2000:])
    assert state["upToDate"] is True and state["failures"] == 0, result
    assert result["console"] == [], result["console"]
