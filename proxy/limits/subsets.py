"""Per-principal bound on subset snapshots in flight (`limits.max_subsets`, 4 by default).

Why, twice over:
- The engine runs a source's subset queries on one pool of connections (its
  `max_concurrent_snapshots`, 8), first come first served. One principal asking for dozens
  of slow subsets at once took them all, and every other user's subset waited behind its
  whole queue (attack 05:15: 30 s and more for a two-row answer). With at most 4 in flight
  per principal (half the engine's pool), one principal's burst leaves the engine room for
  everyone else's.
- The engine holds every subset answer it has not yet sent (in memory, then spooled to
  disk) and bounds them all together (its subset spool budget, 1 GiB by default): past it a
  subset is a 503. A client that asks for many large subsets and reads none of them keeps
  them all in that budget until the engine cuts each (after 60 s without a byte taken). The
  proxy reads an answer of up to 1 MiB whole (the engine's share is freed at once); a larger
  one it relays at its client's pace, so an unread one stays in the engine's budget.

A place is taken when the request is admitted and given back once its answer has been handed
to its client (its last byte handed to the kernel for the client's connection, or the
connection gone). A principal's subset beyond its `max_subsets` waits in the proxy, in order,
for one of its own places (`limits.subset_wait`, 30 s), not in the engine's queue ahead of
everyone else: an app opening many shapes at once is served in turn, none refused for the
burst. Past the wait, or with more waiting than its `max_concurrent`, a 429
`too_many_subsets` with `Retry-After` (a client leaving its answers unread waits on itself).
An answer the kernel's send buffer swallows whole (it grows by itself up to
net.ipv4.tcp_wmem's max, 4 MiB by default: ~3 MB of payload) frees its place though its
client has read none of it: it is out of the engine's budget and the proxy's hands by then,
as any other answer of that size is. It is a count, not bytes: the proxy cannot know how
large an answer will be before the engine has spooled it. `max_subsets: unlimited` lifts the bound
(an engine with a larger pool, one principal only); a rule may raise or lower it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque

from proxy.limits.admission import TooManyRequests


class SubsetSlot:
    """One admitted subset request's place; `release` it once its answer is handed over."""

    __slots__ = ("_principal", "_slots")

    def __init__(self, slots: SubsetSlots, principal: str) -> None:
        self._slots: SubsetSlots | None = slots
        self._principal = principal

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release(self._principal)


class SubsetSlots:
    """Subset requests in flight, and those waiting for a place, per principal (event loop
    thread only). A place given back goes to the principal's longest waiting request."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    async def take(
        self, principal: str, limit: int, retry_after: int, *, wait: float, max_waiting: int
    ) -> SubsetSlot:
        """A place for one more subset of `principal`, at once when it has fewer than `limit`
        in flight and none waiting, else after those before it (at most `wait` seconds); a 429
        past that, or with `max_waiting` already waiting, whose `Retry-After` is between
        `retry_after` and twice that (as the other limits')."""
        count = self._in_flight.get(principal, 0)
        queue = self._waiting.get(principal)
        if count < limit and not queue:
            self._in_flight[principal] = count + 1
            return SubsetSlot(self, principal)
        if queue is None:
            queue = self._waiting[principal] = deque()
        if len(queue) >= max_waiting or wait <= 0:
            self._forget(principal, queue)
            raise self._refusal(count, limit, retry_after)
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(place)
        try:
            await asyncio.wait_for(place, wait)
        except TimeoutError:
            self._drop(principal, place)
            raise self._refusal(count, limit, retry_after) from None
        except asyncio.CancelledError:  # (its client went away while it waited)
            if place.done() and not place.cancelled():
                self.release(principal)  # (a place was handed to it meanwhile)
            else:
                self._drop(principal, place)
            raise
        return SubsetSlot(self, principal)  # (handed over by `release`: already counted)

    def release(self, principal: str) -> None:
        """Give back a place: to the principal's next waiting request, if any."""
        queue = self._waiting.get(principal)
        while queue:
            place = queue.popleft()
            if not place.done():
                place.set_result(None)
                self._forget(principal, queue)
                return
        if queue is not None:
            self._forget(principal, queue)
        count = self._in_flight.get(principal, 0) - 1
        if count > 0:
            self._in_flight[principal] = count
        else:
            self._in_flight.pop(principal, None)

    def _drop(self, principal: str, place: asyncio.Future[None]) -> None:
        queue = self._waiting.get(principal)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(place)
            self._forget(principal, queue)

    def _forget(self, principal: str, queue: deque[asyncio.Future[None]]) -> None:
        if not queue and self._waiting.get(principal) is queue:
            del self._waiting[principal]

    @staticmethod
    def _refusal(count: int, limit: int, retry_after: int) -> TooManyRequests:
        return TooManyRequests(
            "too_many_subsets",
            f"Too many subset snapshots in flight for this client: {count} are not yet "
            f"answered or read (limit {limit}); retry later",
            retry_after=random.randint(retry_after, 2 * retry_after),
        )

    def waiting(self) -> int:
        """Subset requests waiting for a place."""
        return sum(len(queue) for queue in self._waiting.values())

    def __len__(self) -> int:
        """Principals with a subset in flight."""
        return len(self._in_flight)
