"""The slot's and the WAL's one-off questions end when Postgres stops answering mid-question.

`slot_state`, `slot_confirmed_lsn`, `wal_end` and `ensure_slot`'s look-up run on a
connection of their own, each when the replication stream (re)starts or a source starts
(`Source._prepare`, `Source._replace_slot_if_gone`, the replicator's `went_back`). They had a
connect timeout only: a backend that stopped answering once the connection was made (its
process stopped, a proxy in front of a server that went away: the peer's kernel still
answers TCP keepalives) held the question, and the stream's restart or the source's start
with it, for as long as that lasted. Here the backend of each question's connection is
really stopped (SIGSTOP) as soon as the connection is made; each question must end with
TimeoutError (its callers retry), not wait for it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.replication import slot as slot_module

#: Seconds a question may take here before it counts as hung (far above its bound).
HUNG = 30.0


@pytest.fixture
def frozen_backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every connection the engine's code opens gets its backend stopped once connected."""
    frozen: list[int] = []
    real_connect = psycopg.AsyncConnection.connect

    async def connect_then_stop(*args: Any, **kw: Any) -> psycopg.AsyncConnection[Any]:
        conn = await real_connect(*args, **kw)
        os.kill(conn.info.backend_pid, signal.SIGSTOP)
        frozen.append(conn.info.backend_pid)
        return conn

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect_then_stop)
    monkeypatch.setattr(slot_module, "QUERY_TIMEOUT", 2.0)
    try:
        yield frozen
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


async def test_slot_and_wal_questions_end_when_the_backend_stops_answering(
    db_url: str, frozen_backends: list[int]
) -> None:
    slot = "shapegate_slot_bounded_questions"
    questions: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("slot_state", lambda: slot_module.slot_state(db_url, slot)),
        ("slot_confirmed_lsn", lambda: slot_module.slot_confirmed_lsn(db_url, slot)),
        ("wal_end", lambda: slot_module.wal_end(db_url)),
        ("ensure_slot", lambda: slot_module.ensure_slot(db_url, slot)),
    ]
    outcomes: dict[str, str] = {}
    for name, ask in questions:
        task = asyncio.ensure_future(ask())
        done, _ = await asyncio.wait({task}, timeout=HUNG)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=HUNG)
            outcomes[name] = "hung"
        elif task.cancelled():
            outcomes[name] = "cancelled"
        else:
            exc = task.exception()
            outcomes[name] = type(exc).__name__ if exc is not None else "answered"
    assert len(frozen_backends) == len(questions)  # (each question's backend was stopped)
    assert outcomes == {name: "TimeoutError" for name, _ in questions}
