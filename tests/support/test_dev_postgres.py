"""scripts/dev-postgres (make run's Postgres, the Node tests' clusters, benchmarks): every local
user reaches 127.0.0.1, so a TCP login there needs the superuser's password.

With `initdb -A trust` any local account (e.g. `nobody`) logged in as superuser `postgres`
with no password: all the data, and `COPY ... TO PROGRAM`, shell commands as the server's OS
user (attack round 7). Real clusters, logins by the real psql with an empty environment (no
PGPASSWORD, no pgpass file), so only what is asked for is sent.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEV_POSTGRES = ROOT / "scripts" / "dev-postgres"


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    # in the temp dir itself: as root the server runs as `postgres`, which must reach it
    d = Path(tempfile.mkdtemp(prefix="shapegate-test-devpg-"))
    try:
        yield d
    finally:
        subprocess.run([str(DEV_POSTGRES), "stop", str(d)], check=False, capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def _start(d: Path, port: int, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG_DEV_")}
    out = subprocess.run(
        [str(DEV_POSTGRES), "start", str(d), str(port)], env={**base, **env},
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    return next(x.split("=", 1)[1] for x in out.splitlines() if x.startswith("DATABASE_URL="))


def _login(port: int, password: str | None = None, host: str = "127.0.0.1") -> tuple[bool, str]:
    """Log in as `postgres` (with `password` if given): (logged in as a superuser, stderr)."""
    env = {"PATH": os.environ["PATH"], "PGPASSFILE": "/nonexistent", "PGCONNECT_TIMEOUT": "10"}
    if password is not None:
        env["PGPASSWORD"] = password
    done = subprocess.run(
        ["psql", "-X", "-w", "-At", "-h", host, "-p", str(port), "-U", "postgres", "-d",
         "postgres", "-c", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.returncode == 0 and done.stdout.strip() == "t", done.stderr


def test_tcp_login_needs_the_password_kept_private(cluster_dir: Path) -> None:
    port = free_port()
    url = _start(cluster_dir, port)
    ok, err = _login(port)
    assert not ok and "no password supplied" in err, "a TCP login without a password got in"
    password = urlsplit(url).password
    assert password and len(password) >= 32
    ok, err = _login(port, password[:-1] + ("0" if password[-1] != "0" else "1"))
    assert not ok and "password authentication failed" in err, err
    assert _login(port, password)[0]
    # the unix socket, in a directory only the server's user (and root) can enter, is trusted
    assert stat.S_IMODE(cluster_dir.stat().st_mode) == 0o700
    assert _login(port, host=str(cluster_dir))[0]
    for name in ("password", "url"):
        assert stat.S_IMODE((cluster_dir / name).stat().st_mode) == 0o600
    assert (cluster_dir / "password").read_text().strip() == password
    assert (cluster_dir / "url").read_text().strip() == url
    # the same password after a restart
    subprocess.run([str(DEV_POSTGRES), "stop", str(cluster_dir)], check=True, capture_output=True)
    assert _start(cluster_dir, port) == url
    assert not _login(port)[0] and _login(port, password)[0]


def test_a_trusting_cluster_is_closed_at_its_next_start(cluster_dir: Path) -> None:
    """A cluster made before (trust on TCP, no password kept) asks for one from its next start,
    also while it runs (make run reuses a Postgres left running); `PG_DEV_PASSWORD` (make run's,
    from .data/demo.env) is set on a cluster that has another."""
    port = free_port()
    assert _start(cluster_dir, port, PG_DEV_AUTH="trust") == (
        f"postgresql://postgres@127.0.0.1:{port}/postgres"
    )
    assert _login(port)[0], "PG_DEV_AUTH=trust (the pytest cluster's) lets anyone in"
    (cluster_dir / "password").unlink()  # as the clusters made before there was one
    url = _start(cluster_dir, port)  # still running: pg_hba.conf reloaded
    password = urlsplit(url).password
    assert password
    assert not _login(port)[0]
    assert _login(port, password)[0]
    _start(cluster_dir, port, PG_DEV_PASSWORD="kept-in-demo-env-0123456789abcdef")
    assert not _login(port, password)[0]
    assert _login(port, "kept-in-demo-env-0123456789abcdef")[0]
