"""docs/operator-quickstart.md's steps 2-4 run as written, against a real Postgres.

The page's step-1 SQL (less `ALTER SYSTEM`: the test cluster already has wal_level=logical)
makes the `shapegate` role own a `todos` table; its policy file is written out from its yaml
block; then its `sh` blocks of steps 2-4 run in one bash, in order, with only the install
line left out (the test's own virtualenv stands in for `.venv`) and the page's addresses
moved to this test's free ports and database. What an operator would check: the engine
reports itself active, `explain` allows alice by the `owner` rule, and alice's token reads
alice's todos, only the policy's four columns, and none of bob's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "operator-quickstart.md").read_text()
INSTALL = "python3 -m venv .venv && .venv/bin/pip install"


def _blocks(kind: str, section: str) -> list[str]:
    """The fenced blocks of `kind` in the section whose heading starts with `section`."""
    part = re.search(rf"^## {re.escape(section)}.*?(?=^## |\Z)", PAGE, re.M | re.S)
    assert part is not None, section
    return re.findall(rf"^```{kind}\n(.*?)^```", part.group(0), re.M | re.S)


def test_steps_two_to_four_run_as_written(db_url: str, tmp_path: Path) -> None:
    url = urlsplit(db_url)
    dbname = url.path.lstrip("/")
    (setup,) = _blocks("sql", "1.")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shapegate') "
            "THEN CREATE ROLE shapegate; END IF; END $$"
        )
        conn.execute(
            "CREATE TABLE todos (id int PRIMARY KEY, owner_id text NOT NULL, "
            "title text NOT NULL, done boolean NOT NULL DEFAULT false, secret_note text)"
        )
        conn.execute(
            "INSERT INTO todos VALUES (1, 'alice', 'a1', false, 'x'), "
            "(2, 'bob', 'b1', false, 'y'), (3, 'alice', 'a2', true, 'z')"
        )
        for statement in setup.split(";"):
            statement = re.sub(r"--.*", "", statement).strip()
            if not statement or statement.startswith("ALTER SYSTEM"):
                continue
            if statement.startswith("CREATE ROLE"):  # (the cluster is shared: made above)
                statement = statement.replace("CREATE ROLE", "ALTER ROLE", 1)
            statement = statement.replace("DATABASE app", "DATABASE {}")
            conn.execute(sql.SQL(statement).format(sql.Identifier(dbname)))

    (policy,) = _blocks("yaml", "3.")
    engine_port, proxy_port = free_port(), free_port()
    policy = policy.replace("http://127.0.0.1:3000", f"http://127.0.0.1:{engine_port}")
    policy = policy.replace("port: 8080", f"port: {proxy_port}")
    (tmp_path / "shapegate-proxy.yaml").write_text(policy)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])

    script = ["set -e"]
    for section in ("2.", "4."):
        for block in _blocks("sh", section):
            script += [line for line in block.splitlines() if not line.startswith(INSTALL)]
    text = "\n".join(script)
    text = text.replace("127.0.0.1:5432/app", f"{url.hostname}:{url.port}/{dbname}")
    text = text.replace("--port 3000", f"--port {engine_port}")
    text = text.replace("127.0.0.1:3000", f"127.0.0.1:{engine_port}")
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{proxy_port}")
    # the proxy (job 2) must not hold the database password
    text += "\necho; tr '\\0' '\\n' < /proc/$(jobs -p %2)/environ | grep -c '^PGPASSWORD=' || true"
    text += "\nkill %1 %2; wait\n"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ENGINE_", "SHAPE_", "PG"))
    }
    proc = subprocess.Popen(
        ["bash", "-c", text], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the steps did not finish:\n{out}\n{err}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    lines = out.splitlines()
    assert json.loads(lines[0])["status"] == "active", out + err
    explained = "\n".join(lines[1:-3])
    assert "owner" in explained and "allow" in explained.lower(), out + err
    assert lines[-1] == "0", "the proxy's environment holds PGPASSWORD"
    rows = [m for m in json.loads(lines[-3]) if "value" in m]
    assert sorted(m["value"]["title"] for m in rows) == ["a1", "a2"], out
    assert all(set(m["value"]) == {"id", "owner_id", "title", "done"} for m in rows), rows
    for secret_value in (env.get("PGPASSWORD"), "choose-one"):
        if secret_value:
            assert f"PGPASSWORD={secret_value}" not in err
