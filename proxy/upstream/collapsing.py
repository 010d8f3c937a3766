"""Request collapsing: identical engine requests in flight at once are sent once.

A `Flight` is one engine request shared by every client waiting for the same answer (same
cache key: the upstream URL the policy built plus the few request headers that change the
answer). The flight runs as a task of its own, not tied to any client: it sends the request
once, keeps the answer's chunks as they arrive, and every waiting client writes them out at
its own pace (a small complete body in one write, a large one chunk by chunk). A client that
goes away leaves; the last one to leave cancels the flight, which closes the engine
connection. An engine failure before the headers becomes each waiter's own 502/504; a failure
mid-body truncates each streaming client's response.

The last one leaving cancels it at once, live or not. Keeping a left long-poll upstream ~1 s
so that the client's next identical request joins it was weighed and not done: the npm client
(1.5.x) sends the same live request again after an abort only when a hidden tab becomes
visible again (seconds or more later); its other aborts are followed by a different request
(a refresh after `forceDisconnectAndRefresh` or a system wake is a catch-up without `live`;
its own live-request timeout, 45 s, is past the engine's 20 s long-poll) or by none
(unsubscribe, a closed tab). Measured with the npm client through the proxy (its fetches
recorded): unsubscribe, forceDisconnectAndRefresh x5, requestSnapshot x5 (changes_only), SSE
forceDisconnectAndRefresh x5: 0 of 19 aborted live requests re-sent identically within 1 s;
only with `liveRequestTimeoutMs` (2 s) below the engine's long-poll (60 s): 4 of 5. There a
keep would save one engine request per client per timeout; by default it would save none and
hold an engine connection for a gone client after every closed tab.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proxy.errors import ProxyError
from proxy.http.wire import Request
from proxy.upstream.broadcast import Broadcast
from proxy.upstream.cache import CacheKey
from proxy.upstream.client import (
    BodyError,
    UpstreamOptions,
    UpstreamResponse,
    connection_failed,
    read_error_body,
)
from proxy.upstream.headers import Head
from proxy.upstream.held import Hold, HoldEnded
from proxy.upstream.respond import Outcome, complete, streaming

logger = logging.getLogger(__name__)

#: Length-delimited engine bodies up to this size are read whole and sent in one write.
WHOLE_BODY_LIMIT = 1024 * 1024
#: Seconds an error answer's body may take in all (`read_error_body`), unless told.
ERROR_BODY_SECONDS = 30.0


class Flight:
    """One engine request shared by every client waiting for the same answer."""

    __slots__ = (
        "_body",
        "_changed",
        "broken",
        "chunks",
        "complete",
        "failure",
        "finished",
        "head",
        "held",
        "key",
        "revoked",
        "task",
        "waiters",
    )

    def __init__(self, key: CacheKey, held: bool = False) -> None:
        self.key = key
        #: A long-poll (the engine holds it until a change comes): `Flights.end_held` ends
        #: its wait for the headers when access may have been withdrawn.
        self.held = held
        self.revoked = False
        self.head: Head | None = None
        self.chunks: list[bytes] = []
        self.complete = False  # the whole body arrived
        self.finished = False  # nothing more will happen (complete, failed or broken)
        self.broken = False  # the body stream failed after the headers
        self.failure: ProxyError | None = None  # failed before the headers
        self.waiters = 0
        self.task: asyncio.Task[None] | None = None
        self._body: bytes | None = None
        # Each waiter waits on a future of its own (see `upstream.broadcast`), so a waiter
        # being cancelled never cancels the others' wait.
        self._changed = Broadcast()

    def notify(self) -> None:
        self._changed.notify()

    def changed(self) -> asyncio.Future[None]:
        """Done at the next change (headers, a chunk, the end): await it."""
        return self._changed.wait()

    def body(self) -> bytes:
        if self._body is None:
            self._body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        return self._body


#: Sends the flight's engine request (raises `ProxyError` before any headers).
Opener = Callable[[], Awaitable[UpstreamResponse]]
#: Turns the engine response's headers into the `Head` every waiter gets.
HeadMaker = Callable[[UpstreamResponse], Head]
#: Called once with a flight whose whole body arrived (to keep it in the cache).
OnComplete = Callable[[Flight], None]


class Flights:
    """The flights in progress, by key. Owned by one forwarder; event loop thread only."""

    def __init__(self) -> None:
        self._flights: dict[CacheKey, Flight] = {}
        #: Every flight's task until it is done, forgotten ones included (a flight whose last
        #: waiter left, or ended: `close` waits for all of them, as `sse.SharedStreams` does).
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._flights

    def join(
        self,
        key: CacheKey,
        open_: Opener,
        make_head: HeadMaker,
        on_complete: OnComplete,
        *,
        held: bool = False,
        error_timeout: float = ERROR_BODY_SECONDS,
    ) -> tuple[Flight, bool]:
        """The flight for `key`, started if there is none; True when it already existed.
        `held`: a long-poll's (see `end_held`); `error_timeout`: the seconds an error
        answer's body may take in all (`read_error_body`)."""
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = Flight(key, held)
            self._flights[key] = flight
            task = asyncio.get_running_loop().create_task(
                self._fly(flight, open_, make_head, on_complete, error_timeout)
            )
            flight.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        flight.waiters += 1
        return flight, joined

    def leave(self, flight: Flight) -> None:
        """A waiter is done; the last one to leave cancels a flight nobody needs any more."""
        flight.waiters -= 1
        if flight.waiters == 0 and not flight.finished:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            if flight.task is not None:
                flight.task.cancel()

    def end_held(self) -> None:
        """Access may have been withdrawn: every long-poll flight still waiting for the
        engine's headers is forgotten (a later request starts a new one, authorised again)
        and its waiters are woken to end their answers (`wait`); the engine request
        is cancelled when the last of them leaves."""
        for key, flight in list(self._flights.items()):
            if flight.held and flight.head is None and not flight.finished:
                del self._flights[key]
                flight.revoked = True
                flight.notify()

    async def close(self) -> None:
        """Cancel shared requests still running, forgotten ones too, and wait until each has
        ended (app shutdown)."""
        tasks = list(self._tasks)
        self._flights.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _fly(
        self,
        flight: Flight,
        open_: Opener,
        make_head: HeadMaker,
        on_complete: OnComplete,
        error_timeout: float,
    ) -> None:
        """The shared engine request: headers, then every body chunk, told to all waiters."""
        upstream: UpstreamResponse | None = None
        try:
            try:
                upstream = await open_()
            except ProxyError as exc:
                flight.failure = exc
                return
            try:
                flight.head = make_head(upstream)
            except Exception:
                # A bug of ours, not the engine's failure: each waiter gets the 500 the
                # direct path answers, and it is logged now (it was a 502 "the sync
                # engine connection failed", logged only as a task exception never
                # retrieved: chaos seed 979's KeyError from the cache).
                logger.exception("unexpected error on a shared engine answer")
                flight.failure = ProxyError("internal_error", "internal error")
                return
            flight.notify()
            if flight.head.status >= 400:
                # Read whole, bounded, however it is framed (`wait` gives it to each waiter
                # whole, to be scrubbed): a broken flight, each waiter's 502, when it is too
                # long or too slow.
                error = await read_error_body(upstream, error_timeout)
                if error is None:
                    flight.broken = True
                    return
                flight.chunks.append(error)
            else:
                try:
                    async for chunk in upstream.content.iter_any():
                        flight.chunks.append(chunk)
                        flight.notify()
                except BodyError as exc:
                    logger.warning("upstream stream broke (%s)", type(exc).__name__)
                    flight.broken = True
                    return
            flight.complete = True
            upstream.release()
            upstream = None
        finally:
            if upstream is not None:
                upstream.close()
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            flight.finished = True
            # A cancelled task keeps its CancelledError, whose traceback keeps this frame,
            # which keeps `flight` and every chunk it read: with `flight.task` that is a
            # cycle, freed only by the cyclic collector, which the real proxy runs rarely
            # (`tune_gc`): ~1 MB kept per client that left a big answer early (attack 11:20).
            flight.task = None
            flight.notify()
        if flight.head is not None:
            on_complete(flight)


