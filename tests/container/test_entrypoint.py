"""The container's entry command, run directly (no Docker engine here), plus the Dockerfile.

`scripts/container-entrypoint` is started the way the image starts it: environment variables
(DATABASE_URL pointing at a real Postgres, ENGINE_SECRET, the proxy's JWT secret), a data
dir and a mounted proxy config. The checks are what an operator would check: a signed request
through the proxy returns rows, the engine answers on loopback only, no secret shows in the
logs or the process list, SIGTERM stops everything, and a dead engine takes the container down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import psycopg
import pytest
import yaml
from psycopg import sql

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "scripts" / "container-entrypoint"
DEV_POSTGRES = ROOT / "scripts" / "dev-postgres"
DOCKERFILE = ROOT / "Dockerfile"
ISSUER = "https://app.test/"
AUDIENCE = "shapegate"

PROXY_CONFIG = """\
server:
  host: 127.0.0.1
  port: 8080
  reload_interval: 3600
upstream:
  url: http://127.0.0.1:{engine_port}
  secret_env: ENGINE_SECRET
  first_byte_timeout: 75
issuers:
  - issuer: {issuer}
    audience: {audience}
    algorithms: [HS256]
    keys:
      - secret_env: SHAPE_PROXY_JWT_SECRET
tables:
  items:
    allow:
      - name: everyone
        all_rows: true
"""


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket listening on `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if len(addr_hex) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1]))
                else:
                    raw = b"".join(
                        bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, 32, 8)
                    )
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@dataclass
class Container:
    proc: subprocess.Popen[bytes]
    log: Path
    engine_port: int
    proxy_port: int
    engine_secret: str
    jwt_secret: str

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def token(self) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "iat": now, "exp": now + 300}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if _get(self.proxy + "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("proxy never became healthy:\n" + self.output())


def _as_pid_one() -> None:
    """The signals a container's PID 1 starts with: all default. A test run under `nohup` (or
    anything else that ignores SIGHUP) would hand the entrypoint an ignored SIGHUP, which bash
    cannot trap (a signal ignored on entry stays ignored), and the reload test would fail for
    the harness's sake: CI ci83/ci84 were started with nohup."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture
def start_container(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Container]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    started: list[Container] = []

    def start(**env_overrides: str) -> Container:
        engine_port, proxy_port = free_port(), free_port()
        config = tmp_path / f"proxy-{engine_port}.yaml"
        config.write_text(
            PROXY_CONFIG.format(engine_port=engine_port, issuer=ISSUER, audience=AUDIENCE)
        )
        engine_secret = "engine-" + secrets.token_hex(16)
        jwt_secret = "jwt-" + secrets.token_hex(24)
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(tmp_path),
            "DATABASE_URL": db_url,
            "ENGINE_SECRET": engine_secret,
            "SHAPE_PROXY_JWT_SECRET": jwt_secret,
            "SHAPE_PROXY_CONFIG": str(config),
            "SHAPE_PROXY_HOST": "0.0.0.0",
            "SHAPE_PROXY_PORT": str(proxy_port),
            "SHAPEGATE_ENGINE_PORT": str(engine_port),
            "SHAPEGATE_DATA_DIR": str(tmp_path / f"data-{engine_port}"),
            "SYNC_ENGINE_LONG_POLL_TIMEOUT": "3",
            "SYNC_ENGINE_NO_FSYNC": "true",
            "PYTHONUNBUFFERED": "1",
            **env_overrides,
        }
        log = tmp_path / f"container-{engine_port}.log"
        proc = subprocess.Popen(
            [str(ENTRYPOINT)], env=env, cwd=tmp_path,
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,  # (its own group: teardown ends what it started)
            preexec_fn=_as_pid_one,
        )  # fmt: skip
        c = Container(proc, log, engine_port, proxy_port, engine_secret, jwt_secret)
        started.append(c)
        return c

    yield start
    for c in started:
        # The whole group, also when the entrypoint itself is gone (a test that failed may
        # leave its engine and proxy behind otherwise).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        c.proc.wait()


