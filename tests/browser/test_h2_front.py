"""Ten live shapes on one page, through the shipped TLS + HTTP/2 front (config/front).

    Chromium (page on its own origin) --h2, TLS--> nginx (config/front, real)
        --> shape-proxy (real process) --> sync-engine (real process) --> Postgres

A browser opens at most 6 HTTP/1.1 connections per origin, and each live shape holds one for
its long-poll: over HTTP/1.1 a page's 7th shape waits until one of the first 6 long-polls
ends (the newuser probe measured 18.7 s). Through the front every request is one stream of
one HTTP/2 connection. The page runs ShapeStreams of the real @electric-sql/client: shapes 0-5
until each holds its live long-poll, then shapes 6-9. The engine holds a long-poll for 60 s
here, so "while the first six hold" is an order of events the page records (how many
long-polls had ended when each shape got its rows), not a time bound.

The second case is the reason: the same page straight to the proxy (HTTP/1.1) gets no rows for
shapes 6-9 while the first six hold; they come only after a long-poll ends (here the INSERT
ends them).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.util
import json
import os
import queue
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.engine_process import EngineProcess
from tests.support.ports import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RENDER = ROOT / "config" / "front" / "render.py"
CLIENT_DIST = ROOT / "tests" / "node" / "node_modules" / "@electric-sql" / "client" / "dist"
SECRET = "front-test-engine-secret-0123456789"
#: The engine's long-poll hold: longer than any wait below, so a long-poll of the first six
#: shapes ends only when the test's INSERT ends it; under the proxy's first_byte_timeout
#: (75 s) and the front's proxy_read_timeout (90 s).
HOLD = 60

pytestmark = pytest.mark.timeout(300)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is needed for this test: apt-get install -y chromium")
    return found


def _node_deps() -> None:
    """playwright-core (tests/browser) and the npm client (tests/node), as `make` installs
    them."""
    for directory, marker in ((HERE, "playwright-core"), (CLIENT_DIST.parents[3], "@electric-sql")):
        if not (directory / "node_modules" / marker).exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=directory,
                           check=True)  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Certificate:
    cert: Path
    key: Path
    spki: str  # base64 SHA-256 of the public key, as Chromium's SPKI list takes it


def _certificate(directory: Path) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, made by openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return Certificate(cert, key, base64.b64encode(hashlib.sha256(der).digest()).decode())


class _PageServer(http.server.ThreadingHTTPServer):
    db_url: str


class _PageHandler(http.server.BaseHTTPRequestHandler):
    """The page's own origin: the page, the client's ESM build, and POST /insert."""

    server: _PageServer

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
        if path == "/":
            self._send(200, (HERE / "h2_front_page.html").read_bytes(), "text/html")
        elif path.startswith("/client/") and "/" not in path[len("/client/") :]:
            file = CLIENT_DIST / path[len("/client/") :]
            if file.is_file():
                self._send(200, file.read_bytes(), "text/javascript")
            else:
                self._send(404, b"", "text/plain")
        else:
            self._send(404, b"", "text/plain")

    def do_POST(self) -> None:
        if self.path != "/insert":
            self._send(404, b"", "text/plain")
            return
        with psycopg.connect(self.server.db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1000, 'for every shape')")
        self._send(200, b"inserted", "text/plain")


@dataclass
class Stack:
    page_origin: str
    front: str  # https://127.0.0.1:port
    proxy: str  # http://127.0.0.1:port
    spki: str
    cert: Path
    front_log: Path


@pytest.fixture
def stack(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Postgres, engine, proxy, the front and the page's server, all real. An indirect
    parameter is the proxy rule's `limits`."""
    _chromium()
    _node_deps()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20) g")

    page_port, proxy_port, front_port = free_port(), free_port(), free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    engine = EngineProcess(
        db_url, tmp_path / "data", "--secret", SECRET, "--long-poll-timeout", str(HOLD),
        "--no-fsync",
    )  # fmt: skip
    config = {
        "upstream": {"url": engine.url, "secret_env": "ENGINE_SECRET", "first_byte_timeout": 75},
        # The front connects from this host; it sets X-Forwarded-For to the browser's address.
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "cors": {"allow_origins": [page_origin]},
        "tables": {
            "items": {
                "allow": [
                    {
                        "name": "everyone",
                        "anonymous": True,
                        "all_rows": True,
                        "client_where": "passthrough",
                        "sse": True,
                        **({"limits": request.param} if hasattr(request, "param") else {}),
                    }
                ]
            }
        },
    }
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # Not under tmp_path (0700): started as root, nginx's workers run as render.py's account.
    scratch = Path(tempfile.mkdtemp(prefix="shapegate-front-"))
    scratch.chmod(0o755)
    certificate = _certificate(scratch)
    proxy_log, front_log = tmp_path / "proxy.log", tmp_path / "front.log"
    procs: list[subprocess.Popen[bytes]] = []
    server = _PageServer(("127.0.0.1", page_port), _PageHandler)
    server.db_url = db_url
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine.start()
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config_file), "--port",
             str(proxy_port), "--log-format", "text"],
            cwd=ROOT, env={**os.environ, "ENGINE_SECRET": SECRET, "PYTHONUNBUFFERED": "1"},
            stdout=proxy_log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(proxy)
        front_nginx = subprocess.Popen(
            [sys.executable, str(RENDER), "--dir", str(scratch / "nginx"),
             "--listen", f"127.0.0.1:{front_port}", "--server-name", "localhost",
             "--cert", str(certificate.cert), "--key", str(certificate.key),
             "--proxy", f"127.0.0.1:{proxy_port}", "--run"],
            stdout=front_log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(front_nginx)
        front = f"https://127.0.0.1:{front_port}"
        tls = ssl.create_default_context(cafile=str(certificate.cert))

        def healthy() -> bool:
            for proc, log in zip(procs, (proxy_log, front_log), strict=True):
                assert proc.poll() is None, log.read_text()[-3000:]
            try:
                # through the front and the proxy to the engine
                with urllib.request.urlopen(front + "/v1/health", timeout=5, context=tls) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(healthy, timeout=60, interval=0.2, message="the front's /v1/health")
        yield Stack(page_origin, front, f"http://127.0.0.1:{proxy_port}", certificate.spki,
                    certificate.cert, front_log)  # fmt: skip
    finally:
        for proc in reversed(procs):
            _stop(proc)
        engine.stop()
        server.shutdown()
        server.server_close()
        shutil.rmtree(scratch, ignore_errors=True)


def _run_page(stack: Stack, shapes_url: str, hold_wait_ms: int) -> dict[str, Any]:
    page = f"{stack.page_origin}/?shapes={quote(shapes_url + '/v1/shape', safe='')}"
    out = subprocess.run(
        ["node", str(HERE / "h2_front.mjs")],
        env={**os.environ, "PAGE_URL": page, "CHROMIUM": _chromium(), "SPKI": stack.spki,
             "HOLD_WAIT_MS": str(hold_wait_ms)},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    # For the record (not asserted): ms since page load when shapes 0-5 and 6-9 were started,
    # when each shape was first up to date (while held, at the end), and got its first row.
    print(json.dumps({"started": result["final"]["started"],
                      "rowsAt held": [s["rowsAt"] for s in result["held"]["shapes"]],
                      "rowsAt final": [s["rowsAt"] for s in result["final"]["shapes"]],
                      "firstRowAt final": [s["firstRowAt"] for s in result["final"]["shapes"]]}))  # fmt: skip
    return result


def test_ten_live_shapes_through_the_h2_front(stack: Stack) -> None:
    result = _run_page(stack, stack.front, hold_wait_ms=60_000)
    held, final = result["held"], result["final"]
    assert held["errors"] == [] and final["errors"] == [], final["errors"]

    # Every answer to the page came over HTTP/2, as DevTools' Protocol column says. (The
    # page's own `nextHopProtocol` is "" for another origin without Timing-Allow-Origin.)
    assert len(result["cdpProtocols"]) >= 20, result["cdpProtocols"]
    assert set(result["cdpProtocols"]) == {"h2"}, result["cdpProtocols"]
    # and nginx saw HTTP/2 for the shape requests (its access log)
    shape_lines = [line for line in stack.front_log.read_text().splitlines() if "/v1/shape" in line]
    assert shape_lines and all(" HTTP/2.0 " in line for line in shape_lines), shape_lines[:5]

    # All ten shapes got their rows (shape i: ids i+1..20) while the first six held their
    # long-polls: no long-poll had ended when the last shape got its rows.
    assert result["liveDoneBeforeMore"] == 0
    shapes = held["shapes"]
    assert len(shapes) == 10
    for i, shape in enumerate(shapes):
        assert shape["rowsAt"] is not None, f"shape {i} got no rows: {shapes}"
        assert shape["rowCount"] == 20 - i, shape
        assert shape["liveDoneAtRows"] == 0, f"shape {i} got its rows only after a long-poll ended"
    assert held["liveDone"] == 0 and held["liveSent"] >= 6, held

    # One INSERT reaches all ten.
    assert result["inserted"] == 200
    assert [s["insertSeen"] for s in final["shapes"]] == [True] * 10, final["shapes"]
    assert result["console"] == [], result["console"]


def test_the_same_page_over_http1_waits_for_a_connection(stack: Stack) -> None:
    """Why the front: straight to the proxy (HTTP/1.1) shapes 6-9 get nothing while 0-5
    hold their long-polls (the page looks for 10 s); they get their rows once the INSERT
    ends those long-polls."""
    result = _run_page(stack, stack.proxy, hold_wait_ms=10_000)
    held, final = result["held"], result["final"]
    assert set(result["cdpProtocols"]) == {"http/1.1"}, result["cdpProtocols"]
    assert result["liveDoneBeforeMore"] == 0
    assert held["liveDone"] == 0, held  # (the hold is 60 s and the page waited 10)
    for shape in held["shapes"][6:]:
        assert shape["firstRowAt"] is None, f"shape {shape['i']} got rows over HTTP/1.1: {held}"
    assert result["inserted"] == 200
    assert [s["insertSeen"] for s in final["shapes"]] == [True] * 10, final["shapes"]
    for shape in final["shapes"][6:]:
        assert shape["liveDoneAtFirstRow"] > 0, shape  # only once a long-poll had ended


def test_sse_goes_through_the_front_event_by_event(stack: Stack, db_url: str) -> None:
    """An SSE stream through the front (curl over HTTP/2, as a user checks it): the INSERT's
    event arrives while the stream is still open, so the front passed it on as written."""
    tls = ssl.create_default_context(cafile=str(stack.cert))
    shape = f"{stack.front}/v1/shape?table=items&where=id%20%3E%200"
    with urllib.request.urlopen(shape + "&offset=-1", timeout=30, context=tls) as r:
        handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
        assert r.headers.get("Strict-Transport-Security") is None  # (--hsts not given)
        r.read()
    url = f"{shape}&handle={handle}&offset={offset}&live=true&live_sse=true"
    curl = subprocess.Popen(
        ["curl", "--http2", "-sSiN", "--cacert", str(stack.cert), url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert curl.stdout is not None
        for line in curl.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def until(predicate: Callable[[str], bool]) -> list[str]:
        seen: list[str] = []
        while True:
            try:
                # (a generous bound: the engine ends an SSE stream after 60 s)
                line = lines.get(timeout=45)
            except queue.Empty:
                raise AssertionError(f"not seen; the stream so far: {seen}") from None
            seen.append(line)
            if predicate(line):
                return seen

    try:
        # (the engine sends an SSE stream's head with its first event or keep-alive, ~21 s)
        head = until(lambda line: line.strip() == "")
        assert head[0].startswith("HTTP/2 200"), head
        assert any(line.lower().startswith("content-type: text/event-stream") for line in head)
        # (the stream asks from `offset` on: a change made now is in it whenever the engine
        # takes the request)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1000, 'for every shape')")
        inserted_at = time.monotonic()
        event = until(lambda line: line.startswith("data:") and '"1000"' in line)[-1]
        print(f"SSE: the INSERT's event came {time.monotonic() - inserted_at:.3f} s after it")
        assert '"insert"' in event, event
        assert curl.poll() is None, "the stream ended before its event came through"
    finally:
        curl.terminate()
        curl.wait(10)


def _render_module() -> Any:
    spec = importlib.util.spec_from_file_location("front_render", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_spells_http2_for_old_and_new_nginx(tmp_path: Path) -> None:
    """`listen ... ssl http2;` for nginx 1.22 (Debian 12), `listen ... ssl;` + `http2 on;`
    for >= 1.25.1 (where the first is deprecated); every placeholder filled either way."""
    render = _render_module()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    texts = {}
    for new in (False, True):
        conf = render.render(
            tmp_path / str(new), listen="127.0.0.1:8443", server_name="sync.example.com",
            cert=cert, key=key, proxy="127.0.0.1:8080", http2_on_syntax=new,
        )  # fmt: skip
        texts[new] = (conf.parent / "front.conf").read_text()
        assert render.PLACEHOLDER.search(texts[new] + conf.read_text()) is None
    assert "listen 127.0.0.1:8443 ssl http2;" in texts[False]
    assert "\n    http2 on;" not in texts[False]
    assert "listen 127.0.0.1:8443 ssl;\n    http2 on;" in texts[True]
    assert " ssl http2;" not in texts[True]
    assert render.HTTP2_ON_SINCE == (1, 25, 1)


def _curl_status(stack: Stack, source: str, where: str) -> str:
    """`<HTTP version> <status>` of a shape request to the front from local address
    `source` (127.0.0.x: every one of them is this host's)."""
    url = f"{stack.front}/v1/shape?table=items&offset=-1&where={quote(where, safe='')}"
    out = subprocess.run(
        ["curl", "--http2", "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
         "--interface", source, "--cacert", str(stack.cert), url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


@pytest.mark.parametrize("stack", [{"new_shape_rate": 0.001, "new_shape_burst": 1}], indirect=True)
def test_the_proxy_charges_each_browser_not_the_front(stack: Stack) -> None:
    """The front's X-Forwarded-For with the proxy's `server.trusted_proxies` naming the
    front: two anonymous clients behind it have budgets of their own (here one new shape
    each). Charged to the front's address instead, the second would get the first's 429."""
    assert _curl_status(stack, "127.0.0.5", "id > 1") == "2 200"
    assert _curl_status(stack, "127.0.0.5", "id > 2") == "2 429"  # (its one new shape used)
    assert _curl_status(stack, "127.0.0.6", "id > 2") == "2 200"
