"""The wait helpers return as soon as the condition holds and fail clearly when it never does."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.waiting import WaitTimeout, wait_until, wait_until_async


def test_returns_the_first_truthy_value() -> None:
    calls = iter([0, None, "", "ready", "later"])
    assert wait_until(lambda: next(calls), interval=0) == "ready"


def test_timeout_names_what_was_awaited_and_the_last_value() -> None:
    start = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"the queue to drain \(last value: \[\]\)"):
        wait_until(lambda: [], timeout=0.05, message="the queue to drain")
    assert time.monotonic() - start < 5


def test_timeout_is_an_assertion_error() -> None:
    with pytest.raises(AssertionError):
        wait_until(lambda: False, timeout=0)


def test_an_exception_in_the_condition_propagates() -> None:
    def broken() -> bool:
        raise KeyError("bug in the test")

    with pytest.raises(KeyError):
        wait_until(broken)


async def test_async_sees_what_other_tasks_do() -> None:
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, done.set)
    assert await wait_until_async(done.is_set) is True


async def test_async_accepts_a_coroutine_function() -> None:
    seen: list[int] = []

    async def probe() -> int:
        seen.append(1)
        return len(seen) if len(seen) >= 3 else 0

    assert await wait_until_async(probe, interval=0) == 3


async def test_async_timeout() -> None:
    with pytest.raises(WaitTimeout, match="parked"):
        await wait_until_async(lambda: 0, timeout=0.02, message="parked")