def test_signed_request_through_proxy_reaches_engine_on_loopback_only(
    start_container: Callable[..., Container],
) -> None:
    c = start_container()
    c.wait_ready()

    status, headers, body = _get(c.proxy + "/v1/shape?table=items&offset=-1", c.token())
    assert status == 200, body
    titles = sorted(m["value"]["title"] for m in json.loads(body) if "value" in m)
    assert titles == ["one", "three", "two"]
    assert headers["electric-handle"]

    # No token: the proxy refuses; nothing reaches the user without one.
    assert _get(c.proxy + "/v1/shape?table=items&offset=-1")[0] == 401

    # The engine listens on 127.0.0.1 only; the proxy on every interface.
    assert _listening_addresses(c.engine_port) == {"127.0.0.1"}
    assert _get(f"http://127.0.0.1:{c.engine_port}/v1/health")[0] == 200
    addr = _non_loopback_address()
    if addr is not None:
        with pytest.raises(OSError):
            socket.create_connection((addr, c.engine_port), timeout=2).close()
        assert _get(f"http://{addr}:{c.proxy_port}/healthz")[0] == 200

    # Secrets are in neither the logs nor the process list.
    children = _children(c.proc.pid)
    assert len(children) == 2
    for pid in [c.proc.pid, *children]:
        assert c.engine_secret not in _cmdline(pid)
        assert c.jwt_secret not in _cmdline(pid)
    out = c.output()
    assert c.engine_secret not in out and c.jwt_secret not in out

    # Each process holds only the secrets it needs: the engine not the token signing key nor
    # the proxy's settings, the proxy not the database URL (attack 21:51, least privilege).
    engine_pid = next(p for p in children if _cmdline(p).split()[2] == "sync_engine")
    proxy_pid = next(p for p in children if _cmdline(p).split()[2] == "proxy")
    engine_env = _environ(engine_pid)
    assert c.jwt_secret not in engine_env.values()
    assert not any(name.startswith("SHAPE_PROXY_") for name in engine_env)
    assert "DATABASE_URL" not in engine_env and "ENGINE_SECRET" not in engine_env
    assert engine_env["SYNC_ENGINE_SECRET"] == c.engine_secret
    proxy_env = _environ(proxy_pid)
    assert not any("DATABASE_URL" in name for name in proxy_env)


