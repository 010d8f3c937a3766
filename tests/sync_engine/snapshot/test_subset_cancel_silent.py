"""A subset request whose client leaves while Postgres is silent does not freeze the engine.

A subset query whose client goes away is abandoned: its socket shut, and Postgres asked to
cancel it. The cancel request was libpq's blocking PQcancel, in a thread of its own; but
psycopg calls PQcancel holding the GIL, and a Postgres that accepts the connection and then
answers nothing (every process stopped, SIGSTOP; a host that hangs) kept it waiting: every
thread of the engine, the event loop's included, waited for the GIL as long as Postgres was
silent. No request of any source was answered, and the engine could not even stop. Now the
cancel request is libpq's non-blocking one, given up after `CANCEL_WAIT` seconds.

Real path: the engine as a process, a private Postgres, a subset query waiting on a lock,
Postgres stopped (SIGSTOP), then the subset's client closes its connection.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.stuck_engine import stuck_engine
from tests.support.waiting import wait_until

#: Seconds the engine has to answer `/v1/health` once the client has gone (it answers at
#: once; the old engine answered nothing until Postgres was continued).
ANSWER_WITHIN = 30


def _answers(url: str) -> bool:
    """Whether the engine answers at `url` within 2 s (any HTTP status)."""
    try:
        _get_quick(url)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _get_quick(url: str) -> None:
    with urllib.request.urlopen(url, timeout=2) as resp:
        resp.read()


@pytest.mark.timeout(240)
def test_a_subset_client_leaving_while_postgres_is_silent_leaves_the_engine_answering(
    tmp_path: Path,
) -> None:
    with stuck_engine(tmp_path) as stuck:
        engine = stuck.engine
        stuck.lock_items()
        client = socket.create_connection(("127.0.0.1", engine.port), timeout=10)
        path = (
            f"/v1/shape?table=items&offset={stuck.offset}&handle={stuck.handle}"
            "&subset__where=v%20%3D%200"
        )
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        stuck.wait_for_lock_waiters(1, "the subset query waiting on the lock")
        stuck.silence_postgres()
        client.close()  # the client goes away: its query is abandoned, cancelled in Postgres
        wait_until(
            lambda: _answers(f"{engine.url}/v1/health"),
            timeout=ANSWER_WITHIN,
            interval=0.5,
            message="an answer from the engine (any status) with Postgres silent",
        )
        assert engine.proc is not None and engine.proc.poll() is None, engine.log_tail()
