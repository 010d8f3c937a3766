"""The secret recipe `config/compose/env.example` gives makes a `.env` compose can start with.

It said `openssl rand -base64 32`; compose pastes `POSTGRES_PASSWORD` into the engine's
`DATABASE_URL` as is (`postgresql://postgres:${POSTGRES_PASSWORD}@postgres:5432/postgres`),
and a base64 value holds a `/` in about half the draws (502 of 1,000, newuser probe
2026-12-07): the engine refused that URL at start (exit 2, the stack down). Real path: the
command the file recommends, run as an operator would, its values put into the
`DATABASE_URL` line of `docker-compose.yml`, and the engine's own start-up check
(`check_database_url`) and libpq's reading (psycopg's `conninfo_to_dict`) of the result: the
password comes back whole. Fails on a980cd23 (base64: a `/` within a few draws).

Since the lead's compose fix (w-lead 7479270e) the password no longer goes into the URL at
all: compose gives it to the engine as `PGPASSWORD` beside a password-less `DATABASE_URL`
(tests/container runs that for real with a password holding every URL character). The recipe
is still checked: its secrets are long enough, and compose hands each one over whole.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from sync_engine.tenants.dburl import check_database_url

ROOT = Path(__file__).resolve().parents[2]
DRAWS = 64


def _recommended_command() -> list[str]:
    text = (ROOT / "config" / "compose" / "env.example").read_text()
    found = re.search(r"`(openssl rand [^`]+)`", text)
    assert found is not None, "env.example names no `openssl rand ...` command"
    return shlex.split(found.group(1))


def _shapegate_environment() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {k: str(v) for k, v in compose["services"]["shapegate"]["environment"].items()}


def test_the_recommended_secret_makes_a_database_url_the_engine_reads() -> None:
    command = _recommended_command()
    env = _shapegate_environment()
    assert "${POSTGRES_PASSWORD}" not in env["DATABASE_URL"], "the password is back in the URL"
    assert env["PGPASSWORD"] == "${POSTGRES_PASSWORD}", env
    check_database_url(env["DATABASE_URL"])  # (raises InvalidInput: the engine's exit 2)
    assert "password" not in conninfo_to_dict(env["DATABASE_URL"])
    for _ in range(DRAWS):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.fail(f"{command[0]} is not installed: the recipe must name a common tool")
        assert done.returncode == 0, done.stderr
        secret = done.stdout.strip()
        assert len(secret.encode()) >= 32, secret  # (at least 32 bytes, as the file says)
        # compose substitutes the whole value; libpq reads PGPASSWORD as it is
        assert env["PGPASSWORD"].replace("${POSTGRES_PASSWORD}", secret) == secret
