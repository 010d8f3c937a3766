"""Send a request to the engine and stream its answer back: cached, collapsed, or direct.

Headers come back once the engine answers (bounded by the first-byte timeout, which must
exceed the engine's 20 s long-poll hold). Three ways through, chosen per request by
`Forwarder.forward`:

- **cache hit**: a complete answer the engine marked shareable, served from memory
  (`upstream.cache`); the engine is not asked.
- **collapsed** (GET, not SSE, `collapse: true`): requests with the same key share one
  engine request (`upstream.collapsing`).
- **shared SSE stream** (GET, live SSE, `collapse: true`): one engine stream per shape
  fanned out to its SSE clients, each at its own position (`upstream.sse`); a client the
  stream cannot place goes direct.
- **direct** (SSE clients behind a shared stream, POST subsets, DELETE, or
  `collapse: false`): one engine request per client, streamed unbuffered.

Response headers come from the engine, which never sees who asked; per-client headers (CORS,
request id, Vary) are added by the app when the response is prepared. A length-delimited body
up to `WHOLE_BODY_LIMIT` is read whole and sent with its headers in one write, which saves a
syscall per request. If the client goes away, the handler is cancelled (the server runs with
`handler_cancellation=True`) or its write fails, and the engine response is closed instead of
returning a half-read connection to the pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Protocol

from yarl import URL

from proxy.connection_terms import SEND_TIMEOUT
from proxy.errors import ProxyError
from proxy.http.wire import Request, Response, StreamResponse
from proxy.limits.admission import Permit
from proxy.metrics import Metrics
from proxy.upstream import collapsing, sse
from proxy.upstream.cache import CachedResponse, CacheKey, ResponseCache
from proxy.upstream.client import (
    BodyError,
    UpstreamOptions,
    UpstreamPool,
    UpstreamResponse,
    connection_failed,
    read_error_body,
    send,
)
from proxy.upstream.collapsing import WHOLE_BODY_LIMIT, Flight, Flights
from proxy.upstream.headers import (
    Head,
    private_cache_control,
    shared_ttl,
    upstream_request_headers,
    upstream_response_headers,
)
from proxy.upstream.held import (
    LIVE_CACHE_CONTROL,
    Deadlines,
    Hold,
    HoldEnded,
    ended_long_poll,
)
from proxy.upstream.respond import Outcome, complete, from_cache, streaming
from proxy.upstream.url import is_handle_definition, with_param

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """What to ask the engine for one client request, as the policy decided it."""

    method: str  # GET, HEAD, POST (subset body) or DELETE
    url: URL  # built from scratch, secret included: never logged
    url_text: str
    body: bytes | None = None
    live: bool = False
    sse: bool = False
    #: Every caller gets these bytes: keep the engine's (public) cache headers so a CDN may
    #: share them. Otherwise they are made private to the caller.
    shared: bool = False
    #: May be answered from (and kept in) the response cache, and collapsed.
    cacheable: bool = True
    #: `upstream.url.definition_key` of the shape (None: not a shape request).
    definition: str | None = None
    #: The handle the client named (None at offset=-1/now, where the engine ignores it).
    handle: str | None = None
    #: offset=-1 or now: the answer names whatever handle is current for the definition.
    initial: bool = False
    #: When the caller's token expires (wall clock; None: anonymous): a live answer (an SSE
    #: stream, shared or not; a long-poll) ends cleanly then, and the client goes on with a
    #: fresh token (or gets its 401). See `upstream.held`.
    deadline: float | None = None
    #: `Forwarder.revocations` when the request was authorised (None: not checked): a live
    #: answer whose hold begins after a later revocation (a reload while its engine request
    #: was on its way) is over at once, as if it had been held when access was withdrawn.
    epoch: int | None = None
    #: Wall clock (None: anonymous): a non-live answer whose headers come at or after it is
    #: not sent but authorised again (`Reauthorise`), which its token no longer passes (the
    #: usual 401): max(the token's `exp` plus its issuer's leeway, when the request was
    #: authorised plus `MIN_HOLD`). A snapshot, catch-up or subset whose query outlasted the
    #: token is not delivered after it, as a long-poll is ended at its `exp`; one whose
    #: token was accepted within the leeway still gets `MIN_HOLD` seconds for its answer
    #: (its re-authorisation would pass, and the request would go round again to the 503).
    answer_by: float | None = None
    #: A subset snapshot (a POST, or a GET whose engine URL carries one): its engine answer
    #: may come as late as the engine's subset query may run (`subset_wait`).
    subset: bool = False
    #: The proxy refuses the request unless the engine refuses it first (`proxy.http.handlers.
    #: finish`): only the engine's error answer is read, never a body of rows. Always direct.
    refused: bool = False


#: The least time the proxy waits for the engine's answer to a subset snapshot: the engine's
#: default `--snapshot-timeout` (300 s, how long a subset query may run in Postgres before it
#: is cancelled into a 503 `snapshot_timeout`; the answer is sent only once the query ended)
#: and 10 s for its queue and its answer. A subset query of 80 s on a big table is the
#: engine's 200: `upstream.first_byte_timeout` (75 s by default, set for a long-poll's 20 s
#: hold and a snapshot chunk's 60 s wait, the engine's longest silences otherwise) made it
#: the proxy's 504 (a slow but legitimate answer cut before the engine would give up).
SUBSET_WAIT = 310.0


def subset_wait(options: UpstreamOptions) -> float:
    """How long a subset snapshot's engine answer is waited for (and any silence within its
    body): `first_byte_timeout`, and at least `SUBSET_WAIT`. An engine run with a longer
    `--snapshot-timeout` needs a `first_byte_timeout` above it (docs/proxy-errors.md)."""
    return max(options.first_byte_timeout, SUBSET_WAIT)


#: How a long-poll the proxy ended is logged (access log `outcome`, `reason`).
HOLD_ENDED = ("ok", "hold_ended")


class Reauthorise(Exception):
    """Access was revoked (a reload, an issuer's key dropped: `Forwarder.end_streams`), or
    the caller's token expired (`Target.answer_by`), after the request was authorised and
    before any byte of its answer went out: `proxy.http.handlers.serve` authorises it again
    under the current config, as if it had arrived then. Raised where the request could have
    waited across one (its authorisation, the wait for an engine connection:
    `limits.pool_wait`; a non-live answer's wait for the engine's headers): sent as
    authorised, a catch-up got the changes written after the reload, and a shared SSE
    stream was opened under the withdrawn rule after the reload had ended every other."""


class Revocable(Protocol):
    """A live request held outside a task (`proxy.http.fastlane`)."""

    def revoke(self) -> None: ...


class Registering(Revocable, Protocol):
    """A fast-lane live request whose token deadline goes into `Deadlines` late (see
    `FAST_DEADLINE_DELAY`)."""

    def register(self, deadlines: Deadlines) -> bool: ...


#: A fast-lane long-poll's token deadline is put into `Forwarder.deadlines` by one sweep at
#: most this many seconds after it is held, not by each request: most are answered long
#: before (a client behind the tip is answered at once), and a `Deadlines` entry made and
#: dropped per request cost the lane ~0.5 µs, and ~5 µs when it made and cancelled a loop
#: timer (a lone client's next long-poll). Never late: a held answer's deadline is at least
#: `MIN_HOLD` (2 s) after it is held, and the sweep registers it at that same deadline.
FAST_DEADLINE_DELAY = 0.5


class Admit(Protocol):
    """Admits one new engine request (per-principal limits): raises 429/503, or returns the
    permit to release when that engine request is over. Only called when the engine is
    asked. `continuing`: the engine request an admitted client request goes on with (see
    `Admission.admit`), which no per-principal limit refuses."""

    def __call__(self, *, continuing: bool = False) -> Awaitable[Permit]: ...


#: (engine cache-control values, max-age cap, live request, live max-age, shared answer)
_MemoKey = tuple[tuple[str, ...], int | None, bool, float, bool]
_MEMO_MAX = 256


class Forwarder:
    """The app's engine access: the connection pool, the in-flight requests, the response cache.

    Owned by one app (no module state); used from its event loop only.
    """

    def __init__(self, pool: UpstreamPool, cache: ResponseCache, metrics: Metrics) -> None:
        self.pool = pool
        self.cache = cache
        self.metrics = metrics
        self._flights = Flights()
        self._streams = sse.SharedStreams()
        #: The engine's `electric-server` value, once it has answered (the last one it
        #: gave: an engine upgraded behind a running proxy is named as it names itself).
        #: Until then the proxy's own answers carry `ENGINE_SERVER` (`proxy.app.on_prepare`).
        self.server_name: str | None = None
        # Engine cache-control values repeat (a handful of shapes); rewrite each once. A
        # plain dict emptied when full: an LRU's lookup cost more than the rewrite it saves.
        self._cache_control: dict[_MemoKey, tuple[str, float]] = {}
        #: The token deadlines of every held answer (`upstream.held`): one timer per tick
        #: that has any, not one per held client.
        self.deadlines = Deadlines()
        #: Live answers held straight from the engine (a long-poll waiting for its headers,
        #: an SSE stream passed through), ended by `end_streams`.
        self._holds: set[Hold] = set()
        #: How many times `end_streams` ran (see `Target.epoch`).
        self.revocations = 0
        #: Live fast-lane requests waiting for the engine (`proxy.http.fastlane`): each has a
        #: `revoke()` that ends it as a long-poll timeout ends. Those held since the last
        #: sweep are in `fast_new` instead (see `FAST_DEADLINE_DELAY`), the others here.
        self.fast_held: set[Revocable] = set()
        self.fast_new: set[Registering] = set()
        self.fast_sweep: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    @property
    def shared_streams(self) -> int:
        """Engine SSE streams shared by this proxy's SSE clients right now."""
        return len(self._streams)

    def end_streams(self) -> None:
        """End every live answer authorised so far (access may have been withdrawn: a config
        reload, an issuer's key dropped): every shared SSE stream and SSE stream passed
        straight through, each client's response cleanly (they reconnect); every long-poll
        waiting for the engine, as a long-poll timeout ends (`upstream.held`)."""
        self.revocations += 1
        self._streams.end_all()
        holds, self._holds = self._holds, set()
        for hold in holds:
            hold.expire()
        self._flights.end_held()
        for fast in [*self.fast_held, *self.fast_new]:
            fast.revoke()

    def still_authorised(self, target: Target) -> None:
        """Raise `Reauthorise` if access was revoked since `target` was authorised, or its
        token is past `Target.answer_by`."""
        if target.epoch is not None and target.epoch != self.revocations:
            raise Reauthorise
        if target.answer_by is not None and time.time() >= target.answer_by:
            raise Reauthorise

    def sweep_fast_later(self) -> None:
        """Register the deadlines of `fast_new` in `FAST_DEADLINE_DELAY` seconds and move
        them to `fast_held` (fast-lane holds call it when no sweep is due)."""
        if self.fast_sweep is None:
            loop = asyncio.get_running_loop()
            self.fast_sweep = loop.call_later(FAST_DEADLINE_DELAY, self._register_fast)

    def _register_fast(self) -> None:
        self.fast_sweep = None
        items, self.fast_new = self.fast_new, set()
        held = self.fast_held
        for item in items:
            if item.register(self.deadlines):
                held.add(item)

    def hold(self, target: Target, ceiling: float | None = None) -> Hold:
        """The bounds of a live answer's wait for the engine (`upstream.held`): its token's
        expiry, `ceiling` (wall clock) if any, and the next `end_streams`. Give it back with
        `unhold`."""
        hold = Hold(target.deadline, self.deadlines, ceiling)
        if target.epoch is not None and target.epoch != self.revocations:
            hold.expire()  # (authorised before a revocation that came before its hold)
        else:
            self._holds.add(hold)
        return hold

    def unhold(self, hold: Hold) -> None:
        self._holds.discard(hold)
        hold.release()

    def ended_long_poll(self, target: Target, options: UpstreamOptions) -> Response | None:
        """The answer to a long-poll ended by the proxy, as the engine's timeout answer."""
        cache_control, _ = self.cache_control((LIVE_CACHE_CONTROL,), options, True, target.shared)
        return ended_long_poll(target.url, target.method, cache_control)

    async def close(self) -> None:
        """Cancel shared requests and streams still running (app shutdown)."""
        if self.fast_sweep is not None:
            self.fast_sweep.cancel()
            self.fast_sweep = None
        await self._flights.close()
        await self._streams.close()

    async def error_body(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        request_id: str,
        status: int,
        limit: int = 64 * 1024,
    ) -> bytes | None:
        """The body of the engine's answer to `target` when it is a `status` error of at most
        `limit` bytes, asked for directly (no cache, no collapsing, nothing sent to the
        client); None for any other answer or a failure. For a HEAD whose bodiless error
        must be read as the GET's (`proxy.http.handlers.blame_head`)."""
        try:
            upstream = await self._open(request, target, options, request_id)
        except ProxyError:
            return None
        try:
            length = upstream.content_length
            if upstream.status != status or length is None or length > limit:
                return None
            return await upstream.content.readexactly(length) if length else b""
        except BodyError:
            return None
        finally:
            upstream.release()  # (reused only when read whole)

    async def forward(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        request_id: str,
        admit: Admit | None = None,
    ) -> Outcome:
        """Answer `request` with the engine's answer to `target`.

        Raises `UpstreamTimeout` (504) or `UpstreamError` (502) if no response headers arrive;
        once streaming has begun, an upstream failure closes the client connection so the
        client sees a truncated response, never a well-formed one with missing data.
        `admit` is awaited only when a new engine request is needed (not for a cache hit or a
        request joining a flight) and its permit is held until that engine request is over.
        Raises `Reauthorise` when access was revoked before the engine was asked.
        """
        self.still_authorised(target)
        if target.subset and options.first_byte_timeout < SUBSET_WAIT:
            options = replace(options, first_byte_timeout=subset_wait(options))
        if target.refused:
            return await self._admitted_direct(request, target, options, request_id, None, admit)
        if target.sse and target.live and target.method == "GET" and options.collapse:
            outcome = await self._shared_sse(request, target, options, request_id, admit)
            if outcome is not None:
                return outcome
        if target.method != "GET" or target.sse or not target.cacheable:
            return await self._admitted_direct(request, target, options, request_id, None, admit)
        headers = request.headers
        key: CacheKey = (
            # (an answer every caller shares keeps the engine's public cache headers, one
            # private to its caller does not: never one for the other, though the URL is
            # the same, e.g. a named shape and a table rule reading the same rows)
            "GET" if target.shared else "GET private",
            target.url_text,
            headers.get("Accept-Encoding", ""),
            headers.get("Accept", ""),
            headers.get("If-None-Match", ""),
        )
        if options.cache and self.cache.enabled:
            entry = self.cache.get(key)
            if entry is not None and entry.initial:
                return await self._revalidate(
                    request, target, key, entry, options, request_id, admit
                )
            if entry is not None:
                self.metrics.cache_hit()
                return Outcome(
                    from_cache(entry, self.cache.now() - entry.stored_at), entry.status, "hit"
                )
            self.metrics.cache_miss()
        if options.collapse:
            return await self._collapsed(request, target, key, options, request_id, admit)
        return await self._admitted_direct(request, target, options, request_id, key, admit)

    # --- engine answers ----------------------------------------------------------------

    async def _open(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        request_id: str,
        if_none_match: str | None = None,
        shared: bool = False,
    ) -> UpstreamResponse:
        request_headers = upstream_request_headers(request.headers, request_id, shared)
        if if_none_match is not None:
            request_headers["if-none-match"] = if_none_match
        return await send(
            self.pool,
            self.metrics,
            target.method,
            target.url,
            request_headers,
            target.body,
            options,
        )

    def head(
        self,
        upstream: UpstreamResponse,
        options: UpstreamOptions,
        target: Target,
        cacheable: bool,
    ) -> Head:
        raw = upstream.headers
        server = raw.get("electric-server")
        if server is not None and server != self.server_name:
            self.server_name = server
        values = tuple(raw.getall("Cache-Control", ()))
        live = target.live
        cache_control, ttl = self.cache_control(values, options, live, target.shared)
        if not (cacheable and options.cache) or upstream.status != 200:
            ttl = 0.0  # errors, 409 must-refetch, 304 (per client) and POSTs are never kept
        elif not live and not target.initial and "electric-up-to-date" in raw:
            ttl = 0.0  # the tip of the log: the next write makes it stale (see upstream.cache)
        elif target.initial and "etag" not in raw:
            ttl = 0.0  # an initial answer is kept only if it can be revalidated
        head = Head(
            status=upstream.status,
            reason=upstream.reason,
            headers=tuple(
                upstream_response_headers(raw.items(), options.secret_forms, options.secret_marker)
            ),
            content_length=upstream.content_length,
            cache_control=cache_control,
            ttl=ttl,
        )
        self._observe(target, head)
        return head

    def cache_control(
        self, values: tuple[str, ...], options: UpstreamOptions, live: bool, shared: bool
    ) -> tuple[str, float]:
        """(client-facing Cache-Control, seconds a shared cache may keep the answer) for the
        engine's Cache-Control `values` (see `upstream.headers`); each distinct one rewritten
        once."""
        memo_key = (values, options.max_age_cap, live, options.live_max_age, shared)
        rewritten = self._cache_control.get(memo_key)
        if rewritten is None:
            ttl = shared_ttl(values, live=live, live_max_age=options.live_max_age)
            if shared:
                # Every caller gets these bytes: Electric's own headers, CDN sharing included.
                client_value = ", ".join(values) if values else "no-cache"
            else:
                client_value = private_cache_control(values, options.max_age_cap)
            rewritten = (client_value, ttl)
            if len(self._cache_control) >= _MEMO_MAX:
                self._cache_control.clear()
            self._cache_control[memo_key] = rewritten
        return rewritten

    def _observe(self, target: Target, head: Head) -> None:
        """Drop cached answers the engine's answer shows to be dead (see `upstream.cache`).

        A 409 for a handle: that handle is gone. A DELETE that succeeded: every handle of the
        definition is gone. A fresh initial answer naming handle H: the definition's answers
        of other handles are stale (not retired: answers racing a rotation may arrive out of
        order, and only the engine's 409 says for sure which handle is dead).
        """
        definition = target.definition
        if definition is None or not self.cache.enabled:
            return
        handle = head.get("electric-handle")
        if head.status == 409:
            dropped = self.cache.retire(definition, target.handle) if target.handle else 0
            dropped += self.cache.evict_definition(definition, initial_only=True)
            if handle is not None:
                dropped += self.cache.evict_definition(definition, keep_handle=handle)
        elif target.method == "DELETE" and head.status < 300 and is_handle_definition(definition):
            dropped = self.cache.retire_handle(target.handle) if target.handle else 0
        elif target.method == "DELETE" and head.status < 300:
            handles = self.cache.handles_of(definition)
            dropped = sum(self.cache.retire(definition, h) for h in handles)
            if target.handle is not None:
                dropped += self.cache.retire(definition, target.handle)
            dropped += self.cache.evict_definition(definition)
        elif head.status == 200 and target.initial and handle is not None:
            dropped = self.cache.evict_definition(definition, keep_handle=handle)
        else:
            return
        if dropped:
            self.metrics.cache_evicted(dropped)

    def _store(self, key: CacheKey, target: Target, head: Head, body: bytes) -> None:
        if head.ttl <= 0 or not self.cache.enabled:
            return  # (a cache turned off by a reload keeps no new entries: see _head)
        now = self.cache.now()
        entry = CachedResponse(
            status=head.status,
            reason=head.reason,
            headers=head.headers,
            cache_control=head.cache_control,
            body=body,
            stored_at=now,
            expires_at=now + head.ttl,
            handle=head.get("electric-handle"),
            definition=target.definition,
            initial=target.initial,
            etag=head.get("etag"),
        )
        if self.cache.put(key, entry):
            self.metrics.cache_stored(self.cache.bytes_used)

    # --- direct: one engine request per client -----------------------------------------

    async def _admitted_direct(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        request_id: str,
        key: CacheKey | None,
        admit: Admit | None,
    ) -> Outcome:
        permit = await admit() if admit is not None else None
        try:
            self.still_authorised(target)  # (a reload while it waited for a connection)
            return await self._direct(request, target, options, request_id, key)
        finally:
            if permit is not None:
                permit.release()  # the answer was streamed out (or the client went away)

    async def _direct(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        request_id: str,
        key: CacheKey | None,
    ) -> Outcome:
        if target.live and not target.sse and target.method in ("GET", "HEAD"):
            return await self._held(request, target, options, request_id, key)
        upstream = await self._open(request, target, options, request_id)
        # (a DELETE is done by the engine: its answer says so; a live answer has its hold,
        # `_relay_held`, which ends it cleanly)
        if not target.live and target.method != "DELETE":
            try:
                # (a reload while the engine worked on it: a subset, a catch-up read after
                # it, attack 00:02; or its token expired meanwhile: `Target.answer_by`)
                self.still_authorised(target)
            except Reauthorise:
                upstream.close()
                raise
        return await self.relay(request, target, options, upstream, key)

    async def _held(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        request_id: str,
        key: CacheKey | None,
    ) -> Outcome:
        """A long-poll sent straight to the engine, within its `Hold`: ended by the proxy
        as a long-poll timeout ends when the hold is over first (`upstream.held`)."""
        hold = self.hold(target)
        opening = asyncio.ensure_future(self._open(request, target, options, request_id))
        try:
            answered = await hold.wait(opening)
        except BaseException:
            opening.cancel()
            raise
        finally:
            self.unhold(hold)
        if not answered:
            ended = self.ended_long_poll(target, options)
            if ended is not None:
                opening.cancel()
                await asyncio.gather(opening, return_exceptions=True)
                if not opening.cancelled() and opening.exception() is None:
                    opening.result().close()  # (it answered as it was cancelled)
                return Outcome(ended, None, "-", HOLD_ENDED)
        upstream = await opening
        return await self.relay(request, target, options, upstream, key)

    async def relay(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        upstream: UpstreamResponse,
        key: CacheKey | None,
    ) -> Outcome:
        """The client's answer from an engine answer whose headers arrived (`_direct`'s second
        half, also where `proxy.http.fastlane` hands over an answer too long to take whole)."""
        whole = False
        try:
            head = self.head(upstream, options, target, cacheable=key is not None)
            if target.refused and head.status < 400:
                # (the proxy's refusal goes instead: the body is not read, the connection
                # closed; any rows in it would be the policy's own, but none go out)
                return Outcome(complete(head, b""), head.status)
            if target.method == "HEAD":  # headers only; Content-Length says what a GET would send
                whole = True
                bodiless = complete(head, b"")
                if head.content_length is not None:
                    bodiless.headers["Content-Length"] = str(head.content_length)
                return Outcome(bodiless, head.status)
            if head.status >= 400:
                # Read whole however it is framed, and scrubbed by `handlers.finish` before
                # any of it goes out: never streamed as it comes (a hop's chunked error page
                # echoing the engine URL, secret included: attack, LOW).
                error = await read_error_body(upstream, options.first_byte_timeout)
                if error is None:
                    raise connection_failed(options)
                whole = True
                return Outcome(complete(head, error), head.status)
            length = head.content_length
            whole_limit = WHOLE_BODY_LIMIT
            if head.ttl > 0 and self.cache.enabled:
                whole_limit = max(whole_limit, self.cache.max_entry_bytes)
            if length is not None and length <= whole_limit:
                try:
                    raw = await upstream.content.readexactly(length) if length else b""
                except BodyError:
                    raise connection_failed(options) from None
                whole = True
                if key is not None:
                    self._store(key, target, head, raw)
                return Outcome(complete(head, raw), head.status)
            response = streaming(head)
            outcome = Outcome(response, head.status)
            try:
                await response.prepare(request)
            except ConnectionError:  # (gone before its head went out: as below, not a 500)
                outcome.failure = ("client_gone", "client_disconnected")
                return outcome
            if target.sse and target.live and head.status == 200:
                whole = await self._relay_held(request, target, upstream, response, outcome)
                return outcome
            spliced = None
            if response.content_length == length and not (response.chunked or response.empty_body):
                # (its body passed on unchanged: from the engine's socket to the client's)
                spliced = upstream.splice(
                    request.transport, options.first_byte_timeout, SEND_TIMEOUT
                )
            try:
                if spliced is not None:
                    await spliced
                else:
                    async for chunk in upstream.content.iter_any():
                        if upstream.content.is_eof():
                            await response.write_eof(chunk)  # last chunk and terminator together
                            break
                        await response.write(chunk)
            except BodyError as exc:
                outcome.failure = ("error", "upstream_broken_stream")
                logger.warning(
                    "upstream stream broke (%s); closing client connection", type(exc).__name__
                )
                if request.transport is not None:
                    request.transport.close()
                return outcome
            except ConnectionError:
                outcome.failure = ("client_gone", "client_disconnected")
                return outcome
            await response.write_eof()
            whole = True
            return outcome
        finally:
            if whole:
                upstream.release()
            else:
                upstream.close()

    async def _relay_held(
        self,
        request: Request,
        target: Target,
        upstream: UpstreamResponse,
        response: StreamResponse,
        outcome: Outcome,
    ) -> bool:
        """An SSE stream passed straight through (not shared), within its `Hold`: when the
        caller's token expires, access is revoked or the response reaches its ceiling
        (`sse.MAX_CLIENT_RESPONSE`, as on a shared stream: an engine stream that never ended,
        sending only keep-alives, held it open for as long as it lasted), it ends between two
        reads of the engine stream, as a shared stream ends (`upstream.sse`): the client
        buffers a batch until its up-to-date, so a batch cut there is one it has not applied,
        and it reconnects from its last up-to-date. A compressed stream cannot end cleanly
        mid-way (its client would read a truncated compressed body): its connection is closed
        instead, which the client retries the same way. True if the engine's stream was read
        to its end."""
        content = upstream.content
        identity = (upstream.headers.get("Content-Encoding") or "identity").strip().lower()
        hold = self.hold(target, sse.response_ceiling())
        try:
            while True:
                reading = asyncio.ensure_future(content.read_any())
                try:
                    answered = await hold.wait(reading)
                finally:
                    if not reading.done():
                        reading.cancel()
                if not answered:
                    outcome.failure = HOLD_ENDED
                    if identity != "identity":
                        if request.transport is not None:
                            request.transport.close()
                        return False
                    await response.write_eof()
                    return False
                chunk = reading.result()
                if not chunk:
                    await response.write_eof()
                    return True
                await response.write(chunk)
        except BodyError as exc:
            outcome.failure = ("error", "upstream_broken_stream")
            logger.warning(
                "upstream stream broke (%s); closing client connection", type(exc).__name__
            )
            if request.transport is not None:
                request.transport.close()
            return False
        except ConnectionError:
            outcome.failure = ("client_gone", "client_disconnected")
            return False
        finally:
            self.unhold(hold)

    # --- collapsed: one engine request per distinct key in flight ----------------------

    async def _collapsed(
        self,
        request: Request,
        target: Target,
        key: CacheKey,
        options: UpstreamOptions,
        request_id: str,
        admit: Admit | None = None,
    ) -> Outcome:
        flight, joined = await self._join(
            request, target, key, key, options, request_id, None, admit
        )
        # A long-poll's wait for the headers is bounded by its hold (its token's exp; a
        # revocation comes through the flight: `Flights.end_held`).
        hold = (
            Hold(target.deadline, self.deadlines)
            if target.live and target.method == "GET"
            else None
        )
        if hold is not None and target.epoch is not None and target.epoch != self.revocations:
            hold.expire()  # (authorised before a revocation: `Target.epoch`)
        # Not held: answered as the engine answers, unless access was revoked while the
        # engine worked on it (its rows read after the reload: attack 00:02) or its token
        # expired meanwhile (`Target.answer_by`): checked once the headers came.
        check = functools.partial(self.still_authorised, target) if hold is None else None
        try:
            return await collapsing.wait(
                flight, request, options, joined=joined, hold=hold, check=check
            )
        except HoldEnded:
            ended = self.ended_long_poll(target, options)
            if ended is not None:
                return Outcome(ended, None, "-", HOLD_ENDED)
            return await collapsing.wait(flight, request, options, joined=joined)
        finally:
            if hold is not None:
                hold.release()
            self._flights.leave(flight)

    async def _join(
        self,
        request: Request,
        target: Target,
        flight_key: CacheKey,
        store_key: CacheKey,
        options: UpstreamOptions,
        request_id: str,
        if_none_match: str | None,
        admit: Admit | None,
    ) -> tuple[Flight, bool]:
        """Join the flight for `flight_key`, starting it (and its engine request) if needed.

        A new flight is a new engine request: charged to the client that starts it, for as
        long as the flight runs. Joining a flight in progress costs the engine nothing.
        """
        permit = await admit() if admit is not None and flight_key not in self._flights else None
        try:
            self.still_authorised(target)  # (a reload while it waited for a connection)
        except Reauthorise:
            if permit is not None:
                permit.release()
            raise

        def on_complete(flight: Flight) -> None:
            assert flight.head is not None
            self._store(store_key, target, flight.head, flight.body())

        flight, joined = self._flights.join(
            flight_key,
            lambda: self._open(request, target, options, request_id, if_none_match, True),
            lambda upstream: self.head(upstream, options, target, cacheable=True),
            on_complete,
            held=target.live,
            error_timeout=options.first_byte_timeout,
        )
        if permit is not None:
            if joined or flight.task is None:  # another client started it while we waited
                permit.release()
            else:
                flight.task.add_done_callback(lambda _: permit.release())
        if joined:
            self.metrics.collapsed_request()
        return flight, joined

    # --- shared SSE: one engine stream per shape, every SSE client at its own position ---

    async def _shared_sse(
        self,
        request: Request,
        target: Target,
        options: UpstreamOptions,
        request_id: str,
        admit: Admit | None,
    ) -> Outcome | None:
        """Serve an SSE client from the shared stream of its shape; None: send it direct.

        A new shared stream is a new engine request, charged to the client that starts it
        for as long as the stream runs (as a flight is); joining one costs the engine nothing.
        """
        spec = sse.stream_spec(target.url, request.headers, target.shared, options)
        if spec is None:
            return None
        started: sse.Started | None = None
        tries = 0
        while tries < 3:  # a stream that ends as this client arrives: join the next one
            tries += 1
            if target.epoch is not None and target.epoch != self.revocations:
                # Access was revoked (a reload, an issuer's key dropped: `end_streams`) since
                # this request was authorised: no stream is opened or joined for it under
                # the rule it was authorised by. It had one that ended (a client that fell
                # behind and has taken what it was written, `sse.Continue`; a stream ended
                # before its headers came, RETRY): its response ends cleanly, and its
                # reconnect is decided under the new config. None yet: it is authorised
                # again (`Reauthorise`).
                if started is not None:
                    return await sse.end_started(request, started)
                raise Reauthorise
            if started is not None and started.past(target.deadline):
                # Its token expired while it was on no stream (taking what it was written
                # after it fell behind): no stream is opened or joined for it any more, as
                # none would be for a new request with that token (`sse._read` checks
                # again once the stream it joins has its headers).
                return await sse.end_started(request, started)
            try:
                # (a client going on from an earlier stream is the same request, admitted:
                # its next engine stream is not refused by its principal's limits)
                permit = (
                    await admit(continuing=started is not None)
                    if admit is not None and spec.key not in self._streams
                    else None
                )
            except ProxyError:
                if started is None:
                    raise
                # (no engine connection within the pool wait: its headers went out, so it
                # ends cleanly, and its reconnect gets the 503)
                return await sse.end_started(request, started)
            if target.epoch is not None and target.epoch != self.revocations:
                # (revoked while it waited for an engine connection: as above; the stream
                # it would open would be no other's, `end_streams` having ended them all)
                if permit is not None:
                    permit.release()
                if started is not None:
                    return await sse.end_started(request, started)
                raise Reauthorise
            # (a client going on from an earlier stream opens the next from where it is)
            opening = target if started is None else replace(
                target, url=with_param(target.url, "offset", spec.offset)
            )  # fmt: skip
            stream, joined = self._streams.join(
                spec,
                functools.partial(self._open_shared, request, opening, options, request_id),
                lambda upstream: self.head(upstream, options, target, cacheable=False),
                options.first_byte_timeout,
            )
            if permit is not None:
                if joined or stream.task is None:
                    permit.release()
                else:
                    stream.task.add_done_callback(functools.partial(_release, permit))
            if joined:
                self.metrics.collapsed_request()
                # The stream's own key (equal): this client's copy, a tuple of the shape's
                # parameters, is dropped while it is held (~0.4 KB per SSE client, issue 13).
                spec = replace(spec, key=stream.key)
            try:
                result = await sse.serve(
                    stream,
                    request,
                    spec,
                    options,
                    joined=joined,
                    started=started,
                    deadline=target.deadline,
                    deadlines=self.deadlines,
                )
            finally:
                self._streams.leave(stream)
            if isinstance(result, Outcome):
                return result
            if isinstance(result, sse.Continue):
                spec, started, tries = result.spec, result.started, 0
            elif started is not None:  # (RETRY: the next stream, as any client)
                continue
            elif result is sse.Result.DIRECT:
                return None
            elif result is sse.Result.BEHIND:
                spec = sse.behind(spec)  # a catch-up stream, then that one
        if started is not None:  # (three streams ended as it arrived: it ends too)
            return await sse.end_started(request, started)
        return None

    async def _open_shared(
        self, request: Request, target: Target, options: UpstreamOptions, request_id: str
    ) -> UpstreamResponse:
        """A shared stream's engine request: the first client's, minus what is its own."""
        request_headers = upstream_request_headers(request.headers, request_id, shared=True)
        request_headers.pop("if-none-match", None)  # (an SSE answer's ETag never matches)
        return await send(
            self.pool, self.metrics, "GET", target.url, request_headers, None, options
        )

    # --- revalidated: an initial answer, confirmed by the engine before it is served ----

    async def _revalidate(
        self,
        request: Request,
        target: Target,
        key: CacheKey,
        entry: CachedResponse,
        options: UpstreamOptions,
        request_id: str,
        admit: Admit | None = None,
    ) -> Outcome:
        """Serve a cached `offset=-1` answer only if the engine still names its handle.

        One conditional request (`If-None-Match` with the entry's ETag, which holds the
        handle) per distinct answer in flight, shared like any collapsed request: a 304 means
        the cached bytes are current; a 200 is the new answer (the shape was rotated), which
        replaces the old one and is what this client gets.
        """
        assert entry.etag is not None  # only answers with an ETag are kept as initial
        flight_key: CacheKey = (*key[:4], f"revalidate {entry.etag}")
        # Charged like any new engine request when it starts a flight (a 304 is cheap, but a
        # client repeating cached URLs must not get engine requests past its rate limit).
        flight, joined = await self._join(
            request, target, flight_key, key, options, request_id, entry.etag, admit
        )
        try:
            await collapsing.settled(flight)
            self.still_authorised(target)  # (revoked meanwhile: see `_collapsed`)
            if flight.head is not None and flight.head.status == 304:
                # Confirmed current by the engine just now: fresh again (RFC 9111 4.3.4), so
                # no `Age` from its first fetch (twin 02:02: a tier in front took it as up to
                # an hour old, stale at once; the engine sends no `Age`).
                self.metrics.cache_hit()
                return Outcome(from_cache(entry, 0.0), entry.status, "revalidated")
            self.metrics.cache_miss()
            return await collapsing.wait(flight, request, options, joined=joined)
        finally:
            self._flights.leave(flight)


def _release(permit: Permit, _: object) -> None:
    permit.release()
