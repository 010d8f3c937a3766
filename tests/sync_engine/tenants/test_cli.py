"""`sync-engine sources ...` against a real engine process and its admin API."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from sync_engine.tenants.cli import main as cli_main
from tests.support.ports import free_port
from tests.support.waiting import WaitTimeout, wait_until

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "cli-test-admin-token-0123456789"


@pytest.fixture
def admin_url(tmp_path: Path) -> Iterator[str]:
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "SYNC_ENGINE_ADMIN_TOKEN": TOKEN}
    env.pop("DATABASE_URL", None)
    log = open(tmp_path / "engine.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_engine", "--port", str(port), "--admin-port",
         str(admin_port), "--data-dir", str(tmp_path / "data"), "--no-fsync"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{admin_port}"

    def admin_up() -> bool:
        try:
            urllib.request.urlopen(url + "/", timeout=2).close()
            return True
        except OSError:
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()
            return False

    try:
        try:
            wait_until(admin_up, timeout=60, interval=0.1, message="the admin API")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}:\n{(tmp_path / 'engine.log').read_text()}") from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()
        assert "pw-hidden" not in (tmp_path / "engine.log").read_text()


def cli_process(admin_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sync_engine sources ...` as a process."""
    env = {**os.environ, "SYNC_ENGINE_ADMIN_URL": admin_url, "SYNC_ENGINE_ADMIN_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "sync_engine", "sources", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def cli(admin_url: str, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    """The same command run in this process (`cli.main`, its environment, no terminal): a
    process each was ~20 Python starts for this file (the first command runs as one)."""
    env = {"SYNC_ENGINE_ADMIN_URL": admin_url, "SYNC_ENGINE_ADMIN_TOKEN": token}
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env),
        mock.patch.object(sys, "stdin", io.StringIO()),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli_main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_cli_manages_sources(make_db: Callable[[], str], admin_url: str) -> None:
    # make_db first: its databases are dropped after the engine stopped (a running engine
    # makes its slot again when it is dropped under it, and a slot blocks DROP DATABASE).
    url = make_db().replace("postgres@", "postgres:pw-hidden@")
    out = cli_process(admin_url, "add", "--name", "cli-a", "--database-url", url, "--json")
    assert out.returncode == 0, out.stderr
    a = json.loads(out.stdout)
    assert a["secret"] and a["source_id"] and "pw-hidden" not in out.stdout

    out = cli(admin_url, "add", "--name", "cli-b", "--database-url", url)
    assert out.returncode == 0, out.stderr
    assert "Registered source 'cli-b'" in out.stdout and "shown only once" in out.stdout
    assert "curl -i" in out.stdout and "pw-hidden" not in out.stdout

    def listing_when_active() -> dict[str, Any]:
        listing: dict[str, Any] = json.loads(cli(admin_url, "list", "--json").stdout)
        return listing if all(s["state"] == "active" for s in listing["sources"]) else {}

    listing = wait_until(
        listing_when_active, timeout=60, interval=0.2, message="both sources active"
    )
    assert [s["name"] for s in listing["sources"]] == ["cli-a", "cli-b"]
    assert all(s["state"] == "active" for s in listing["sources"])
    table = cli(admin_url, "list").stdout.splitlines()
    assert table[0].split() == ["SOURCE_ID", "NAME", "STATE", "SHAPES", "LAG", "ERROR"]
    assert any(a["source_id"] in line and "active" in line for line in table[1:])

    out = cli(admin_url, "show", a["source_id"])
    assert out.returncode == 0 and "state" in out.stdout and a["source_id"] in out.stdout
    assert "pw-hidden" not in out.stdout and ":****@" in out.stdout

    out = cli(admin_url, "rotate-secret", a["source_id"], "--grace-period", "60")
    assert out.returncode == 0 and "old secret works until" in out.stdout
    out = cli(admin_url, "rotate-secret", a["source_id"], "--json")
    assert json.loads(out.stdout)["previous_secret_expires_at"] is None

    assert "paused" in cli(admin_url, "pause", a["source_id"]).stdout
    assert cli(admin_url, "resume", a["source_id"]).returncode == 0

    out = cli(admin_url, "delete", a["source_id"])  # not a terminal: refuses without --yes
    assert out.returncode == 1 and "--yes" in out.stderr and "slot" in out.stderr
    out = cli(admin_url, "delete", a["source_id"], "--yes")
    assert out.returncode == 0 and "Deleted source 'cli-a'" in out.stdout
    assert [s["name"] for s in json.loads(cli(admin_url, "list", "--json").stdout)["sources"]] == [
        "cli-b"
    ]

    # mistakes: a message on stderr and exit status 1
    for args, want in [
        (("show", a["source_id"]), "404"),
        (("add", "--name", "cli-b", "--database-url", url), "409"),
        (("add", "--name", "c", "--database-url", "nonsense"), "400: database_url"),
    ]:
        out = cli(admin_url, *args)
        assert out.returncode == 1 and want in out.stderr, (args, out.stderr)
    out = cli(admin_url, "list", token="wrong-wrong-wrong-wrong")
    assert out.returncode == 1 and "401" in out.stderr
    out = cli("http://127.0.0.1:1", "list")
    assert out.returncode == 1 and "cannot reach the admin API" in out.stderr


def test_the_password_comes_from_stdin_or_the_environment_never_argv(
    make_db: Callable[[], str], admin_url: str
) -> None:
    """`--database-url` carried the password on the command line only, where `ps` and the
    shell's history show it: `--password-stdin` and `SYNC_ENGINE_SOURCE_PASSWORD` add it."""
    url = make_db()  # (no password: the test cluster trusts TCP)
    env = {**os.environ, "SYNC_ENGINE_ADMIN_URL": admin_url, "SYNC_ENGINE_ADMIN_TOKEN": TOKEN}
    out = subprocess.run(
        [sys.executable, "-m", "sync_engine", "sources", "add", "--name", "stdin-pw",
         "--database-url", url, "--password-stdin", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, input="pw-hidden/@ 'x\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "pw-hidden" not in out.stdout + out.stderr
    source_id = json.loads(out.stdout)["source_id"]
    shown = cli(admin_url, "show", source_id, "--json").stdout
    assert "pw-hidden" not in shown and ":****@" in shown  # (it has one, kept secret)
    with mock.patch.dict(os.environ, {"SYNC_ENGINE_SOURCE_PASSWORD": "pw-hidden2"}):
        out = cli(admin_url, "add", "--name", "env-pw", "--database-url", url, "--json")
    assert out.returncode == 0, out.stderr
    shown = cli(admin_url, "show", json.loads(out.stdout)["source_id"], "--json").stdout
    assert "pw-hidden" not in out.stdout + shown and ":****@" in shown
    # given twice: refused, the password not repeated
    with mock.patch.dict(os.environ, {"SYNC_ENGINE_SOURCE_PASSWORD": "pw-hidden3"}):
        out = cli(admin_url, "add", "--name", "x", "--database-url", url.replace("@", ":a@"))
    assert out.returncode == 1 and "one way only" in out.stderr and "pw-hidden" not in out.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@db.example:5432/app?sslmode=require",
        "postgres://db.example/app",
        "host=db.example user=u dbname=app",
    ],
)
def test_a_password_is_added_to_either_form_exactly(url: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from sync_engine.tenants.cli import with_password

    for password in ("plain", "p@ss/w:rd?#%", "it's a \\ space"):
        got = conninfo_to_dict(with_password(url, password))
        assert got["password"] == password
        assert {k: v for k, v in got.items() if k != "password"} == conninfo_to_dict(url)
