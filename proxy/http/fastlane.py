"""The fast lane: a repeated shape GET forwarded by callbacks, with no task or coroutine.

Why: on two cores the proxy's CPU per forwarded request is what bounds its throughput, and in
CPython the task, the chain of a dozen coroutines and the futures between them were a large
part of it (issue 13, bar 4: proxy CPU per uncached forward <= 1.5x nginx's). A request
whose every decision is already made takes this lane; everything else, and anything
unusual on the way, goes through `ProxyApp.handle` as before. A request takes it when:

- it is a `GET /v1/shape` whose (token digest, query) was authorised before under the
  current config and has not expired (`Runtime.prepared`: the token, claims, policy and
  upstream URL are those of that decision; a query whose position parameters, a live
  follower's new offset, handle and cursor, split off (`proxy.http.positions`) by the rest
  of its query and its kind of position, the engine request line made from the decision's
  template with its values), its Origin is allowed, and it is neither SSE nor a subset sent
  as a POST;
- the config sends it straight to the engine: collapsing off, and no response cache;
- its principal is admitted at once (`Admission.admit_now`: under its limits, its held
  requests included for a live one, a pool slot free) and a kept-alive engine connection
  is idle (`UpstreamPool.take_idle`).

Then the request goes out on that connection and `FastAnswer` is told of the answer by the
connection's callbacks (`upstream.client.Listener`). A whole answer (Content-Length up to
`WHOLE_BODY_LIMIT`) is built exactly as `Forwarder.relay` builds it, with the same header
rules, error scrubbing, context and access log, and written by the client connection. An
answer to stream (chunked, or longer) is handed over to a task running `Forwarder.relay`.
If nothing came back on the reused connection (the engine closed it while idle), the request
starts again through `handle`, which retries on a new connection. A client that goes away
closes the engine connection and frees the permit at once, as a cancelled task would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from proxy.auth.claims import TokenVerifier
from proxy.connection_terms import JOIN_BELOW, SEND_TIMEOUT
from proxy.errors import ProxyError
from proxy.http import handlers
from proxy.http.context import new_request_id, next_request_id
from proxy.http.errors import render_proxy_error
from proxy.http.positions import instantiate
from proxy.http.positions import split as split_positions
from proxy.http.wire import CLOCK, Request, Response, StreamResponse
from proxy.limits.admission import Admission, Permit
from proxy.limits.client import client_address
from proxy.runtime import ANONYMOUS, Prepared, PreparedKey, Runtime, RuntimeHolder
from proxy.upstream.client import (
    HIGH_WATER,
    SPLICE_FROM,
    BodyError,
    BodyTruncated,
    InternalError,
    RawHead,
    UpstreamOptions,
    UpstreamResponse,
    can_splice,
    connection_failed,
    failure_error,
    redirected,
)
from proxy.upstream.collapsing import WHOLE_BODY_LIMIT
from proxy.upstream.forward import HOLD_ENDED, Forwarder, Target
from proxy.upstream.headers import kept_raw, upstream_client_lines, without_secret_lines
from proxy.upstream.held import MIN_HOLD, Deadlines
from proxy.upstream.respond import Outcome, complete

if TYPE_CHECKING:
    from proxy.upstream.client import _Connection as EngineConnection

logger = logging.getLogger(__name__)

_SHAPE_PATH = "/v1/shape"
_SHAPE_QUERY = _SHAPE_PATH + "?"


class _Layout:
    """Where things are in an engine answer's raw headers, for one sequence of header names
    (the engine sends the same names in the same order for each kind of answer): worked out
    once per sequence instead of once per answer."""

    __slots__ = ("cache_control", "kept", "length", "pick", "plain", "server", "typed")

    def __init__(self, names: tuple[bytes, ...]) -> None:
        lower = [name.lower() for name in names]
        #: Raw index of the first Content-Length value (-1: none).
        self.length = next(
            (2 * i + 1 for i, name in enumerate(lower) if name == b"content-length"), -1
        )
        #: Raw index of the first electric-server value (-1: none).
        self.server = next(
            (2 * i + 1 for i, name in enumerate(lower) if name == b"electric-server"), -1
        )
        #: Raw indexes of the Cache-Control values.
        self.cache_control = tuple(
            2 * i + 1 for i, name in enumerate(lower) if name == b"cache-control"
        )
        kept = [i for i, name in enumerate(names) if kept_raw(name)]
        #: The engine sent a Content-Type (kept as it is).
        self.typed = any(lower[i] == b"content-type" for i in kept)
        #: No Vary (merged with the proxy's own) and no framing but Content-Length.
        self.plain = b"vary" not in lower and b"transfer-encoding" not in lower
        #: The kept headers as `Name: value` lines, each ending in CRLF (b"" when none):
        #: `kept % pick(raw)`.
        self.kept, self.pick = _kept_lines(names, kept)


def _kept_lines(
    names: tuple[bytes, ...], kept: list[int]
) -> tuple[bytes, Callable[[list[bytes]], Any]]:
    """The kept headers' lines of an answer with these header `names`, as (template, pick):
    `template % pick(raw)` is those lines. The names are the layout's own (it is looked up
    by the exact name sequence), so they go into the template once and each answer's values
    are put in by one `%` (any `%` in a name is escaped); `pick` is an `itemgetter` (one
    value, or a tuple of them), so no Python-level call is made per answer."""
    if not kept:
        return b"", _no_values
    template = b"".join(names[i].replace(b"%", b"%%") + b": %b\r\n" for i in kept)
    return template, itemgetter(*(2 * i + 1 for i in kept))


def _no_values(raw: list[bytes]) -> tuple[()]:
    return ()


#: `Runtime.fast_cors`: at most this many origins remembered per config (any header value).
_CORS_MAX = 256

#: Layouts by header-name sequence (a handful in practice; bounded against an odd engine).
_LAYOUTS: dict[tuple[bytes, ...], _Layout] = {}
_LAYOUTS_MAX = 256


#: The lines of a plain answer that depend only on the engine's Cache-Control, the decision
#: (live, shared), the CORS headers (by identity: `Runtime.fast_cors` keeps one mapping per
#: Origin) and the config: (engine Cache-Control, live, shared, id of the CORS headers) ->
#: (the config's options, the CORS headers, the lines up to the request id, those from it to
#: the CORS lines' end, those from there to the Content-Length value: `electric-server` goes
#: in between when the engine's answer lacks it). `_plain_answer` checks the options and
#: CORS headers are the same objects, so a reload or a reused id never gets another config's
#: lines.
_LINES: dict[
    tuple[bytes, bool, bool, int],
    tuple[UpstreamOptions, Mapping[str, str] | None, str, str, str],
] = {}
_LINES_MAX = 256

#: The last answer's header names and layout: the engine sends answer after answer with the
#: same names, and comparing two lists of names is cheaper than hashing a tuple of them (new
#: bytes objects each time) for the dict lookup.
_LAST: list[Any] = [None, None]


#: The last query string `start` read and its position parameters (`positions.split`): every
#: live follower of a shape at its tip asks for the same offset and cursor after a write.
_LAST_SPLIT: list[Any] = [None, None]


def _plan(names: list[bytes]) -> _Layout:
    """The layout of an answer with these header `names` (`FastAnswer.on_headers` checks
    `_LAST` first, inline)."""
    key = tuple(names)
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _Layout(key)
        if len(_LAYOUTS) < _LAYOUTS_MAX:
            _LAYOUTS[key] = layout
    _LAST[0], _LAST[1] = names, layout
    return layout


class FastConnection(Protocol):
    """The client connection a fast answer goes back to (`proxy.http.protocol.Connection`)."""

    #: (Authorization, `TokenVerifier.digest` of it) of its last fast-lane request.
    fast_token: tuple[str, bytes] | None
    #: `start`'s facts of its last fast-lane request's headers: (the `Request.headers`
    #: object, token digest, Origin, X-Request-Id, the engine request's client header
    #: lines). The connection hands the same headers object to a request whose header
    #: lines are byte for byte the last one's (`Connection._memo`).
    fast_memo: tuple[Any, ...] | None

    def fast_answered(self, request: Request, response: Response) -> None: ...
    def release_parser(self) -> None: ...
    def fast_written(self, request: Request, head: bytes, body: list[bytes]) -> None: ...
    def fast_handover(
        self,
        request: Request,
        answering: Callable[[], Awaitable[StreamResponse]],
        cleanup: Callable[[], None] | None = None,
    ) -> None: ...


class LaneApp(handlers.Services, Protocol):
    """What the fast lane needs of the app (`proxy.app.ProxyApp` is the one implementation):
    what the handlers need (`handlers.Services`: holder, forwarder, admission, metrics...)
    and the lane's own members below. The lane sits below the app and does not import it."""

    #: (holder, forwarder, admission) once the app started (the properties' values).
    lane: tuple[RuntimeHolder, Forwarder, Admission] | None

    def cors_for(
        self, request: Request, *, shape: bool = True
    ) -> tuple[bool, Mapping[str, str] | None]: ...
    async def handle(self, request: Request) -> StreamResponse: ...
    async def answer(self, request: Request, work: Awaitable[StreamResponse]) -> StreamResponse: ...
    def answered(
        self, request: Request, response: StreamResponse | None, status: int = 499
    ) -> None: ...
    def shape_vary(self, request: Request) -> str: ...
    def crashed(self) -> Response: ...


