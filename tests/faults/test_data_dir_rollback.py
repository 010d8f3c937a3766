"""An engine started on a data dir older than what it confirmed to its slot retires its
shapes: no client keeps a shape without the changes in between.

Postgres never sends again what a slot confirmed. A data dir restored from a backup (or a VM
snapshot, or writes lost under `--no-fsync`) lacked the changes processed after it was
taken, and the engine served its old shapes (same handle) without them, to every client and
every new one, for good. The engine now saves the position it may confirm in its data dir
before confirming it; at start, a slot past the saved position retires every shape (409,
clients refetch a snapshot that has the changes).

Real path: the engine as a process, SIGKILLed, its data dir put back from a copy.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from tests.support.engine_process import EngineProcess


def _get(url: str) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, dict(resp.headers), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), []


def _sync(base: str) -> tuple[dict[str, str], str, str]:
    """A new client's rows (key -> title) and where it ends (handle, offset)."""
    rows: dict[str, str] = {}
    offset, handle = "-1", ""
    while True:
        q = f"table=items&offset={offset}" + (f"&handle={handle}" if handle else "")
        status, headers, body = _get(f"{base}/v1/shape?{q}")
        assert status == 200, (status, body)
        for m in body:
            if "key" in m:
                if m["headers"]["operation"] == "delete":
                    rows.pop(m["key"], None)
                else:
                    rows[m["key"]] = m["value"].get("title", rows.get(m["key"]))
        handle, offset = headers["electric-handle"], headers["electric-offset"]
        if "electric-up-to-date" in headers:
            return rows, handle, offset


def _select(db_url: str) -> dict[str, str]:
    with psycopg.connect(db_url) as conn:
        return {
            f'"public"."items"/"{i}"': t
            for i, t in conn.execute(b"SELECT id, title FROM items").fetchall()
        }


#: The restored data dir's saved position: as it was; cut to nothing (a zeroed or torn
#: sector, a restore that skipped it); gone. Damaged or gone, it was read as a new data dir
#: and the old shapes were served without the changes in between, for good (chaos 10:40).
POSITIONS = ["intact", "damaged", "missing"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("position", POSITIONS)
def test_a_data_dir_older_than_its_slot_retires_its_shapes(
    db_url: str, tmp_path: Path, position: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    data = tmp_path / "data"
    engine = EngineProcess(db_url, data, "--long-poll-timeout", "1")
    engine.log = tmp_path / "engine.log"
    engine.start()
    try:
        rows, old_handle, _ = _sync(engine.url)
        assert rows == _select(db_url)
        engine.stop()
        shutil.copytree(data, tmp_path / "backup")  # the backup, taken while stopped
        engine.start()
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE items SET title = 'after backup' WHERE id = 2")
            conn.execute("INSERT INTO items VALUES (60, 'after backup')")
            row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert row is not None
            target = row[0]
            # processed and confirmed: Postgres will not send these again
            deadline = time.monotonic() + 30
            while not conn.execute(
                "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots"
                " WHERE database = current_database()",
                (target,),
            ).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the slot never confirmed the writes"
                time.sleep(0.1)
        assert _sync(engine.url)[0] == _select(db_url)
        engine.kill()
        shutil.rmtree(data)
        shutil.copytree(tmp_path / "backup", data)  # the data dir restored
        saved = data / "sources" / "default" / "confirmable-lsn"
        assert saved.stat().st_size == 16  # (the position, and the log-ends mark)
        if position == "damaged":
            saved.write_bytes(b"")
        elif position == "missing":
            saved.unlink()
        engine.start()
        rows, handle, _ = _sync(engine.url)
        assert rows == _select(db_url)  # (the old engine: 'b' and no row 60, for good)
        assert handle != old_handle
        assert _get(f"{engine.url}/v1/shape?table=items&offset=0_0&handle={old_handle}")[0] in (
            409,
            400,
        )
    finally:
        engine.stop()
