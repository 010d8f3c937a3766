"""The engine's data directory is private to the engine's user: its shape logs hold every
synced row of every user (the proxy narrows what each client gets; the files hold all of it),
so no file or directory under `--data-dir` may be readable by other local users.

They were: under the usual umask 022 the engine made its directories 0755 and its files 0644
(shape packs, chunk files, confirmable-lsn, engine.lock); only sources.db was 0600. Any other
account on the host could `cat` the pack files and read every row, bypassing the proxy's
policy (found by the attack probe, round 7: `make run`, then grep of a todo's title in
.data/engine). Postgres, for the same reason, refuses a data directory that is not 0700/0750.

Real path: the engine's CLI as a subprocess, started under umask 022, one shape synced.
"""

from __future__ import annotations

import json
import os
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.engine_process import EngineProcess

MARKER = "attack-r7-private-row"


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[EngineProcess]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes VALUES (1, %s)", (MARKER,))
    proc = EngineProcess(db_url, tmp_path / "data")
    old = os.umask(0o022)  # what a shell, systemd or `make run` usually gives
    try:
        proc.start()
    finally:
        os.umask(old)
    try:
        yield proc
    finally:
        proc.stop()


def _sync(url: str) -> None:
    with urllib.request.urlopen(url + "/v1/shape?table=notes&offset=-1", timeout=30) as resp:
        body = json.loads(resp.read())
    assert any(m.get("value", {}).get("body") == MARKER for m in body), body


def test_no_file_under_the_data_dir_is_readable_by_others(engine: EngineProcess) -> None:
    _sync(engine.url)
    holding = [
        p for p in engine.data_dir.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()
    ]
    assert holding, "the synced row is in no file under the data dir: the test proves nothing"
    loose = []
    for path in [engine.data_dir, *engine.data_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o007:
            loose.append(f"{oct(mode)} {path.relative_to(engine.data_dir.parent)}")
    assert not loose, "readable by other users:\n" + "\n".join(loose)


def test_a_data_dir_made_open_before_is_closed_at_start(db_url: str, tmp_path: Path) -> None:
    """A data directory an operator (or an older engine under umask 022) made 0755, with
    0644 files in it: the engine closes the directory to other users as it starts, and
    says so, instead of serving every row to any local account."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "left-by-an-older-engine").write_bytes(b"rows")
    proc = EngineProcess(db_url, data)
    proc.start()
    try:
        mode = stat.S_IMODE(data.stat().st_mode)
        assert mode & 0o077 == 0, oct(mode)
        assert "open to other users (mode 755): now 700" in proc.log_tail(20_000)
    finally:
        proc.stop()
