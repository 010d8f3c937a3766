"""Per-principal admission to the engine: open-request cap, token-bucket rate, pool wait.

Without it one client could hold every pooled engine connection (one live long-poll per
distinct `cache-buster`, each held 20 s) and everyone else's initial sync waited behind it.
Now every request that needs a new engine request asks `Admission.admit` first:

1. the principal's open engine requests must be under its `max_concurrent`, else 429;
2. with `max_shapes` set, a request of a shape the principal has not asked for within
   `shape_window` must find it under `max_shapes` such shapes, else 429 `too_many_shapes`
   (the engine's `--max-shapes` keeps every shape asked for within its last minute, so one
   principal keeping shapes fresh could fill it: see `proxy.limits.config`);
3. a request of a shape definition new to the principal (not among the last
   `REMEMBERED_SHAPES` it asked for) must find a token in its new-shape bucket
   (`new_shape_rate`/s, bursts of `new_shape_burst`), else 429 `too_many_new_shapes`: the
   engine creates a shape for every definition it has not got, and one principal making them
   fast had every other user's idle shapes evicted under `--max-shapes` (see
   `proxy.limits.config`);
4. its token bucket must have a token (`rate`/s, bursts of `burst`), else 429 whose
   `Retry-After` is the time until the next token;
5. a connection from the shared pool (`pool_size`), waiting at most `pool_wait`, else 503.

Separately, every live client request (long-poll or SSE) asks `Admission.hold` before it is
forwarded: the principal's held client requests must be under its `max_held`, else 429 in the
same form. This one counts clients, joiners of a flight or a shared stream included: a held
request keeps a client connection busy (the connection cap never closes it to make room), so
one principal repeating one live URL, free against `max_concurrent`, filled the cap and
everyone else got 503s.

The `Permit` it returns is released when that engine request is over (answer read, client
gone, or flight finished). Answers from the cache and requests joining an identical flight
never ask, so they are free. A principal is a token's issuer and subject, or the client
address for anonymous requests; its state is dropped once it is idle and its bucket full.
Used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable

from proxy.errors import ProxyError, ServiceUnavailable
from proxy.limits.bucket import TokenBucket, retry_after_seconds
from proxy.limits.config import REMEMBERED_SHAPES, LimitSettings


class TooManyRequests(ProxyError):
    """429: this principal is over its limit; `Retry-After` says when to try again."""

    status = 429


class UpstreamBusy(ServiceUnavailable):
    """503: every engine connection stayed in use for the whole bounded wait."""


def principal_for(issuer: object, subject: object, remote: str | None) -> str:
    """Who a request is charged to: the token's (issuer, subject), or the client address."""
    if subject is not None:
        return f"sub\x00{issuer}\x00{subject}"
    return f"addr\x00{remote or '-'}"