def start(app: LaneApp, request: Request, client: FastConnection) -> FastAnswer | None:
    """Send `request` to the engine by the fast lane, or None if it does not qualify."""
    raw_path = request.raw_path  # (its path is /v1/shape: the target is that, or that and "?")
    if raw_path[:10] != _SHAPE_QUERY and raw_path != _SHAPE_PATH:
        return None
    lane = app.lane  # (`answer_fast` called it only once the app started)
    assert lane is not None
    holder, forwarder, admission = lane
    runtime = holder.current
    options = runtime.options
    cache = runtime.prepared
    if cache is None or options.collapse or (options.cache and forwarder.cache.enabled):
        return None
    headers = request.headers
    memo = client.fast_memo
    if memo is not None and memo[0] is headers:  # (the last request's header lines)
        _, digest, origin, incoming, lines = memo
    else:
        authorization = headers.get("Authorization")
        if authorization is None:  # (an empty one is a token, and a 401: `handlers._claims`)
            digest = handlers.ANONYMOUS_KEY
        else:
            known = client.fast_token
            if known is not None and known[0] == authorization:
                digest = known[1]
            else:
                digest = TokenVerifier.digest(authorization)
                client.fast_token = (authorization, digest)
        origin = headers.get("Origin")
        if origin is not None and len(headers.getall("Origin")) > 1:
            return None  # (several: `ProxyApp.request_origin` decides, in `handle`)
        incoming = headers.get("X-Request-Id")
        lines = upstream_client_lines(headers)
        client.fast_memo = (headers, digest, origin, incoming, lines)
    query = request.query_string
    last = _LAST_SPLIT  # (live followers of one shape at its tip ask the same query)
    if query == last[0]:
        found = last[1]
    else:
        found = split_positions(query)
        last[0], last[1] = query, found
    values = None
    key: PreparedKey
    if found is not None:  # (a follower's offset, handle, cursor: `proxy.http.positions`)
        key = (digest, "", found[0], found[1])
        values = found[2]
    else:
        key = (digest, "", query)
    try:  # (`PreparedCache.get`, as two C calls)
        prepared = cache[key]
    except KeyError:
        if values is None:
            return None
        key, values = (digest, "", query), None  # (a query kept whole: `positions.template`)
        try:
            prepared = cache[key]
        except KeyError:
            return None
    cache.move_to_end(key)
    now = time.time()
    if prepared.expires <= now:
        return None
    if prepared.sse or prepared.upstream_body is not None:
        return None
    known_cors = runtime.fast_cors.get(origin)
    if known_cors is None:  # (the same config's answer for the same Origin: kept)
        known_cors = app.cors_for(request)
        if len(runtime.fast_cors) < _CORS_MAX:
            runtime.fast_cors[origin] = known_cors
    allowed, cors = known_cors
    if not allowed:
        return None
    request_id = next_request_id() if incoming is None else new_request_id(incoming)
    if "\r" not in request_id and "\n" not in request_id:  # (as `client.header_lines`)
        lines = f"{lines}x-request-id: {request_id}\r\n"
    # (a header the client sent as bytes that are not UTF-8 goes on as the same bytes)
    line = prepared.request_line if values is None else prepared.line_template % values
    data = f"{line}{lines}\r\n".encode("utf-8", "surrogateescape")
    engine = forwarder.pool.take_idle(prepared.pool_key)
    if engine is None:
        return None
    principal = prepared.principal  # (`handlers.principal`, inline)
    if principal == ANONYMOUS:
        # (its client address as the general path charges it: an IPv6 client by its /64, a
        # client behind `server.trusted_proxies` by its forwarded address; the raw peer gave
        # such a client a second budget here: attack 05:25)
        trusted = runtime.loaded.config.server.trusted_proxies
        principal = f"{ANONYMOUS} {client_address(request.remote, headers, trusted)}"
    live = prepared.live
    permit = admission.admit_now(principal, prepared.limits, live)
    if permit is None:
        forwarder.pool.put_back(engine)
        return None
    # Committed: from here on this request is answered by the callbacks below.
    context = request.context
    context.request_id = request_id
    context.shape = True
    context.cors = cors
    context.subject, context.table, context.rule = prepared.subject, prepared.table, prepared.rule
    context.live = live
    context.shared = prepared.shared
    metrics = app.metrics
    metrics.token_cache["hit"] += 1  # (`token_cache_lookup(True)` and `upstream_sent()`,
    metrics.upstream_requests += 1  # inline)
    answer = FastAnswer(app, forwarder, client, request, runtime, prepared, permit, engine, values)
    try:
        engine.send_to(data, options.first_byte_timeout, answer)
    except Exception:  # (the engine connection was closing): `handle` answers instead
        logger.debug("a kept-alive engine connection could not be written to", exc_info=True)
        answer.cancel_quietly()
        return None
    if live:
        # A long-poll: ended as a long-poll timeout ends (`upstream.held`) when its token
        # expires or access is revoked (`Forwarder.end_streams`) before the engine answers.
        # Its deadline goes into `Forwarder.deadlines` with the forwarder's next sweep
        # (`FastAnswer.register`), if it is still held then
        # (`upstream.forward.FAST_DEADLINE_DELAY`). `now`: the wall clock.
        answer._held_at = now
        forwarder.fast_new.add(answer)
        if forwarder.fast_sweep is None:
            forwarder.sweep_fast_later()
    return answer


