"""A flood of refused requests does not flood the engine's log.

Each malformed request (each on its own connection, refused and closed) wrote one INFO
line: anyone who reaches the port could write lines into the engine's log as fast as they
connect, burying the rest. Now each kind of refusal logs its first few of an interval, and
one line then counts the rest (`sync_engine/http/log_throttle.py`).

Real path: the engine's server on a socket, malformed heads from raw sockets; the timer of
the summary with a fake clock and a short interval.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket

import pytest

from sync_engine.http import parser_refusals
from sync_engine.http.log_throttle import ThrottledLog
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine

FLOOD = 40


def _refused(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _lines(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(malformed requests logged one by one, those counted in summaries)."""
    each = counted = 0
    for r in caplog.records:
        text = r.getMessage()
        if text.startswith("refused a malformed request"):
            each += 1
        elif m := re.match(r"refused (\d+) more malformed requests", text):
            counted += int(m[1])
    return each, counted


async def test_a_flood_of_malformed_requests_logs_a_few_lines_and_a_count(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (a fresh one: the engine's counts what the tests before this one refused)
    throttle = ThrottledLog(
        parser_refusals.logger, "refused %d more malformed requests in the last 60 s"
    )
    monkeypatch.setattr(parser_refusals, "_MALFORMED", throttle, raising=False)
    caplog.set_level(logging.INFO, logger=parser_refusals.logger.name)
    server = engine.client.server
    for _ in range(FLOOD):
        answer = await asyncio.to_thread(_refused, str(server.host), server.port or 0)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    each, counted = _lines(caplog)
    assert each == throttle.first, each  # (was one line per refused request: 40)
    throttle.flush()  # (the interval's end)
    assert _lines(caplog) == (throttle.first, FLOOD - throttle.first)


def test_the_count_comes_at_the_interval_s_end_though_the_flood_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.throttle")
    caplog.set_level(logging.INFO, logger=logger.name)
    now = [0.0]

    async def flood() -> None:
        throttle = ThrottledLog(
            logger, "refused %d more", first=3, interval=0.2, clock=lambda: now[0]
        )
        for i in range(10):
            throttle.log(logging.INFO, "refused %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
        now[0] = 0.2
        await wait_until_async(lambda: len(caplog.records) == 4, message="the count")
        assert caplog.records[-1].getMessage() == "refused 7 more"
        throttle.log(logging.INFO, "refused %d", 10)  # (a new interval: logged again)
        assert caplog.records[-1].getMessage() == "refused 10"

    asyncio.run(flood())
