"""Startup of both programs as a person meets it: the real CLIs in subprocesses.

Every mistake is ONE line on stderr naming what is wrong and what to change, with a
non-zero exit and no traceback; Postgres not up yet is retried ("retrying in N s").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import psycopg
import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ENGINE = [sys.executable, "-m", "sync_engine"]
PROXY = [sys.executable, "-m", "proxy"]


def _harness() -> Any:
    from tests.sync_engine.tenants import harness

    return harness


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SYNC_ENGINE_", "SHAPE_PROXY_")) and k != "DATABASE_URL"}  # fmt: skip
    env.update(extra)
    return env


def run(
    cmd: list[str], *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], cwd=ROOT, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def one_line_failure(out: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The single stderr line of a failed start, checked for the expected words."""
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in expected:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# -- the engine ---------------------------------------------------------------------------


def test_engine_version() -> None:
    out = run(ENGINE, "--version")
    assert out.returncode == 0 and out.stdout.strip() == "sync-engine 0.1.0"


def test_engine_bad_database_url(tmp_path: Path) -> None:
    out = run(ENGINE, "--database-url", "notaurl", "--data-dir", str(tmp_path))
    line = one_line_failure(out, "--database-url", "postgresql://")
    assert line.startswith("sync-engine: ")


def test_engine_bad_port_in_environment_and_flag(tmp_path: Path) -> None:
    out = run(ENGINE, "--database-url", "postgresql://x/y", SYNC_ENGINE_PORT="abc")
    one_line_failure(out, "SYNC_ENGINE_PORT", "'abc'", "--port")
    out = run(ENGINE, "--database-url", "postgresql://x/y", "--port", "abc")
    one_line_failure(out, "--port", "'abc'")
    out = run(ENGINE, "--database-url", "postgresql://x/y", "--port", "70000")
    one_line_failure(out, "--port")
    out = run(ENGINE, "--database-url", "postgresql://x/y", SYNC_ENGINE_LONG_POLL_TIMEOUT="soon")
    one_line_failure(out, "SYNC_ENGINE_LONG_POLL_TIMEOUT")


def test_engine_busy_port(tmp_path: Path, busy_port: int, db_url: str) -> None:
    out = run(ENGINE, "--database-url", db_url, "--data-dir", str(tmp_path),
              "--port", str(busy_port))  # fmt: skip
    one_line_failure(out, str(busy_port), "in use", "--port", "SYNC_ENGINE_PORT")
    assert out.returncode == 1


def test_engine_busy_admin_port(tmp_path: Path, busy_port: int) -> None:
    out = run(ENGINE, "--data-dir", str(tmp_path), "--port", "0", "--admin-port", str(busy_port),
              SYNC_ENGINE_ADMIN_TOKEN="a-long-enough-admin-token")  # fmt: skip
    one_line_failure(out, str(busy_port), "--admin-port", "SYNC_ENGINE_ADMIN_PORT")


