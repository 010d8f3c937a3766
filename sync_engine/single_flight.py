"""One run of some work per key at a time; callers arriving meanwhile share its outcome.

A storm of first requests for the same table or the same new shape must ask Postgres once
and create the shape once. The first caller runs the work; the others await its result (or
its exception) through a shielded future, so one waiter being cancelled cancels nobody
else's wait and not the work itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


async def single_flight(
    pending: dict[K, asyncio.Future[V]], key: K, work: Callable[[], Awaitable[V]]
) -> V:
    """`work()`'s result for `key`, running it only if no run for `key` is in progress."""
    running = pending.get(key)
    if running is not None:
        return await asyncio.shield(running)
    fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
    pending[key] = fut
    try:
        result = await work()
    except BaseException as exc:
        fut.set_exception(exc)
        fut.exception()  # mark retrieved: waiters re-raise it themselves
        raise
    else:
        fut.set_result(result)
        return result
    finally:
        del pending[key]