class _State:
    __slots__ = (
        "active",
        "bucket",
        "burst",
        "held",
        "last",
        "older",
        "rate",
        "recent",
        "shape_burst",
        "shape_rate",
        "shape_window",
        "shapes",
    )

    def __init__(self, limits: LimitSettings, now: float) -> None:
        self.active = 0
        self.held = 0
        self.bucket = TokenBucket(limits.burst, now)
        self.rate = limits.rate
        self.burst = limits.burst
        #: The new-shape bucket, made at the principal's first engine request naming a shape.
        self.shapes: TokenBucket | None = None
        self.shape_rate = limits.new_shape_rate
        self.shape_burst = limits.new_shape_burst
        self.shape_window = limits.shape_window
        #: The definitions it asked for (hashes), least recently asked for first: those of
        #: the last `shape_window` seconds (-> when), then older ones it still remembers.
        self.recent: dict[int, float] | None = None
        self.older: dict[int, None] = {}
        #: The key last marked asked for in `recent` (so its last entry, while it is still
        #: there): a principal following one shape asks for it request after request.
        self.last: int | None = None

    def new_shape(self, limits: LimitSettings, now: float) -> tuple[int, TokenBucket | None] | None:
        """None if the request names no shape or one this principal asked for within
        `shape_window` (free: marked asked for now); else (its key, the new-shape bucket to
        charge, or None for a shape asked for before, which costs no token): then
        `quota_wait` and the bucket decide, and `charge_shape` records it."""
        shape = limits.shape
        if shape is None:
            return None
        key = hash(shape)  # (a str keeps its hash: the same Prepared's is computed once)
        recent = self.recent
        if recent is None:
            recent = self.recent = {}
        else:
            if key == self.last:
                # The shape it asked for last, within `shape_window`: already the last (most
                # recently used) entry, so marking it asked for now moves nothing, and the
                # older entries `_expire` would move out of `recent` are moved by the next
                # request that names another shape, before anything reads them (only a
                # request that is not free here reads `recent`'s size or `older`).
                asked = recent.get(key)
                if asked is not None and asked >= now - limits.shape_window:
                    recent[key] = now
                    return None
            self._expire(now - limits.shape_window)
            if key in recent:
                # Least recently used first: a shape followed all along (its long-polls) is
                # never the one forgotten for a passing one. (Forgetting the oldest asked
                # for instead let one passing shape push out a followed one, whose next
                # request pushed out the next: every followed shape charged every round.)
                del recent[key]
                recent[key] = now
                self.last = key
                return None
            if key in self.older:
                return key, None
        bucket = self.shapes
        if bucket is None:
            bucket = self.shapes = TokenBucket(limits.new_shape_burst, now)
        self.shape_rate, self.shape_burst = limits.new_shape_rate, limits.new_shape_burst
        return key, bucket

    def _expire(self, cutoff: float) -> None:
        """Move the shapes last asked for before `cutoff` from `recent` to `older`."""
        recent = self.recent
        assert recent is not None
        older = self.older
        while recent:
            key = next(iter(recent))
            if recent[key] >= cutoff:
                return
            del recent[key]
            older[key] = None

    def quota_wait(self, limits: LimitSettings, now: float) -> float:
        """Seconds until this principal may ask for one more shape than those it asked for
        within `shape_window` (0.0: now), under `max_shapes` (after `new_shape`)."""
        recent = self.recent
        if limits.max_shapes is None or recent is None or len(recent) < limits.max_shapes:
            return 0.0
        oldest = recent[next(iter(recent))]
        return max(oldest + limits.shape_window - now, 0.001)

    def charge_shape(
        self, key: int, bucket: TokenBucket | None, limits: LimitSettings, now: float
    ) -> None:
        """Take the new-shape token (checked with `wait` before), if any, and record the
        shape as asked for now."""
        if bucket is not None:
            bucket.take(limits.new_shape_rate, limits.new_shape_burst, now)
        recent = self.recent
        assert recent is not None
        older = self.older
        older.pop(key, None)
        recent[key] = now
        self.last = key
        self.shape_window = limits.shape_window
        if len(recent) + len(older) > REMEMBERED_SHAPES:
            del (older or recent)[next(iter(older or recent))]

    def idle(self, now: float) -> bool:
        """Nothing open, every bucket full and no shape asked for within `shape_window`:
        this state is as a new one would be."""
        if self.active or self.held or not self.bucket.full(self.rate, self.burst, now):
            return False
        recent = self.recent
        if recent and recent[next(reversed(recent))] >= now - self.shape_window:
            return False
        return self.shapes is None or self.shapes.full(self.shape_rate, self.shape_burst, now)


