"""One log format for both programs, at levels that match what happened.

Text on a terminal, JSON otherwise, `--log-format` to choose; startup names each listener,
shutdown is logged; a routine long-poll is DEBUG, an unreachable engine (502) a WARNING.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import psycopg
import pytest

from tests.support.engine_process import EngineProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
JWT_SECRET = "cli-log-test-secret-" + "y" * 32
PROXY_CONFIG = """
server: {{host: 127.0.0.1, port: {port}}}
upstream: {{url: "http://127.0.0.1:{engine_port}"}}
issuers:
  - issuer: cli-test
    audience: shapegate
    algorithms: [HS256]
    keys: [{{secret_env: CLI_TEST_JWT_SECRET}}]
cache: {{max_bytes: 0}}
collapse: false
tables:
  todos:
    allow:
      - where: "owner_id = {{{{sub}}}}"
"""


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ENGINE_", "SHAPE_PROXY_"))
    }
    env["CLI_TEST_JWT_SECRET"] = JWT_SECRET
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A program whose stderr goes to a file (or a terminal), stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path, *, tty: bool = False) -> None:
        self.log = log
        self._master = None
        if tty:
            master, slave = pty.openpty()
            self._master = master
            self.proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=slave, stderr=slave,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
            os.close(slave)
        else:
            with log.open("wb") as f:
                self.proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=f, stderr=f,
                                             stdin=subprocess.DEVNULL)  # fmt: skip
        self._buffer = b""

    def text(self) -> str:
        if self._master is not None:
            import select

            while select.select([self._master], [], [], 0)[0]:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self._buffer += chunk
            return self._buffer.decode(errors="replace").replace("\r\n", "\n")
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None or needle in self.text(), self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.05)
        return self.text()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        text = self.text()
        if self._master is not None:
            os.close(self._master)
        return text


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def todos_db(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE todos (id int PRIMARY KEY, owner_id text, title text)")
        conn.execute("INSERT INTO todos VALUES (1, 'alice', 'one'), (2, 'bob', 'two')")
    return db_url


@pytest.fixture
def engine(todos_db: str, tmp_path: Path) -> Iterator[EngineProcess]:
    e = EngineProcess(todos_db, tmp_path / "data", "--long-poll-timeout", "1", "--no-fsync",
                      "--log-format", "json")  # fmt: skip
    e.start()
    yield e
    e.stop()


def test_engine_logs_json_off_a_terminal_and_names_its_listener(engine: EngineProcess) -> None:
    engine.stop()
    lines = _json_lines(engine.log.read_text())
    messages = [str(line["message"]) for line in lines]
    assert any(m.startswith(f"listening on http://127.0.0.1:{engine.port}") for m in messages)
    assert any(m.startswith("shutting down") for m in messages) and messages[-1] == "stopped"
    assert {line["level"] for line in lines} <= {"debug", "info", "warning"}


def _proxy(tmp_path: Path, engine_port: int, *flags: str, tty: bool = False) -> tuple[Proc, int]:
    port = free_port()
    config = tmp_path / f"proxy-{port}.yaml"
    config.write_text(PROXY_CONFIG.format(port=port, engine_port=engine_port))
    proc = Proc([sys.executable, "-m", "proxy", "--config", str(config), *flags],
                tmp_path / f"proxy-{port}.log", tty=tty)  # fmt: skip
    return proc, port


def _get(url: str, token: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def _token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "cli-test", "aud": "shapegate", "sub": sub, "iat": now,
                       "exp": now + 600}, JWT_SECRET, algorithm="HS256")  # fmt: skip


def test_proxy_long_polls_are_debug_and_an_unreachable_engine_is_a_warning(
    engine: EngineProcess, tmp_path: Path
) -> None:
    proxy, port = _proxy(tmp_path, engine.port, "--log-format", "json")
    try:
        proxy.wait_for("listening on")
        base = f"http://127.0.0.1:{port}/v1/shape?table=todos"
        token = _token("alice")
        status, headers = _get(base + "&offset=-1", token)
        assert status == 200
        handle, offset = headers["electric-handle"], headers["electric-offset"]
        while True:  # catch up, then live requests end after the engine's 1 s hold
            status, headers = _get(f"{base}&handle={handle}&offset={offset}", token)
            offset = headers.get("electric-offset", offset)
            if "electric-up-to-date" in headers:
                break
        for _ in range(2):
            status, headers = _get(f"{base}&handle={handle}&offset={offset}&live=true", token)
            assert status in (200, 204)
        engine.stop()
        status, _ = _get(base + "&offset=-1", _token("bob"))
        assert status in (502, 503)
    finally:
        text = proxy.stop()
    access = [line for line in _json_lines(text) if line["logger"] == "proxy.access"]
    assert [line["status"] for line in access if line["level"] == "info"][:1] == [200]
    assert not [line for line in access if "live=true" in str(line.get("query"))]
    failed = [line for line in access if int(str(line["status"])) >= 500]
    assert failed and all(line["level"] == "warning" for line in failed)
    messages = [str(line["message"]) for line in _json_lines(text)]
    # (the first lines say how the config exposes /metrics, then where it listens)
    assert any(m.startswith(f"listening on http://127.0.0.1:{port}") for m in messages[:3])
    assert messages[-1] == "stopped"


def test_proxy_debug_level_shows_the_long_polls(engine: EngineProcess, tmp_path: Path) -> None:
    proxy, port = _proxy(tmp_path, engine.port, "--log-format", "json", "--log-level", "debug")
    try:
        proxy.wait_for("listening on")
        base = f"http://127.0.0.1:{port}/v1/shape?table=todos"
        token = _token("alice")
        _, headers = _get(base + "&offset=-1", token)
        handle = headers["electric-handle"]
        _, headers = _get(f"{base}&handle={handle}&offset={headers['electric-offset']}", token)
        _get(f"{base}&handle={handle}&offset={headers['electric-offset']}&live=true", token)
    finally:
        text = proxy.stop()
    live = [line for line in _json_lines(text) if "live=true" in str(line.get("query"))]
    assert live and all(line["level"] == "debug" for line in live)


@pytest.mark.parametrize("program", ["engine", "proxy"])
def test_text_on_a_terminal_json_when_asked(program: str, todos_db: str, tmp_path: Path) -> None:
    if program == "engine":
        port = free_port()
        args = [sys.executable, "-m", "sync_engine", "--database-url", todos_db, "--port",
                str(port), "--data-dir", str(tmp_path / "data")]  # fmt: skip
    else:
        port = free_port()
        config = tmp_path / "proxy.yaml"
        config.write_text(PROXY_CONFIG.format(port=port, engine_port=9))
        args = [sys.executable, "-m", "proxy", "--config", str(config)]
    on_tty = Proc(args, tmp_path / "tty.log", tty=True)
    try:
        first = on_tty.wait_for("listening on").splitlines()[0]
    finally:
        text = on_tty.stop()
    assert not first.startswith("{") and " INFO " in first, first
    assert "stopped" in text.splitlines()[-1]
    forced = Proc([*args, "--log-format", "json"], tmp_path / "json.log", tty=True)
    try:
        forced.wait_for("listening on")
    finally:
        text = forced.stop()
    assert all(line["level"] for line in _json_lines(text))
