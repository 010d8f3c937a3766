"""An engine subprocess that does not come up fails its test clearly and is never left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing"  # refused: the engine retries forever


def test_an_engine_never_healthy_is_killed_and_its_output_shown(tmp_path: Path) -> None:
    engine = EngineProcess(UNREACHABLE, tmp_path / "data", "--no-fsync")
    engine.spawn()
    # (running and saying why it is not healthy: the health deadline need not be long)
    wait_until(lambda: "not reachable yet" in engine.log_tail(), timeout=60, message="output")
    with pytest.raises(AssertionError) as failure:
        engine.wait_healthy(timeout=0.5)
    assert engine.proc is not None and engine.proc.poll() is not None, "engine left running"
    message = str(failure.value)
    assert "/v1/health 200" in message
    assert "not reachable yet" in message  # what the engine printed says why


def test_an_engine_that_exits_is_reported_with_its_status_and_output(tmp_path: Path) -> None:
    engine = EngineProcess(UNREACHABLE, tmp_path / "data", "--long-poll-timeout", "-1")
    with pytest.raises(AssertionError, match=r"exited with status [1-9]") as failure:
        engine.start(timeout=30)
    assert engine.proc is not None and engine.proc.poll() is not None
    assert "--long-poll-timeout" in str(failure.value)


class _Reply:
    def __init__(self, offset: str, up_to_date: bool) -> None:
        self.status = 200
        self.body = b"[]"
        self.headers = {"electric-handle": "h-1", "electric-offset": offset}
        if up_to_date:
            self.headers["electric-up-to-date"] = ""

    def json(self) -> list[object]:
        return []


class _RecordingProxy:
    """Answers two snapshot chunks, then up-to-date; records the paths asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def get(self, path: str, token: str) -> _Reply:
        self.paths.append(path)
        n = len(self.paths)
        return _Reply(f"0_{n - 1}", up_to_date=n == 3)


async def test_sync_through_sends_the_extra_parameters_with_every_request() -> None:
    """They define the shape: a request without them asks for another shape (it used to
    send them with the first request only)."""
    proxy = _RecordingProxy()
    _, handle, offset = await sync_through(proxy, "token", extra="&where=id%3E1")
    assert (handle, offset) == ("h-1", "0_2")
    assert len(proxy.paths) == 3
    assert all(p.endswith("&where=id%3E1") for p in proxy.paths), proxy.paths
    assert "handle=h-1" in proxy.paths[1]