def test_engine_unusable_data_dir(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = run(ENGINE, "--database-url", "postgresql://x/y", "--data-dir", str(not_a_dir / "d"))
    one_line_failure(out, str(not_a_dir / "d"), "--data-dir", "SYNC_ENGINE_DATA_DIR")


def test_engine_bad_log_settings(tmp_path: Path) -> None:
    out = run(ENGINE, "--database-url", "postgresql://x/y", "--log-format", "xml")
    one_line_failure(out, "--log-format", "text, json or auto")
    out = run(ENGINE, "--database-url", "postgresql://x/y", SYNC_ENGINE_LOG_LEVEL="LOUD")
    one_line_failure(out, "SYNC_ENGINE_LOG_LEVEL")


@pytest.fixture
def role_url(db_url: str) -> Iterator[Any]:
    """make(role) -> db_url as a new LOGIN role without REPLICATION."""
    made: list[str] = []
    base = db_url.replace("postgres@", "{}@", 1)

    def make(role: str) -> str:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN")
        made.append(role)
        return base.format(role)

    yield make
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in made:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_engine_permanent_database_errors_exit_with_what_to_fix(
    tmp_path: Path, db_url: str, role_url: Any
) -> None:
    base = db_url.rsplit("/", 1)[0]
    cases = [
        (f"{base}/no_such_db_here", ["does not exist", "create it"]),
        (f"{db_url}?sslmode=bogus", ["sslmode", "--database-url"]),
        (f"{db_url}?sslmode=require", ["SSL", "--database-url"]),
        (db_url.replace("postgres@", "nosuchrole@", 1), ["nosuchrole", "--database-url"]),
        (role_url("cli_no_repl"), ["REPLICATION", "ALTER ROLE cli_no_repl WITH REPLICATION"]),
    ]
    for url, words in cases:
        out = run(ENGINE, "--database-url", url, "--data-dir", str(tmp_path), "--port", "0",
                  timeout=30)  # fmt: skip
        assert out.returncode == 1, (url, out.stderr)
        one_line_failure(out, "sync-engine: cannot use the database", *words)
        assert "retrying" not in out.stderr  # (and the run above ended within its 30 s)


@pytest.fixture(scope="module")
def cluster_harness() -> Any:
    return _harness()


def test_engine_wal_level_replica_is_permanent(tmp_path: Path, cluster_harness: Any) -> None:
    cluster = cluster_harness.Cluster("replica")
    cluster.start()
    try:
        out = run(ENGINE, "--database-url", cluster.url, "--data-dir", str(tmp_path),
                  "--port", "0", timeout=30)  # fmt: skip
        one_line_failure(out, "wal_level is replica", "wal_level = logical", "restart Postgres")
        assert out.returncode == 1
    finally:
        cluster.stop()


def test_engine_waits_for_postgres_that_is_not_up_yet(tmp_path: Path, cluster_harness: Any) -> None:
    """Connection refused is retried with "retrying in N s"; once Postgres is up, it serves."""
    cluster = cluster_harness.Cluster("logical")
    port = free_port()
    log = tmp_path / "engine.log"
    with log.open("w") as f:
        proc = subprocess.Popen([*ENGINE, "--database-url", cluster.url, "--data-dir",
                                 str(tmp_path / "data"), "--port", str(port)], cwd=ROOT,
                                env=_env(), stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "retrying in" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "retrying in 1 s" in log.read_text()
        cluster.start()
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert f"listening on http://127.0.0.1:{port}" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
        cluster.stop()
    text = log.read_text()
    assert "shutting down" in text and "stopped" in text
    assert "Traceback" not in text


def test_engine_auth_failure_is_permanent(tmp_path: Path, cluster_harness: Any) -> None:
    cluster = cluster_harness.Cluster("logical")
    hba = cluster.dir / "data" / "pg_hba.conf"
    hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    cluster.start()
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'right-password'")
        url = cluster.url.replace("postgres@", "pwuser:wrong-password@")
        out = run(ENGINE, "--database-url", url, "--data-dir", str(tmp_path), "--port", "0",
                  timeout=30)  # fmt: skip
        line = one_line_failure(out, "refused the login", "password")
        assert "wrong-password" not in line
        assert out.returncode == 1
    finally:
        cluster.stop()


# -- the proxy ----------------------------------------------------------------------------

PROXY_CONFIG = """
server: {{host: 127.0.0.1, port: {port}}}
upstream: {{url: "http://127.0.0.1:9"}}
issuers:
  - issuer: cli-test
    audience: shapegate
    algorithms: [HS256]
    keys: [{{secret_env: CLI_TEST_JWT_SECRET}}]
tables:
  todos:
    allow:
      - where: "owner_id = {{{{sub}}}}"
"""
JWT_SECRET = "cli-test-secret-" + "x" * 32


def _proxy_config(tmp_path: Path, port: int = 0) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(PROXY_CONFIG.format(port=port))
    return path


def test_proxy_version() -> None:
    out = run(PROXY, "--version")
    assert out.returncode == 0 and out.stdout.strip() == "shape-proxy 0.1.0"


def test_proxy_config_mistakes(tmp_path: Path) -> None:
    one_line_failure(run(PROXY), "--config", "SHAPE_PROXY_CONFIG")
    one_line_failure(run(PROXY, "--config", str(tmp_path / "missing.yaml")), "cannot read")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [\n")
    one_line_failure(run(PROXY, "--config", str(bad)), "invalid YAML", "line")
    bad.write_text("tables: {}\nupstream: {url: 'http://x'}\nissuers: []\ncolums: 1\n")
    one_line_failure(run(PROXY, "--config", str(bad)), "colums")
    config = _proxy_config(tmp_path)
    one_line_failure(run(PROXY, "--config", str(config)), "CLI_TEST_JWT_SECRET", "not set")


class _SecretEnv(TypedDict):
    """(`run`'s `**env`: no key that could be its `timeout`)"""

    CLI_TEST_JWT_SECRET: str


def test_proxy_bad_port(tmp_path: Path, busy_port: int) -> None:
    config = str(_proxy_config(tmp_path))
    env: _SecretEnv = {"CLI_TEST_JWT_SECRET": JWT_SECRET}
    one_line_failure(run(PROXY, "--config", config, SHAPE_PROXY_PORT="abc", **env),
                     "SHAPE_PROXY_PORT", "'abc'")  # fmt: skip
    one_line_failure(run(PROXY, "--config", config, "--port", "x", **env), "--port")
    out = run(PROXY, "--config", config, "--port", str(busy_port), **env)
    one_line_failure(out, str(busy_port), "in use", "--port", "SHAPE_PROXY_PORT", "server.port")
    config = str(_proxy_config(tmp_path, busy_port))
    one_line_failure(run(PROXY, "--config", config, **env), str(busy_port), "in use")


def test_engine_unreadable_source_registry(tmp_path: Path) -> None:
    (tmp_path / "sources.db").write_text("not a database")
    out = run(ENGINE, "--data-dir", str(tmp_path), "--port", "0", "--admin-port", "0",
              SYNC_ENGINE_ADMIN_TOKEN="a-long-enough-admin-token")  # fmt: skip
    one_line_failure(out, "sources.db", "not a database", "backup")
    assert out.returncode == 1


def test_engine_unknown_host(tmp_path: Path) -> None:
    out = run(ENGINE, "--database-url", "postgresql://x/y", "--data-dir", str(tmp_path),
              "--host", "no-such-host.invalid")  # fmt: skip
    one_line_failure(out, "no-such-host.invalid", "--host")


def _soft_open_files_after_start(
    cmd: list[str], port: int, health: str, message: str, **env: str
) -> None:
    """Start `cmd` under a soft open-files limit of 256; once `health` answers on `port`,
    its soft limit must be the hard one, and its log must say so in `message`."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard}: nothing to lift")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(**env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, preexec_fn=low_soft_limit,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # (answering, if not healthy: started)
            except OSError:
                time.sleep(0.1)
        limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
        [line] = [x for x in limits if x.startswith("Max open files")]
        expected = str(hard) if hard != resource.RLIM_INFINITY else "unlimited"
        assert line.split()[3] == expected, line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"{message} {expected}".encode() in err, err[-500:]


def test_both_programs_lift_their_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Started under a low soft limit (systemd's 1,024), either program would refuse
    clients past it with EMFILE while the hard limit goes unused: both lift it at start."""
    port = free_port()
    config = str(_proxy_config(tmp_path, port))
    _soft_open_files_after_start([*PROXY, "--config", config], port, "/healthz",
                                 "open files limit", CLI_TEST_JWT_SECRET=JWT_SECRET)  # fmt: skip
    port = free_port()
    engine = [*ENGINE, "--data-dir", str(tmp_path / "engine"), "--port", str(port),
              "--admin-port", "0"]  # fmt: skip
    _soft_open_files_after_start(engine, port, "/v1/health", "open files limit",
                                 SYNC_ENGINE_ADMIN_TOKEN="a-long-enough-admin-token")  # fmt: skip
