"""An engine subprocess that does not come up fails its test clearly and is never left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engine_process import EngineProcess

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing"  # refused: the engine retries forever


def test_an_engine_never_healthy_is_killed_and_its_output_shown(tmp_path: Path) -> None:
    engine = EngineProcess(UNREACHABLE, tmp_path / "data", "--no-fsync")
    with pytest.raises(AssertionError) as failure:
        engine.start(timeout=10)
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
