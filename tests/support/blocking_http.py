"""Plain blocking HTTP for tests that drive an engine process from threads while its
Postgres is locked, stopped or silent (no event loop in the test to be held up)."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.support.engine_process import EngineProcess


def get(url: str, timeout: float = 30) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of a GET (the body is read and dropped); an HTTP error
    status is returned, not raised, with no headers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def ask(url: str, timeout: float = 30) -> None:
    """`get` for a thread of its own, whose request the engine's stop ends (an error then)."""
    try:
        get(url, timeout=timeout)
    except OSError:
        pass


def synced_to_tip(engine: EngineProcess, table: str) -> tuple[str, str, str]:
    """Sync a new shape of `table` to its up-to-date: its URL without offset, handle, offset."""
    shape = f"{engine.url}/v1/shape?table={table}"
    status, headers = get(f"{shape}&offset=-1")
    assert status == 200
    handle, offset = headers["electric-handle"], headers["electric-offset"]
    while "electric-up-to-date" not in headers:
        status, headers = get(f"{shape}&offset={offset}&handle={handle}")
        assert status == 200
        offset = headers["electric-offset"]
    return shape, handle, offset


def sigterm_and_wait(engine: EngineProcess, bound: float, what: str) -> int:
    """SIGTERM the engine and wait for its exit status; a test failure (with the end of its
    log) if it has not exited `bound` seconds later."""
    assert engine.proc is not None
    engine.proc.send_signal(signal.SIGTERM)
    try:
        return engine.proc.wait(bound)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the engine had not exited {bound} s after SIGTERM ({what}):\n{engine.log_tail()}"
        )
