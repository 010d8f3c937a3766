"""Malformed connection strings hold secrets: none of it reaches an answer, the CLI or the log.

A database URL is registered through the admin API, `sync-engine sources add` and
`--database-url`; libpq's parse errors quote the part they could not read (a password, the
whole string), and a `/` in a URL's user name or password ends its host, so the secret's
tail becomes the database name. Each case's secret part is a marker looked for in every
answer, the CLI's output and the engine's whole log at DEBUG.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.sync_engine.tenants.harness import PROCESS_TOKEN, ROOT, AdminEngine

#: (connection string with a marker where its secret is, refused on registration?)
CASES: list[tuple[str, bool]] = [
    # a / in the password (digits, or nothing, before it: urlsplit reads a port), or in the
    # user name: host `localhost`, database `<secret>@127.0.0.1/d` (were accepted and shown)
    ("postgresql://localhost:2024/Tail0Hidden@127.0.0.1:1/d", True),
    ("postgresql://localhost:/Tail1Hidden@127.0.0.1:1/d", True),
    ("postgresql://localhost/Tail2Hidden:pw@127.0.0.1:1/d", True),
    # libpq parse errors that quote the secret
    ("host=127.0.0.1 port=1 user=u password=Tail3Hidden x", True),
    ("host=127.0.0.1 port=1 user=u password=a Tail4Hidden=x", True),
    ("postgresql://u:Tail5Hidden%zz@127.0.0.1:1/d", True),
    ("postgresql://u@127.0.0.1:1/d?password=Tail6Hidden%", True),
    ("postgresql://u:Tail7Hidden x@127.0.0.1:1/d", True),
    ("host=127.0.0.1 port=1 password='Tail8Hidden", True),
    ("postgresql://u@127.0.0.1:1/d?Tail9Hidden", True),
    ("Tail10Hidden", True),
    # well-formed, with secrets libpq and urlsplit read differently, or quoted
    ("postgresql://u:1?Tail11Hidden@127.0.0.1:1/d", False),
    ("postgresql://u:12#Tail12Hidden@127.0.0.1:1/d", False),
    ("host=127.0.0.1 port=1 user=u password='Tail13Hidden it\\'s'", False),
    ("postgresql://u:pw@127.0.0.1:1/d?sslpassword=Tail14Hidden&sslmode=require", False),
]


def _markers(text: str) -> list[str]:
    found = [f"Tail{i}Hidden" for i in range(len(CASES)) if f"Tail{i}Hidden" in text]
    return found + (["admin token"] if PROCESS_TOKEN in text else [])


def test_malformed_database_urls_leak_no_secret(tmp_path: Path) -> None:
    engine = AdminEngine(tmp_path / "data", tmp_path / "engine.log", "--log-level", "debug",
                         "--log-format", "text")  # fmt: skip
    seen: list[tuple[str, Any]] = []
    wrong: list[tuple[int, int, Any]] = []
    try:
        for i, (url, refused) in enumerate(CASES):
            status, body = engine.api(
                "POST", "/api/sources", {"name": f"s{i}", "database_url": url}
            )
            seen.append((f"POST {i}", body))
            want = 400 if refused else 201
            if status != want or (refused and body["field"] != "database_url"):
                wrong.append((i, status, body))
        status, body = engine.api("GET", "/api/sources")
        assert status == 200
        seen.append(("list", body))
        env = {**os.environ, "SYNC_ENGINE_ADMIN_URL": f"http://127.0.0.1:{engine.admin_port}",
               "SYNC_ENGINE_ADMIN_TOKEN": PROCESS_TOKEN}  # fmt: skip
        for i in (0, 3, 5):
            cli = subprocess.run(
                [sys.executable, "-m", "sync_engine", "sources", "add", "--name", f"c{i}",
                 "--database-url", CASES[i][0]],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert cli.returncode != 0, cli
            seen.append((f"cli add {i}", cli.stdout + cli.stderr))
    finally:
        engine.stop()
    seen.append(("engine log", engine.log.read_text()))
    leaks = [(where, _markers(str(text))) for where, text in seen if _markers(str(text))]
    assert not leaks, leaks
    assert not wrong, wrong


def test_malformed_database_url_flag_leaks_no_secret(tmp_path: Path) -> None:
    """`--database-url` (and its variable) refuses them at start, quoting nothing: the first
    case was accepted, and the engine logged the password's tail as the database name."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    procs = []
    for i in (0, 2, 3, 5, 9):
        args = [sys.executable, "-m", "sync_engine", "--database-url", CASES[i][0], "--port",
                str(free_port()), "--data-dir", str(tmp_path / f"d{i}"), "--log-level", "debug"]  # fmt: skip
        procs.append((i, subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)))  # fmt: skip
    outputs = []
    for i, proc in procs:
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # (it started: the old code's answer to case 0)
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
        text = out.decode("utf-8", "replace")
        outputs.append((i, proc.returncode, text))
    leaks = [(i, _markers(text), text[-400:]) for i, _, text in outputs if _markers(text)]
    assert not leaks, leaks
    for i, code, text in outputs:
        assert code == 2 and "--database-url" in text, (i, code, text[-400:])
