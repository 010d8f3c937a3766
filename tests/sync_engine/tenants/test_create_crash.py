"""The engine killed (SIGKILL) after saving a new source and before answering its 201.

The source then exists and nobody has its secret. Retrying the same creation gives that
source (same id) a new secret; the first answer's secret, which nobody holds, stops working.
Once an answer with a secret was sent, a retry is a 409 that names the source and says how
to get a new secret (rotate-secret), as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_until
from tests.sync_engine.tenants.harness import PROCESS_TOKEN, ROOT, AdminEngine, make_items


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Callable[..., AdminEngine]]:
    made: list[AdminEngine] = []

    def make(env: dict[str, str] | None = None) -> AdminEngine:
        engine = AdminEngine(tmp_path / "data", tmp_path / "engine.log", env=env)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop()
    log = (tmp_path / "engine.log").read_text()
    assert "pw-hidden" not in log


def _killed_while_creating(
    engines: Callable[..., AdminEngine], tmp_path: Path, body: dict[str, Any]
) -> None:
    """POST the creation to an engine told to stop just before its answer; SIGKILL it there."""
    held = tmp_path / "held"
    engine = engines({"SHAPEGATE_TEST_HOLD_ADMIN": f"create:{held}"})
    outcome: list[object] = []

    def post() -> None:
        try:
            outcome.append(engine.api("POST", "/api/sources", body))
        except OSError as exc:
            outcome.append(exc)

    poster = threading.Thread(target=post)
    poster.start()
    wait_until(held.exists, timeout=30, message="the engine saved the source, not answered")
    engine.kill()
    poster.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome  # no answer


def test_a_creation_whose_answer_was_lost_is_retried(
    make_db: Callable[[], str], engines: Callable[..., AdminEngine], tmp_path: Path
) -> None:
    url = make_db().replace("postgres@", "postgres:pw-hidden@")
    make_items(url.replace("postgres:pw-hidden@", "postgres@"), ["a"])
    body = {"name": "shop", "database_url": url, "max_shapes": 50}
    _killed_while_creating(engines, tmp_path, body)

    engine = engines()
    status, listing = engine.api("GET", "/api/sources")
    assert status == 200 and [s["name"] for s in listing["sources"]] == ["shop"]
    lost = listing["sources"][0]
    assert lost["secret_delivered"] is False

    # the same request with other settings is not a retry: 409, naming the source
    status, got = engine.api("POST", "/api/sources", {**body, "max_shapes": 51})
    assert status == 409 and got["source_id"] == lost["source_id"], got
    assert "same database_url and limits" in got["message"]

    # the retry: the same source, a secret that works (was: 409 duplicate_name, no secret)
    status, again = engine.api("POST", "/api/sources", body)
    assert status == 201, again
    assert again["source_id"] == lost["source_id"] and again["secret"]
    assert "pw-hidden" not in json.dumps(again)
    sid, secret = again["source_id"], again["secret"]
    assert wait_until(lambda: engine.shape_status(sid, secret) == 200, timeout=60,
                      interval=0.2, message="the new secret syncs")  # fmt: skip
    status, listing = engine.api("GET", "/api/sources")
    assert [(s["source_id"], s["secret_delivered"]) for s in listing["sources"]] == [(sid, True)]

    # delivered now: the same request again is a 409 saying how to get a new secret
    status, got = engine.api("POST", "/api/sources", body)
    assert status == 409 and got["error"] == "duplicate_name" and got["source_id"] == sid, got
    assert f"/api/sources/{sid}/rotate-secret" in got["message"]
    assert engine.shape_status(sid, secret) == 200  # and it took nothing away
    status, rotated = engine.api("POST", f"/api/sources/{sid}/rotate-secret", {})
    assert status == 200
    assert engine.shape_status(sid, secret) == 401
    assert engine.shape_status(sid, rotated["secret"]) == 200


def test_a_source_whose_secret_was_rotated_is_not_taken_over_by_a_retry(
    make_db: Callable[[], str], engines: Callable[..., AdminEngine], tmp_path: Path
) -> None:
    """An operator who instead rotated the lost source's secret holds that one: a late
    retry of the creation must not replace it."""
    url = make_db()
    make_items(url, ["a"])
    body = {"name": "shop", "database_url": url}
    _killed_while_creating(engines, tmp_path, body)
    engine = engines()
    sid = engine.api("GET", "/api/sources")[1]["sources"][0]["source_id"]
    status, rotated = engine.api("POST", f"/api/sources/{sid}/rotate-secret", {})
    assert status == 200
    status, got = engine.api("POST", "/api/sources", body)
    assert status == 409 and got["source_id"] == sid, got
    assert wait_until(lambda: engine.shape_status(sid, rotated["secret"]) == 200, timeout=60,
                      interval=0.2, message="the rotated secret syncs")  # fmt: skip


def test_the_cli_says_to_run_the_same_command_again_and_that_works(
    make_db: Callable[[], str], engines: Callable[..., AdminEngine], tmp_path: Path
) -> None:
    """`sync-engine sources add`, the engine killed before its answer: the CLI says the source
    may exist and to run the same command again; once the engine is back, that gives the
    source a secret that works."""
    url = make_db()
    make_items(url, ["a"])
    held = tmp_path / "held"
    engine = engines({"SHAPEGATE_TEST_HOLD_ADMIN": f"create:{held}"})
    args = ("add", "--name", "shop", "--database-url", url, "--json")
    env = {**os.environ, "SYNC_ENGINE_ADMIN_TOKEN": PROCESS_TOKEN,
           "SYNC_ENGINE_ADMIN_URL": f"http://127.0.0.1:{engine.admin_port}"}  # fmt: skip
    command = [sys.executable, "-m", "sync_engine", "sources", *args]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until(held.exists, timeout=30, message="the engine saved the source, not answered")
        engine.kill()
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1 and "run the same command again" in err, err

    engine = engines()
    env["SYNC_ENGINE_ADMIN_URL"] = f"http://127.0.0.1:{engine.admin_port}"
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert again.returncode == 0, again.stderr
    made = json.loads(again.stdout)
    assert wait_until(lambda: engine.shape_status(made["source_id"], made["secret"]) == 200,
                      timeout=60, interval=0.2, message="the secret syncs")  # fmt: skip