class _Slots:
    """A counting semaphore with a bounded, first-come-first-served wait."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def take(self, timeout: float) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        if timeout <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
            return True
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return True  # handed a slot just as the wait ran out: keep it
            return False
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but this request is gone: pass it on
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the first waiter
                return
        self.free += 1


class Permit:
    """One admitted engine request (`engine`) and/or one held client request (`held`);
    `release()` (idempotent) when it is over.

    It keeps its principal's `_State` itself, not the principal to look up again: a state
    is dropped (`Admission._sweep`) only when idle, with nothing open or held, so never
    while a permit on it is unreleased (one dict lookup fewer per request, bar 4)."""

    __slots__ = ("_engine", "_held", "_released", "_slots", "_state")

    def __init__(
        self, state: _State, slots: _Slots, engine: bool = True, held: bool = False
    ) -> None:
        self._state = state
        self._slots = slots
        self._engine = engine
        self._held = held
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        # (what the admission charged, given back here: once per engine request)
        state = self._state
        if self._held:
            state.held -= 1
        if not self._engine:
            return
        slots = self._slots
        if slots._waiters:
            slots.release()
        else:
            slots.free += 1  # (`_Slots.release` with nobody waiting, inline)
        state.active -= 1


class Admission:
    """The app's admission state: one per proxy process, surviving config reloads."""

    def __init__(
        self,
        pool_size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[int, int], int] = random.randint,
        sweep_at: int = 10_000,
    ) -> None:
        self.pool_size = pool_size
        self._slots = _Slots(pool_size)
        self._clock = clock
        self._jitter = jitter
        self._states: dict[str, _State] = {}
        self._sweep_base = sweep_at
        self._sweep_at = sweep_at

    def active(self, principal: str) -> int:
        """Open engine requests charged to `principal`."""
        state = self._states.get(principal)
        return state.active if state is not None else 0

    def held(self, principal: str) -> int:
        """Live client requests `principal` holds open now."""
        state = self._states.get(principal)
        return state.held if state is not None else 0

    def hold(self, principal: str, limits: LimitSettings) -> Permit:
        """Charge one live client request (a long-poll, an SSE stream) to `principal` for as
        long as it is open, or raise 429 past its `max_held` (see module doc). Charged
        whether or not it will need an engine request of its own."""
        state = self._states.get(principal)
        if state is None:
            now = self._clock()
            if len(self._states) >= self._sweep_at:
                self._sweep(now)
            state = self._states[principal] = _State(limits, now)
        if state.held >= limits.max_held:
            raise self._too_many_held(state, limits)
        state.held += 1
        return Permit(state, self._slots, engine=False, held=True)

    def _too_many_held(self, state: _State, limits: LimitSettings) -> TooManyRequests:
        return TooManyRequests(
            "too_many_held_requests",
            f"Too many held requests for this client: {state.held} live requests are held "
            f"open (limit {limits.max_held}); retry later",
            retry_after=self._spread(limits.retry_after),
        )

    @property
    def in_use(self) -> int:
        """Pool connections taken by admitted requests."""
        return self.pool_size - self._slots.free

    @property
    def principals(self) -> int:
        return len(self._states)

    async def admit(
        self, principal: str, limits: LimitSettings, *, continuing: bool = False
    ) -> Permit:
        """Charge one engine request to `principal`, or raise 429 / 503 (see module doc).

        `continuing`: the engine request an admitted client request goes on with, not a new
        request: an SSE client's own stream once it fell behind its shape's shared one, or
        the next stream of its shape after one that ended too soon (`upstream.sse`). None of
        the principal's limits refuse it (refused, the client's response ended where it was,
        and a slow reader was cut and retried for ever); it is counted among its open
        engine requests and waits for a pool connection like any. At most one per held
        client request, so `max_held` bounds them."""
        now = self._clock()
        state = self._states.get(principal)
        if state is None:
            if len(self._states) >= self._sweep_at:
                self._sweep(now)
            state = self._states[principal] = _State(limits, now)
        state.rate, state.burst = limits.rate, limits.burst
        if continuing:
            return await self._take_slot(principal, state, limits)
        if state.active >= limits.max_concurrent:
            raise TooManyRequests(
                "too_many_open_requests",
                f"Too many open requests for this client: {state.active} requests are open "
                f"to the sync engine (limit {limits.max_concurrent}); retry later",
                retry_after=self._spread(limits.retry_after),
            )
        new = state.new_shape(limits, now)
        if new is not None:
            wait = state.quota_wait(limits, now)
            if wait > 0:
                raise TooManyRequests(
                    "too_many_shapes",
                    f"Too many shapes for this client (limit {limits.max_shapes} asked for "
                    f"within {limits.shape_window:g} s); retry later",
                    retry_after=retry_after_seconds(wait),
                )
            bucket = new[1]
            wait = (
                0.0
                if bucket is None
                else bucket.wait(limits.new_shape_rate, limits.new_shape_burst, now)
            )
            if wait > 0:
                raise TooManyRequests(
                    "too_many_new_shapes",
                    f"Too many new shapes from this client (limit {limits.new_shape_rate:g} "
                    f"per second, bursts of {limits.new_shape_burst}); retry later",
                    retry_after=retry_after_seconds(wait),
                )
        wait = state.bucket.take(limits.rate, limits.burst, now)
        if wait > 0:
            raise TooManyRequests(
                "rate_limited",
                f"Too many requests from this client (limit {limits.rate:g} per second, "
                f"bursts of {limits.burst}); retry later",
                retry_after=retry_after_seconds(wait),
            )
        if new is not None:
            # (charged before the pool wait: if that runs out, the client's retry of the
            # same shape is free)
            state.charge_shape(*new, limits, now)
        return await self._take_slot(principal, state, limits)

    async def _take_slot(self, principal: str, state: _State, limits: LimitSettings) -> Permit:
        """Count an admitted engine request as open and wait for its pool connection."""
        state.active += 1
        try:
            got = await self._slots.take(limits.pool_wait)
        except BaseException:
            state.active -= 1
            raise
        if not got:
            state.active -= 1
            raise UpstreamBusy(
                "upstream_busy",
                "All connections to the sync engine are in use; retry later",
                retry_after=self._spread(limits.retry_after),
            )
        return Permit(state, self._slots)

    def admit_now(self, principal: str, limits: LimitSettings, held: bool = False) -> Permit | None:
        """`admit` for a known principal when it needs no wait and refuses nothing, without
        a coroutine (`proxy.http.fastlane`), and with `held` (a live request) `hold` too, in
        the same permit; None: call `hold` and `admit`, which wait or refuse. Nothing is
        charged when it answers None."""
        state = self._states.get(principal)
        if state is None or state.active >= limits.max_concurrent:
            return None
        if held and state.held >= limits.max_held:
            return None
        slots = self._slots
        if slots.free <= 0 or slots._waiters:  # (no slot free now, or others wait first)
            return None
        rate, burst = limits.rate, limits.burst
        state.rate, state.burst = rate, burst
        now = self._clock()
        new = None
        shape = limits.shape
        if shape is not None:
            # (`_State.new_shape`'s first case, inline: the shape this principal asked for
            # last, within `shape_window`, is free and only marked asked for now; a
            # follower's every request)
            recent = state.recent
            key = hash(shape)
            if (
                recent is None
                or key != state.last
                or (asked := recent.get(key)) is None
                or asked < now - limits.shape_window
            ):
                new = state.new_shape(limits, now)
                if new is not None and (
                    state.quota_wait(limits, now)
                    or (
                        new[1] is not None
                        and new[1].wait(limits.new_shape_rate, limits.new_shape_burst, now)
                    )
                ):
                    return None  # (`admit` refuses it)
            else:
                recent[key] = now
        bucket = state.bucket  # (`TokenBucket.take`, inline: once per fast-lane request)
        tokens = bucket._tokens
        elapsed = now - bucket._updated
        if elapsed > 0.0:
            tokens += elapsed * rate
        if tokens > burst:
            tokens = float(burst)
        bucket._updated = now
        if tokens < 1.0:
            bucket._tokens = tokens
            return None  # (no slot was taken yet)
        bucket._tokens = tokens - 1.0
        if new is not None:
            state.charge_shape(*new, limits, now)
        slots.free -= 1
        state.active += 1
        if held:
            state.held += 1
        return Permit(state, slots, True, held)  # (positional: a keyword costs more)

    def _spread(self, retry_after: int) -> int:
        """`Retry-After` between `retry_after` and twice that, as Electric's admission 503s
        do (5-10 s): clients refused together must not all come back in the same second."""
        return self._jitter(retry_after, 2 * retry_after)

    def _sweep(self, now: float) -> None:
        """Forget idle principals whose bucket has refilled (they would start afresh anyway)."""
        idle = [key for key, state in self._states.items() if state.idle(now)]
        for key in idle:
            del self._states[key]
        # Amortised: the next sweep waits until the table has doubled again.
        self._sweep_at = max(self._sweep_base, 2 * len(self._states))