class FastAnswer:
    """One request on the fast lane, told of its engine answer (`upstream.client.Listener`)."""

    __slots__ = (
        "_app",
        "_client",
        "_done",
        "_engine",
        "_epoch",
        "_expiry",
        "_finished",
        "_forwarder",
        "_head",
        "_held_at",
        "_layout",
        "_length",
        "_permit",
        "_plain",
        "_prepared",
        "_request",
        "_runtime",
        "_sent",
        "_splicing",
        "_swept",
        "_values",
    )

    def __init__(
        self,
        app: LaneApp,
        forwarder: Forwarder,
        client: FastConnection,
        request: Request,
        runtime: Runtime,
        prepared: Prepared,
        permit: Permit,
        engine: EngineConnection,
        values: tuple[str, ...] | None = None,
    ) -> None:
        self._app = app
        self._forwarder = forwarder  # (`app.forwarder`, a property: read once)
        self._client = client
        self._request = request
        self._runtime = runtime
        self._prepared = prepared
        #: Its position parameters' values when `prepared` is a template (`_target`).
        self._values = values
        self._permit = permit
        self._engine: EngineConnection | None = engine
        #: `Forwarder.revocations` when it was sent (its decision is the current config's).
        self._epoch = forwarder.revocations
        self._head: RawHead | None = None
        self._layout: _Layout | None = None
        self._length = 0
        self._plain = False
        self._done = False
        self._finished: asyncio.Future[None] | None = None
        self._sent = time.monotonic()
        #: Its key in `Forwarder.deadlines` while held with a token (`register`).
        self._expiry: int | None = None
        #: When it began to be held (`start`; wall clock; for the deadline `register` sets).
        self._held_at = 0.0
        #: Moved from `Forwarder.fast_new` to `fast_held` by a sweep (`register`).
        self._swept = False
        #: The body is being spliced to the client (`_splice`): done when it is over.
        self._splicing: asyncio.Future[None] | None = None

    def register(self, deadlines: Deadlines) -> bool:
        """The forwarder's sweep: if still held, end it at its token's expiry, and never
        before `MIN_HOLD` after it was held; False if it is over."""
        if self._done:
            return False
        self._swept = True
        self._client.release_parser()  # (held: its connection keeps no parser meanwhile)
        deadline = self._prepared.token_exp
        if deadline is not None:
            self._expiry = deadlines.add(max(deadline, self._held_at + MIN_HOLD), self)
        return True

    def expire(self) -> None:
        """Its token expired (`upstream.held.Deadlines`)."""
        self._expiry = None
        self.revoke()

    def revoke(self) -> None:
        """The hold is over: answer as the engine's long-poll timeout, unless the engine
        answered already."""
        if self._done or self._head is not None:
            return
        forwarder = self._forwarder
        target = self._target()
        ended = forwarder.ended_long_poll(target, self._runtime.options)
        if ended is None:
            return
        engine = self._engine
        self._end()
        if engine is not None:
            engine.close()
        request = self._request
        response = handlers.finish(request, self._runtime, Outcome(ended, None, "-", HOLD_ENDED))
        self._respond(response)

    def _unhold(self) -> None:
        forwarder = self._forwarder
        if not self._swept:
            forwarder.fast_new.discard(self)
            return
        forwarder.fast_held.discard(self)
        if self._expiry is not None:
            forwarder.deadlines.discard(self._expiry, self)
            self._expiry = None

    def finished(self) -> asyncio.Future[None]:
        """Done once this request is answered, handed over or given up (server shutdown)."""
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
            if self._done:
                self._finished.set_result(None)
        return self._finished

    def _end(self) -> None:
        self._done = True
        self._engine = None
        self._permit.release()
        if self._prepared.live:
            self._unhold()
        finished = self._finished
        if finished is not None and not finished.done():
            finished.set_result(None)

    def _target(self) -> Target:
        """Its engine request as the general path makes it: with its own URL and handle when
        its decision is a template (`proxy.http.positions.instantiate`)."""
        values = self._values
        prepared = self._prepared if values is None else instantiate(self._prepared, values)
        return handlers.target_of(prepared, "GET", None)

    # --- Listener --------------------------------------------------------------------------

    def on_headers(self, head: RawHead) -> None:
        if self._done:
            return
        took = time.monotonic() - self._sent
        if self._forwarder.revocations != self._epoch or (took >= MIN_HOLD and self._expired()):
            # Access was revoked (a reload, an issuer's key dropped) while the engine worked
            # on it (a live one was ended then: `revoke`), or its token expired meanwhile (a
            # non-live answer: `upstream.forward.Target.answer_by`; `took`: it was
            # authorised when sent): its answer, read after that, is dropped, and the request
            # is decided again under the current config by `handle` (attack 00:02: a
            # catch-up or subset answered under the withdrawn rule), which says 401 to a
            # token now expired.
            engine = self._engine
            self._end()
            if engine is not None:
                engine.close()
            request = self._request
            self._client.fast_handover(request, partial(self._app.handle, request))
            return
        app = self._app
        status = head.status
        app.metrics.upstream_answered(status, took)
        if 300 <= status < 400 and status != 304:  # (as `upstream.client.send`)
            self._redirected(status)
            return
        raw = head.raw
        names = raw[::2]
        last = _LAST
        plan: _Layout = last[1] if names == last[0] else _plan(names)
        self._layout = plan
        length: int | None = None
        if plan.length >= 0:
            value = raw[plan.length]
            length = int(value) if value.isdigit() else None
        # (else the general answer below: errors are scrubbed, Vary merged)
        plain = status == 200 and plan.plain
        if plain and length is not None and length >= SPLICE_FROM:
            # Passed on unchanged: spliced once this read is parsed (`_splice`); the engine
            # connection reads no more into Python meanwhile.
            self._head = head
            self._length = length
            self._plain = True
            engine = self._engine
            if engine is not None:
                engine.pause()
            asyncio.get_running_loop().call_soon(self._splice)
            return
        if length is not None and length <= WHOLE_BODY_LIMIT:
            self._head = head
            self._length = length
            self._plain = plain
            if length > HIGH_WATER:  # (below it the body is read whole anyway)
                head.body.expect_whole(length)
            return
        self._hand_over(head)

    def _expired(self) -> bool:
        """A non-live request whose token is past its `exp` plus its issuer's leeway."""
        prepared = self._prepared
        until = prepared.token_until
        return until is not None and not prepared.live and time.time() >= until

    def _redirected(self, status: int) -> None:
        """A redirect by a hop between the proxy and the engine: the general path's 502
        (`upstream.client.send`), the engine connection dropped (its body is not read)."""
        engine = self._engine
        self._end()
        if engine is not None:
            engine.close()
        self._refused(redirected(status, self._runtime.options))

    def _hand_over(self, head: RawHead) -> None:
        """A body to stream: `Forwarder.relay` in a task, as the request's answer."""
        app = self._app
        response = head.response()
        response.unlisten()
        self._done = True
        self._engine = None
        if self._prepared.live:
            self._unhold()
        request = self._request
        self._client.fast_handover(
            request,
            lambda: app.answer(request, self._relay(response)),
            partial(self._handed_over, response),
        )
        finished = self._finished
        if finished is not None and not finished.done():
            finished.set_result(None)

    def _splice(self) -> None:
        """Write the head and what came with it, then splice the rest of the body from the
        engine's socket to the client's (`upstream.client.Splice`). When that cannot be (TLS,
        or an earlier answer still in the client's buffer), the body is taken whole or
        streamed by `Forwarder.relay`, as without splicing."""
        head, engine = self._head, self._engine
        if self._done or head is None or engine is None:
            return  # (answered meanwhile: the whole body came in the same read, or it failed)
        request = self._request
        transport = request.transport
        length = self._length
        done = None
        if transport is not None and can_splice(engine, transport):
            data = self._plain_answer(head, length, log=False)
            try:
                done = head.body.splice_to(
                    transport,
                    length,
                    [data],
                    self._runtime.options.first_byte_timeout,
                    SEND_TIMEOUT,
                )
            except OSError as exc:  # (out of descriptors): nothing changed, nothing sent
                logger.warning("could not splice an answer (%s)", exc)
        if done is None:
            if length > WHOLE_BODY_LIMIT:
                self._hand_over(head)
            else:
                head.body.expect_whole(length)
                engine.resume()  # (it may have paused at the high-water mark)
            return
        self._splicing = done
        done.add_done_callback(self._spliced)

    def _spliced(self, done: asyncio.Future[None]) -> None:
        """The spliced body is over: the engine connection goes back to the pool if it all
        went out; the client connection is closed if the engine's body broke (the client
        sees a body shorter than its Content-Length, as from `Forwarder.relay`)."""
        head = self._head
        if done.cancelled() or self._done or head is None:
            return  # (`cancel`: the client went away, or the server is shutting down)
        self._splicing = None
        error = done.exception()
        request = self._request
        context = request.context
        if error is None:
            head.release()  # the connection goes back to the pool
        elif isinstance(error, BodyError):
            context.outcome, context.reason = "error", "upstream_broken_stream"
            logger.warning(
                "upstream stream broke (%s); closing client connection", type(error).__name__
            )
            if request.transport is not None:
                request.transport.close()
        else:  # (the engine connection is closed by `Splice`)
            context.outcome, context.reason = "client_gone", "client_disconnected"
            if request.transport is not None:
                request.transport.abort()
        self._end()
        self._app.answered(request, None, 200)
        transport = request.transport
        if transport is not None and not transport.is_closing():
            self._client.fast_written(request, b"", [])  # (all written: on to the next request)

    async def _relay(self, upstream: UpstreamResponse) -> StreamResponse:
        try:
            outcome = await self._forwarder.relay(
                self._request, self._target(), self._runtime.options, upstream, None
            )
        finally:
            self._permit.release()
        return handlers.finish(self._request, self._runtime, outcome, self._prepared)

    def _handed_over(self, upstream: UpstreamResponse) -> None:
        """The relay's task is over, or was cancelled before it began: free what is held."""
        upstream.close()  # (a no-op once the relay released or closed it)
        self._permit.release()

    def on_complete(self) -> None:
        head = self._head
        if self._done or head is None:
            return
        length = self._length
        chunks = head.body.take_chunks()  # (a large body is written as it came: no copy)
        size = sum(map(len, chunks))
        if size < length:  # (as `readexactly` finds it: a 502, connection dropped)
            self.on_failed(BodyTruncated(), False)
            return
        if size > length or (len(chunks) > 1 and length < JOIN_BELOW):
            chunks = [b"".join(chunks)[:length]]
        upstream = head.response() if not self._plain else None
        if upstream is not None:
            upstream.release()  # the connection goes back to the pool
        else:
            head.release()
        # (`_end`, inline: once per fast-lane forward)
        self._done = True
        self._engine = None
        self._permit.release()
        if self._prepared.live:
            self._unhold()
        finished = self._finished
        if finished is not None and not finished.done():
            finished.set_result(None)
        request = self._request
        try:
            if upstream is None:
                self._client.fast_written(request, self._plain_answer(head, length), chunks)
                return
            body = b"".join(chunks)
            forwarder = self._forwarder
            head_ = forwarder.head(upstream, self._runtime.options, self._target(), True)
            response: StreamResponse = handlers.finish(
                request, self._runtime, Outcome(complete(head_, body), head_.status), self._prepared
            )
        except Exception:
            logger.exception("unexpected error handling request %s", request.context.request_id)
            request.context.outcome, request.context.reason = "error", "internal_error"
            response = self._app.crashed()
        self._respond(response)

    def _plain_answer(self, head: RawHead, length: int, log: bool = True) -> bytes:
        """The bytes `Forwarder.relay`, `ProxyApp.on_prepare` and `Response.serialize` make of
        a 200 without Vary with a whole body, made directly from the engine's raw headers (in
        the same order: the engine's kept ones, Cache-Control, X-Request-Id, CORS,
        electric-server when the engine's are lacking it, Vary unless no-store, Content-Length,
        Content-Type when there is none, Date, Connection), without the body (`length`
        bytes)."""
        request = self._request
        context = request.context
        app = self._app
        raw = head.raw
        plan = self._layout
        assert plan is not None
        kept = plan.kept % plan.pick(raw)
        options = self._runtime.options
        if options.secret_marker_bytes in kept and options.secret_bytes:
            # (an echo of the engine URL, the secret in it: never to a client)
            kept = without_secret_lines(kept, options.secret_bytes)
        prepared = self._prepared
        cors = context.cors
        at = plan.cache_control
        key = None
        lines_of = None
        if len(at) == 1:  # (the engine's answers carry one Cache-Control)
            key = (raw[at[0]], prepared.live, prepared.shared, id(cors))
            lines_of = _LINES.get(key)
            if lines_of is not None and (lines_of[0] is not options or lines_of[1] is not cors):
                lines_of = None  # (another config, or another CORS answer under the same id)
        if lines_of is None:
            cache_control = tuple([raw[i].decode("utf-8", "surrogateescape") for i in at])
            client_cache_control, _ = self._forwarder.cache_control(
                cache_control, options, prepared.live, prepared.shared
            )
            cors_lines = ""
            if cors:
                cors_lines = "".join([f"{name}: {value}\r\n" for name, value in cors.items()])
            vary_line = ""
            if "no-store" not in client_cache_control:  # (no cache keeps it: no Vary)
                vary = app.shape_vary(request)
                vary_line = f"Vary: {vary}\r\n" if vary else ""
            lines_of = (
                options,
                cors,
                f"Cache-Control: {client_cache_control}\r\nX-Request-Id: ",
                f"\r\n{cors_lines}",
                f"{vary_line}Content-Length: ",
            )
            if key is not None:
                if len(_LINES) >= _LINES_MAX:
                    _LINES.clear()
                _LINES[key] = lines_of
        typed = "Content-Type: application/octet-stream\r\n" if length and not plan.typed else ""
        if request.version == (1, 0):
            version = b"HTTP/1.0 200 "
            connection = "Connection: keep-alive\r\n" if request.keep_alive else ""
        else:
            version = b"HTTP/1.1 200 "
            connection = "" if request.keep_alive else "Connection: close\r\n"
        # The engine's name, as `Forwarder.head` learns it and `ProxyApp.on_prepare` adds it
        # to an answer that lacks it (the engine's answers carry it: the first branch).
        server = ""
        forwarder = self._forwarder
        if plan.server >= 0:
            if forwarder.server_name is None:
                forwarder.server_name = raw[plan.server].decode("utf-8", "surrogateescape")
        elif forwarder.server_name is not None:
            server = f"electric-server: {forwarder.server_name}\r\n"
        clock = CLOCK  # (`http_date()`, inline: once per answer)
        date = clock.value if int(time.time()) == clock.second else clock.now()
        context.upstream_status = 200
        if log:
            app.answered(request, None, 200)
        lines = (
            f"{lines_of[2]}{context.request_id}{lines_of[3]}{server}{lines_of[4]}{length}\r\n"
            f"{typed}Date: {date}\r\n{connection}\r\n"
        )
        return b"".join(
            (version, head.reason or b"OK", b"\r\n", kept, lines.encode("utf-8", "surrogateescape"))
        )

    def on_failed(self, error: Exception, retry: bool) -> None:
        if self._done:
            return
        head, engine = self._head, self._engine
        self._end()
        if engine is not None:
            engine.close()  # (already closing when the engine failed; never reused after)
        request = self._request
        if retry and head is None:
            # Nothing came back on a kept-alive connection the engine had closed: the whole
            # request again through `handle`, which retries on a new connection.
            self._client.fast_handover(request, partial(self._app.handle, request))
            return
        options = self._runtime.options
        if head is None or isinstance(error, InternalError):
            failure = failure_error(error, options)
        else:
            failure = connection_failed(options)
        self._refused(failure)

    # --- the answer ------------------------------------------------------------------------

    def _refused(self, exc: ProxyError) -> None:
        context = self._request.context
        context.outcome, context.reason = "refused", exc.reason
        if exc.status >= 500:
            context.outcome = "error"
        self._respond(render_proxy_error(exc))

    def _respond(self, response: StreamResponse) -> None:
        assert isinstance(response, Response)
        self._app.answered(self._request, response)
        self._client.fast_answered(self._request, response)

    def cancel_quietly(self) -> None:
        """Give up before anything was sent: free what is held, log nothing."""
        engine = self._engine
        self._end()
        if engine is not None:
            engine.close()

    def cancel(self) -> None:
        """The client went away: drop the engine request now (the engine sees it go)."""
        if self._done:
            return
        engine = self._engine
        splicing, self._splicing = self._splicing, None
        if splicing is not None:
            splicing.cancel()  # (closes the engine connection)
        context = self._request.context
        context.outcome, context.reason = "client_gone", "client_disconnected"
        self._end()
        if engine is not None:
            engine.close()
        self._app.answered(self._request, None)
