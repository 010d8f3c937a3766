"""Wait for a condition instead of sleeping a fixed time.

A fixed `sleep(0.3)` meaning "the long-poll is parked by now" is both slow (every run pays it)
and flaky (under load 0.3 s is sometimes not enough). These helpers poll a condition the test
can observe and return as soon as it holds; on timeout they fail with the caller's message and
the last value seen, so a failure says what was being waited for.

    await wait_until_async(lambda: engine.parked() >= 1, message="the live request parks")
    wait_until(lambda: log.exists(), timeout=10)

The condition may return any value: the first truthy one is returned to the caller. An
exception raised by the condition propagates at once (a bug in the test, not a "not yet").
The async variant also accepts a coroutine function (e.g. one that does an HTTP request).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
DEFAULT_INTERVAL = 0.01


class WaitTimeout(AssertionError):
    """The condition did not hold within the timeout (an AssertionError, so pytest shows it)."""


def _failure(message: str | None, timeout: float, last: object) -> WaitTimeout:
    what = message or "condition"
    return WaitTimeout(f"timed out after {timeout:g} s waiting for {what} (last value: {last!r})")


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str | None = None,
) -> T:
    """Call `condition` every `interval` seconds until it returns a truthy value; return it.

    For synchronous tests and helpers (subprocesses, files, Postgres rows). Do not call it from
    a coroutine: it blocks the event loop, so the thing waited for could never happen there.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, last)
        time.sleep(interval)


@overload
async def wait_until_async(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...
@overload
async def wait_until_async(
    condition: Callable[[], T | None],
    *,
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...
async def wait_until_async(
    condition: Callable[[], object],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str | None = None,
) -> object:
    """`wait_until` for async tests: yields to the event loop between checks.

    `condition` may be a plain function or return an awaitable (a coroutine function).
    """
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, last)
        await asyncio.sleep(interval)