def test_sigterm_stops_both_processes_cleanly(start_container: Callable[..., Container]) -> None:
    c = start_container()
    c.wait_ready()
    children = _children(c.proc.pid)
    assert sorted(_cmdline(p).split()[2] for p in children) == ["proxy", "sync_engine"]

    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(30) == 0, c.output()
    assert all(_gone(p) for p in children)
    for port in (c.engine_port, c.proxy_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    out = c.output()
    assert "Traceback" not in out, out


def test_container_exits_when_the_engine_dies(start_container: Callable[..., Container]) -> None:
    c = start_container()
    c.wait_ready()
    children = _children(c.proc.pid)
    engine = next(p for p in children if " -m sync_engine" in _cmdline(p))
    proxy = next(p for p in children if " -m proxy" in _cmdline(p))
    os.kill(engine, signal.SIGKILL)
    assert c.proc.wait(30) != 0
    assert _gone(proxy)
    assert "engine exited" in c.output()


def test_missing_database_url_fails_fast_with_a_clear_message(
    start_container: Callable[..., Container],
) -> None:
    c = start_container(DATABASE_URL="")
    assert c.proc.wait(10) == 2
    assert "DATABASE_URL is not set" in c.output()


def test_dockerfile_runs_as_non_root_with_healthcheck_and_exposed_proxy_port() -> None:
    text = DOCKERFILE.read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # one line per instruction
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(ln.startswith("HEALTHCHECK ") and "/healthz" in ln for ln in lines)
    exposed = [p for ln in lines if ln.startswith("EXPOSE ") for p in ln.split()[1:]]
    assert exposed == ["8080"]  # the proxy only; the engine stays on loopback
    assert re.search(r'ENTRYPOINT \[\s*"[^"]*container-entrypoint"', text)
    assert "pip install" in text
    # The entrypoint is what the image runs; it must stay executable.
    assert os.access(ENTRYPOINT, os.X_OK)


def test_sighup_reloads_the_proxys_policy_and_keeps_both_running(
    start_container: Callable[..., Container], tmp_path: Path
) -> None:
    """`docker kill -s HUP` reaches PID 1, the entrypoint: it must ask the proxy to reload
    (as PID 1 it would otherwise ignore the signal), and must not take it for a child's end."""
    c = start_container()
    c.wait_ready()
    children = _children(c.proc.pid)
    url = c.proxy + "/v1/shape?table=items&offset=-1"
    status, _, body = _get(url, c.token())
    assert status == 200 and b'"title"' in body, body

    # A narrower policy, written in place. PROXY_CONFIG polls the file only every hour: only
    # SIGHUP can load it within the test.
    config = tmp_path / f"proxy-{c.engine_port}.yaml"
    narrowed = config.read_text().replace(
        "        all_rows: true\n", "        all_rows: true\n        columns: [id]\n", 1
    )
    assert "columns: [id]" in narrowed and "reload_interval: 3600" in narrowed
    config.write_text(narrowed)
    c.proc.send_signal(signal.SIGHUP)

    deadline = time.monotonic() + 20
    while True:
        status, _, body = _get(url, c.token())
        if status == 200 and b'"title"' not in body:
            break
        assert time.monotonic() < deadline, (status, body, c.output())
        time.sleep(0.2)
    assert sorted((m["value"] for m in json.loads(body) if "value" in m), key=str) == [
        {"id": "1"}, {"id": "2"}, {"id": "3"},
    ]  # fmt: skip
    assert c.proc.poll() is None, c.output()
    assert _children(c.proc.pid) == children
    assert "SIGHUP received" in c.output()

    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(30) == 0, c.output()


#: what `openssl rand -base64 32` gives about half the time, and what a person may type
HOSTILE_PASSWORD = "a/b+c=d@e:f%g?h#i j'k\"l"


@pytest.fixture
def password_cluster() -> Iterator[str]:
    """A Postgres that checks passwords (scripts/dev-postgres: scram on TCP), whose superuser's
    password holds every character a URL gives a meaning to. Yields its port."""
    d = Path(tempfile.mkdtemp(prefix="shapegate-test-pwpg-"))
    port = free_port()
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG_DEV_")}
        out = subprocess.run(
            [str(DEV_POSTGRES), "start", str(d), str(port)], env=base,
            check=True, capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        url = next(x.split("=", 1)[1] for x in out.splitlines() if x.startswith("DATABASE_URL="))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(HOSTILE_PASSWORD))
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL)")
            conn.execute("INSERT INTO items VALUES (1, 'uno'), (2, 'dos')")
        yield str(port)
    finally:
        subprocess.run([str(DEV_POSTGRES), "stop", str(d)], check=False, capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_compose_password_with_url_characters_reaches_the_engine_only(
    start_container: Callable[..., Container], password_cluster: str
) -> None:
    """docker-compose.yml's shapegate environment, with a POSTGRES_PASSWORD holding / @ : % ? #
    and quotes, against a Postgres that checks it: the engine logs in, the proxy serves its
    rows, and only the engine's process holds the password. Before, compose pasted the password
    into DATABASE_URL and the engine refused the URL at start for about half of the passwords
    env.example's recipe drew (newuser 2026-12-07, HIGH: the stack down)."""
    raw = (ROOT / "docker-compose.yml").read_text().replace("${POSTGRES_PASSWORD}", "$PW$")
    env = yaml.safe_load(raw)["services"]["shapegate"]["environment"]
    env = {k: str(v).replace("$PW$", HOSTILE_PASSWORD) for k, v in env.items()}
    url = env["DATABASE_URL"].replace("@postgres:5432/", f"@127.0.0.1:{password_cluster}/")
    assert HOSTILE_PASSWORD not in url
    c = start_container(DATABASE_URL=url, PGPASSWORD=env["PGPASSWORD"])
    c.wait_ready()

    status, _, body = _get(c.proxy + "/v1/shape?table=items&offset=-1", c.token())
    assert status == 200, body
    assert sorted(m["value"]["title"] for m in json.loads(body) if "value" in m) == ["dos", "uno"]

    children = _children(c.proc.pid)
    engine_pid = next(p for p in children if _cmdline(p).split()[2] == "sync_engine")
    proxy_pid = next(p for p in children if _cmdline(p).split()[2] == "proxy")
    assert _environ(engine_pid)["PGPASSWORD"] == HOSTILE_PASSWORD
    assert HOSTILE_PASSWORD not in _environ(proxy_pid).values()
    assert HOSTILE_PASSWORD not in c.output()
