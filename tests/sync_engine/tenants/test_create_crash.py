"""The engine killed (SIGKILL) while answering a creation: after saving the new source and
before its 201 was written, or after the 201 was written and before that was recorded.

Either way the source is recorded as not delivered (`secret_delivered: false`) and a client
may or may not hold its secret. Retrying the same creation answers 201 with the same source
and the same secret: a client that got the first 201 keeps a working secret (it was given a
new one, and the 201 the client held stopped working). Once the answer was recorded as sent,
a retry is a 409 that names the source and says how to get a new secret (rotate-secret).
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
    engines: Callable[..., AdminEngine],
    tmp_path: Path,
    body: dict[str, Any],
    point: str = "create",
) -> object:
    """POST the creation to an engine told to stop at `point` ("create": just before its
    answer; "create-sent": just after it, before recording it); SIGKILL it there. The
    answer the client got, or the OSError it got instead."""
    held = tmp_path / "held"
    engine = engines({"SHAPEGATE_TEST_HOLD_ADMIN": f"{point}:{held}"})
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
    assert len(outcome) == 1, outcome
    return outcome[0]


def test_a_client_that_got_its_201_keeps_its_secret_when_the_engine_dies_right_after(
    make_db: Callable[[], str], engines: Callable[..., AdminEngine], tmp_path: Path
) -> None:
    """Killed after the 201 was written, before it was recorded as sent: the same creation
    sent again (a script's retry, a second click) is answered with the same source and
    secret. It used to be given a new secret, and the one the first client held stopped
    working."""
    url = make_db().replace("postgres@", "postgres:pw-hidden@")
    make_items(url.replace("postgres:pw-hidden@", "postgres@"), ["a"])
    body = {"name": "shop", "database_url": url, "max_shapes": 50}
    got = _killed_while_creating(engines, tmp_path, body, "create-sent")
    assert isinstance(got, tuple) and got[0] == 201, got  # the client has its answer
    sid, secret = got[1]["source_id"], got[1]["secret"]

    engine = engines()
    status, listing = engine.api("GET", "/api/sources")
    assert [(s["source_id"], s["secret_delivered"]) for s in listing["sources"]] == [(sid, False)]
    assert "secret" not in json.dumps(listing).replace("secret_", "")

    # the same request with other settings is not a retry: 409, naming the source
    status, got409 = engine.api("POST", "/api/sources", {**body, "max_shapes": 51})
    assert status == 409 and got409["source_id"] == sid, got409
    assert "same database_url and limits" in got409["message"]
    assert secret not in json.dumps(got409)

    # the retry: the same source and the same secret (was: a new one, the first 401)
    status, again = engine.api("POST", "/api/sources", body)
    assert status == 201 and again["source_id"] == sid, again
    assert again["secret"] == secret
    assert "pw-hidden" not in json.dumps(again)
    assert wait_until(lambda: engine.shape_status(sid, secret) == 200, timeout=60,
                      interval=0.2, message="the first client's secret syncs")  # fmt: skip
    status, listing = engine.api("GET", "/api/sources")
    assert [(s["source_id"], s["secret_delivered"]) for s in listing["sources"]] == [(sid, True)]

    # delivered now: the same request again is a 409 saying how to get a new secret
    status, got409 = engine.api("POST", "/api/sources", body)
    assert status == 409 and got409["error"] == "duplicate_name", got409
    assert f"/api/sources/{sid}/rotate-secret" in got409["message"]
    assert engine.shape_status(sid, secret) == 200  # and it took nothing away
    engine.stop()
    assert secret not in engine.log.read_text()  # no secret in the log


def test_a_source_whose_secret_was_rotated_is_not_taken_over_by_a_retry(
    make_db: Callable[[], str], engines: Callable[..., AdminEngine], tmp_path: Path
) -> None:
    """An operator who instead rotated the lost source's secret holds that one: a late
    retry of the creation must not replace it."""
    url = make_db()
    make_items(url, ["a"])
    body = {"name": "shop", "database_url": url}
    assert isinstance(_killed_while_creating(engines, tmp_path, body), OSError)
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
