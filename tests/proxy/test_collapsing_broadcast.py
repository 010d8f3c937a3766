"""The wake-up call of collapsed requests and shared SSE streams (pure asyncio, no engine):
every waiter is woken once per change, a client that goes away cancels only its own wait."""

from __future__ import annotations

import asyncio

from proxy.upstream.broadcast import Broadcast
from tests.support.waiting import wait_until_async


async def test_notify_wakes_every_waiter_of_that_moment() -> None:
    signal = Broadcast()
    waits = [signal.wait() for _ in range(1000)]
    assert not any(w.done() for w in waits)
    signal.notify()
    assert all(w.done() and not w.cancelled() for w in waits)
    await asyncio.gather(*waits)
    assert len(signal) == 0


async def test_a_waiter_that_comes_after_a_notify_waits_for_the_next_one() -> None:
    signal = Broadcast()
    signal.notify()  # nobody waiting: nothing to remember
    late = signal.wait()
    assert not late.done()
    signal.notify()
    assert late.done()


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    signal = Broadcast()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await signal.wait()
        woken.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await wait_until_async(lambda: len(signal) == 5, message="every task waits")
    tasks[2].cancel()  # its client went away
    signal.notify()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert isinstance(results[2], asyncio.CancelledError)
    assert sorted(woken) == [0, 1, 3, 4]
    assert len(signal) == 0  # the cancelled one's future was dropped with the others


async def test_waiters_are_woken_in_the_order_they_came() -> None:
    signal = Broadcast()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await signal.wait()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(50)]
    await wait_until_async(lambda: len(signal) == 50, message="every task waits")
    signal.notify()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == list(range(50))
