"""A wake-up call for every task waiting on a shared engine answer (a flight, an SSE stream).

Why not `asyncio.Event` (set, then clear at once): its `wait` is a coroutine of its own (one
more frame made and resumed per waiter and wake-up), and each woken waiter removes its future
from a shared deque with `deque.remove`, a scan. With 10,000 long-polls held on one flight
that scan alone was ~3% of the proxy's CPU per flight (S8, py-spy). Here `notify` takes the
whole list of waiting futures at once and wakes each, so a waiter has nothing to remove.

Each waiter still waits on a future of its own, so a waiter cancelled (its client went away)
cancels only its own future, never the others' wait; `notify` skips futures already done.
A future of a waiter cancelled between two notifications stays in the list until the next
one: at most one per waiter that came, dropped when the flight or stream is.
"""

from __future__ import annotations

import asyncio


class Broadcast:
    """Wakes every task waiting right now; later waiters wait for the next `notify`.

    Event loop thread only.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def wait(self) -> asyncio.Future[None]:
        """A future done at the next `notify` (await it; cancelling it affects no one else)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    def notify(self) -> None:
        """Wake every waiter waiting now."""
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def __len__(self) -> int:
        """Waiters not yet woken (cancelled ones included until the next `notify`)."""
        return len(self._waiters)
