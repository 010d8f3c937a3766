"""Per-principal bound on subset snapshots in flight (`limits.max_subsets`, off by default).

Why: the engine holds every subset answer it has not yet sent (in memory, then spooled to
disk) and bounds them all together (its subset spool budget, 1 GiB by default): past it a
subset is a 503. A client that asks for many large subsets and reads none of them keeps them
all in that budget until the engine cuts each (after 60 s without a byte taken), and every
other client's large subset meanwhile gets a 503. The proxy reads an answer of up to 1 MiB
whole (the engine's share is freed at once); a larger one it relays at its client's pace, so
an unread one stays in the engine's budget.

With `max_subsets: N`, a principal may have at most N subset requests in flight at once, from
the moment it is admitted until its answer has been handed to its client (its last byte handed
to the kernel for the client's connection, or the connection gone); the next one is a 429
`too_many_subsets` with `Retry-After`. One principal then pins at most N answers of the
budget. An answer the kernel's send buffer swallows whole (it grows by itself up to
net.ipv4.tcp_wmem's max, 4 MiB by default: ~3 MB of payload) frees its place though its
client has read none of it: it is out of the engine's budget and the proxy's hands by then,
as any other answer of that size is. It is a count, not bytes: the proxy cannot know how
large an answer will be before the engine has spooled it. Off by default (null): an app
opening many shapes at once sends as many subsets at once, and a client must not be refused
what the engine would serve; set it (a rule may raise or lower it) when the engine's budget is
shared by principals that must not starve each other: with a budget of B and answers of up to
S bytes, N x S well under B.
"""

from __future__ import annotations

import random

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
    """Subset requests in flight, per principal (event loop thread only)."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def take(self, principal: str, limit: int, retry_after: int) -> SubsetSlot:
        """A place for one more subset of `principal`, or a 429 when it has `limit`, whose
        `Retry-After` is between `retry_after` and twice that (as the other limits')."""
        count = self._in_flight.get(principal, 0)
        if count >= limit:
            raise TooManyRequests(
                "too_many_subsets",
                f"Too many subset snapshots in flight for this client: {count} are not yet "
                f"answered or read (limit {limit}); retry later",
                retry_after=random.randint(retry_after, 2 * retry_after),
            )
        self._in_flight[principal] = count + 1
        return SubsetSlot(self, principal)

    def release(self, principal: str) -> None:
        count = self._in_flight.get(principal, 0) - 1
        if count > 0:
            self._in_flight[principal] = count
        else:
            self._in_flight.pop(principal, None)

    def __len__(self) -> int:
        """Principals with a subset in flight."""
        return len(self._in_flight)
