"""SIGTERM while a subset query waits in Postgres: the engine still exits.

A subset query (`subset__*`) runs in a thread of its source's subset executor. When its
request ended (the engine stopping on SIGTERM, the source paused or deleted) while the query
waited on a lock, nothing ended the query: the thread waited on, and Python's exit waits for
every executor thread. The engine logged "stopped" and then did not exit until the lock was
let go or the query's statement_timeout (--snapshot-timeout, 300 s by default) cancelled it;
an operator's container needed SIGKILL. Now a subset query whose request ends is abandoned
(its socket shut, Postgres asked to cancel it), as one whose client went away already was.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg

from tests.support.blocking_http import ask, sigterm_and_wait, synced_to_tip
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until

#: Seconds the engine may take to exit after SIGTERM: its own stop is bounded well below
#: (2 s for requests, 10 s for tasks, 10 s for the subset pool); the query held it 300 s.
EXIT_BOUND = 60


def _sql(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def test_sigterm_while_a_subset_query_waits_on_a_lock_exits(db_url: str, tmp_path: Path) -> None:
    _sql(db_url, "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
    _sql(db_url, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 100) g")
    engine = EngineProcess(db_url, tmp_path / "data")
    engine.start()
    try:
        shape, handle, offset = synced_to_tip(engine, "items")
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            subset = f"{shape}&offset={offset}&handle={handle}&subset__where=v%20%3D%200"
            threading.Thread(target=ask, args=(subset,), daemon=True).start()
            wait_until(
                lambda: _sql(
                    db_url,
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'",
                )[0][0],
                timeout=30,
                message="the subset query waiting on the lock",
            )
            status = sigterm_and_wait(engine, EXIT_BOUND, "a subset query waiting on a lock")
        assert status == 0, engine.log_tail()
    finally:
        engine.stop()
