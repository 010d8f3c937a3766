"""The `make run` demo in Chromium: two users, two browser contexts, live todos.

`make run` (free ports, its own data dir) serves the page; tests/demo/todos.mjs drives
Debian's chromium with playwright-core: alice's todo appears in her second tab within a
second and never for bob, a toggle and a delete propagate, the panel shows the claims, the
rule and the masked upstream URL, no secret reaches the browser, and nothing is fetched from
another host. Screenshots go to test-artifacts/demo-alice.png and demo-bob.png (printed).
Then `make stop` must leave nothing running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.demo.demo_harness import ROOT, DemoRun, chromium, free_port, node_deps

HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    with DemoRun(checkout=ROOT, data_dir=tmp_path_factory.mktemp("demo") / "data") as run:
        run.start()
        yield run


def _secrets(run: DemoRun) -> dict[str, str]:
    lines = (run.data_dir / "demo.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_two_users_live_in_chromium(demo: DemoRun) -> None:
    browser = chromium()
    node_deps()
    ARTIFACTS.mkdir(exist_ok=True)
    title = f"demo test {uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        ["node", str(HERE / "todos.mjs")],
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "DEMO_URL": demo.url("DEMO_PORT"),
             "CHROMIUM": browser, "ARTIFACTS": str(ARTIFACTS), "TITLE": title,
             "SECRETS": ",".join(_secrets(demo).values()), "HOME": "/tmp"},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    m = seen["measured"]
    print(f"\nscreenshots: {ARTIFACTS / 'demo-alice.png'} {ARTIFACTS / 'demo-bob.png'}")
    print(f"measured: {json.dumps(m)}")
    assert seen["failures"] == [], seen["failures"]

    # the seeded rows: each user sees only their own
    assert sorted(m["aliceInitial"]) == ["buy milk", "write docs"]
    assert m["bobInitial"] == ["ship it"]
    # live, within a second, in the other tab
    assert m["addMs"] is not None and m["addMs"] <= 1000, m
    assert m["toggleMs"] is not None and m["toggleMs"] <= 1000, m
    assert m["deleteMs"] is not None and m["deleteMs"] <= 1000, m
    # never for the other user
    assert m["bobAddMs"] is not None
    assert not m["bobSeesAlice"] and not m["aliceSeesBob"] and not m["bobSeesAliceAtEnd"]
    assert title not in m["aliceFinal"]
    # the panel: what the proxy did with this page's request
    panel = m["panel"]
    assert "subalice" in panel["claims"] and "issshapegate-demo" in panel["claims"]
    assert (
        "owner on todos" in panel["rule"] and "where owner_id = $1, $1 = 'alice'" in panel["rule"]
    )
    assert f"http://127.0.0.1:{demo.ports['ENGINE_PORT']}/v1/shape?" in panel["upstream"]
    assert "secret=[REDACTED]" in panel["upstream"]
    assert f"127.0.0.1:{demo.ports['PROXY_PORT']}/v1/shape" in panel["request"]
    assert (ARTIFACTS / "demo-alice.png").stat().st_size > 20_000


def test_write_api_checks_the_token(demo: DemoRun) -> None:
    base = demo.url("DEMO_PORT")

    def call(method: str, path: str, token: str | None, body: object = None) -> int:
        req = urllib.request.Request(
            base + path, method=method, data=None if body is None else json.dumps(body).encode()
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            assert exc.headers["content-type"].startswith("application/json")
            return exc.code

    with urllib.request.urlopen(base + "/token/bob", timeout=10) as resp:
        bob = resp.read().decode().strip()
    # bob cannot change or delete alice's seeded todo (id 1), nor write without a valid token
    assert call("PATCH", "/api/todos/1", bob, {"done": True}) == 404
    assert call("DELETE", "/api/todos/1", bob) == 404
    assert call("POST", "/api/todos", None, {"title": "x"}) == 401
    assert call("POST", "/api/todos", bob[:-2] + "xx", {"title": "x"}) == 401
    assert call("POST", "/api/todos", bob, {"title": ""}) == 400
    assert call("PATCH", "/api/todos/abc", bob, {"done": True}) == 400
    assert call("POST", "/api/explain", bob, {"url": "http://elsewhere/"}) == 400
    # and through the proxy, bob's token reads only bob's rows
    req = urllib.request.Request(
        demo.url("PROXY_PORT") + "/v1/shape?table=todos&offset=-1",
        headers={"Authorization": f"Bearer {bob}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        rows = [r["value"] for r in json.loads(resp.read()) if "value" in r]
    assert rows and {r["owner_id"] for r in rows} == {"bob"}


def test_make_clean_under_a_running_demo_stops_it_first(tmp_path: Path) -> None:
    """`make clean` while `make run` runs: everything stops (Postgres first), then the files go.

    (`make stop` on its own is one of the README commands, tests/demo/test_readme_commands.py.)
    """
    with DemoRun(checkout=ROOT, data_dir=tmp_path / "data") as run:
        run.start()
        pids = [int(p) for p in (run.data_dir / "pids").read_text().split()]
        pg_dir = Path((run.data_dir / "pg-dir").read_text().strip())
        assert (pg_dir / "data" / "postmaster.pid").exists()
        cleaned = run.make("clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "stopped the demo" in cleaned.stdout
    assert run.proc is not None and run.proc.wait(30) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} still running"
    assert not run.data_dir.exists() and not pg_dir.exists()
    postgres = subprocess.run(["pgrep", "-f", f"postgres -D {pg_dir}/data"], capture_output=True)
    assert postgres.returncode == 1, "Postgres still running"


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """Ctrl-C in the `make run` terminal (SIGINT to its process group) stops all of it."""
    with DemoRun(checkout=ROOT, data_dir=tmp_path / "data") as run:
        run.start()
        pids = [int(p) for p in (run.data_dir / "pids").read_text().split()]
        pg_dir = Path((run.data_dir / "pg-dir").read_text().strip())
        assert run.proc is not None
        os.killpg(run.proc.pid, signal.SIGINT)
        run.proc.wait(60)
        assert "stopping the demo" in run.output()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} still running"
        assert not (pg_dir / "data" / "postmaster.pid").exists(), "Postgres still running"
        assert not (run.data_dir / "run.pid").exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_busy_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = DemoRun(checkout=ROOT, data_dir=tmp_path / "data")
        run.ports = {name: free_port() for name in ("ENGINE_PORT", "DEMO_PORT", "PG_PORT")}
        run.ports["PROXY_PORT"] = port
        started = time.monotonic()
        out = subprocess.run(
            [str(ROOT / "scripts" / "run-demo")], env=run.env(), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    assert out.returncode != 0
    assert out.stderr.splitlines() == [
        f"make run: port {port} (the auth proxy) is already in use; "
        f"choose another: make run PROXY_PORT={port + 1}"
    ]
    assert "shapegate demo is running" not in out.stdout
    assert not (run.data_dir / "pg-dir").exists()  # nothing was started
    assert time.monotonic() - started < 30