async def settled(flight: Flight, hold: Hold | None = None) -> None:
    """Until the flight's headers came or it finished without them (failed). `hold`: a
    long-poll's; `HoldEnded` if it ended before the flight's headers came (the token
    expired, or the flight was revoked: `Flights.end_held`). The waiter's own `Broadcast`
    future is what the hold's end completes: no task, frame or timer more per held waiter
    (issue 13: memory per held client)."""
    while flight.head is None and not flight.finished:
        if hold is None:
            await flight.changed()
            continue
        if flight.revoked or hold.over:
            raise HoldEnded
        changed = hold.waking = flight.changed()
        try:
            await changed
        finally:
            hold.waking = None
    if hold is not None:
        hold.release()
        if flight.revoked and flight.head is None:
            raise HoldEnded


async def wait(
    flight: Flight,
    request: Request,
    options: UpstreamOptions,
    *,
    joined: bool,
    hold: Hold | None = None,
    check: Callable[[], None] | None = None,
) -> Outcome:
    """One client's side of a flight: its own response, written at its own pace, once the
    headers came (`settled`, with `hold`). `check`: called then, before anything is sent
    (the flight's failure included); what it raises drops this client's answer (the
    forwarder's `Reauthorise`)."""
    await settled(flight, hold)
    if check is not None:
        check()
    head = flight.head
    if head is None:
        raise (flight.failure or connection_failed(options)).copy()
    cache = "collapsed" if joined else "-"
    length = head.content_length
    if flight.complete or head.status >= 400 or (length is not None and length <= WHOLE_BODY_LIMIT):
        while not flight.finished:
            await flight.changed()
        if not flight.complete:
            raise connection_failed(options)
        return Outcome(complete(head, flight.body()), head.status, cache)
    response = streaming(head)
    outcome = Outcome(response, head.status, cache)
    try:
        await response.prepare(request)
        sent = 0
        while True:
            while sent < len(flight.chunks):
                await response.write(flight.chunks[sent])
                sent += 1
            if flight.finished:
                break
            await flight.changed()
        if flight.broken:
            outcome.failure = ("error", "upstream_broken_stream")
            if request.transport is not None:
                request.transport.close()
            return outcome
        await response.write_eof()
    except ConnectionError:
        outcome.failure = ("client_gone", "client_disconnected")
    return outcome
