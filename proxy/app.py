"""The proxy's application: routes, the per-request concerns, long-lived resources.

`ProxyApp` is served by the proxy's own HTTP/1.1 server (`proxy.http.protocol`); `handle` is
every request's way in: request id, exact routing, origin check, error rendering, access log
and metrics (what aiohttp's middleware did), then the route's handler (`proxy.http.handlers`).
`on_prepare` runs just before any answer's headers go out: request id, CORS, merged Vary.

The engine connection pool, the `Forwarder` (in-flight collapsed requests and the response
cache), the `ClientSession` for JWKS fetches and the runtime holder (config, verifier, JWKS
caches, reload watcher) are created by `start` and closed by `stop` in reverse order. The
cache size is read at start (a reload does not resize it); `collapse` and the policy follow
reloads. Nothing is module-global: two apps in one process (as in the tests) share nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast

import aiohttp

from proxy.config.loader import LoadedConfig
from proxy.connection_terms import REPEATED_AUTHORIZATION, REQUEST_TIMEOUT
from proxy.errors import Forbidden, NotFound, ProxyError
from proxy.http import fastlane, handlers
from proxy.http.context import new_request_id
from proxy.http.errors import (
    engine_response,
    error_response,
    render_http_error,
    render_proxy_error,
)
from proxy.http.fastlane import FastAnswer, FastConnection
from proxy.http.headers import cors_headers, merge_vary, origin_allowed
from proxy.http.routes import NAMED_PREFIX, is_shape_route, route_of
from proxy.http.wire import HttpError, Request, Response, StateKey, StreamResponse
from proxy.limits.admission import Admission
from proxy.limits.subsets import SubsetSlots
from proxy.logs import ACCESS_LOGGER, ROUTINE_LIVE, redact_query
from proxy.metrics import Metrics
from proxy.runtime import RuntimeHolder
from proxy.upstream.cache import ResponseCache
from proxy.upstream.client import UpstreamPool, make_session
from proxy.upstream.forward import Forwarder
from sync_engine import __version__ as ENGINE_VERSION
from sync_engine.http.headers import ALLOW_METHODS_SHAPE as ENGINE_ALLOW_METHODS
from sync_engine.http.headers import EXPOSE_HEADERS as ENGINE_EXPOSE_HEADERS
from sync_engine.http.log_throttle import ThrottledLog
from sync_engine.http.parser_refusals import Refusal

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

T = TypeVar("T")

#: Paths are routed as Electric's router and the engine route them (`proxy.http.routes`):
#: `/v1//shape`, `/v1/shape/` and `/v1/%73hape` are the shape route, `/v1/Shape` and
#: `/v1/shape%2F` 404s; every spelling of a route reaches its one handler, under the same
#: policy (the engine request's path is the proxy's own, `/v1/shape`).

Handler = Callable[[Request], Awaitable[StreamResponse]]
#: The routes answering GET (and HEAD, its headers without the body, as the engine's routes
#: do: load balancers and monitors probe health with HEAD); anything else is a 405.
_GET_ONLY: dict[str, Handler] = {
    "/": handlers.root,
    "/healthz": handlers.healthz,
    "/v1/health": handlers.engine_health,
    "/metrics": handlers.metrics,
}


def _route_of(request: Request) -> str | None:
    """The route the request's path picks (`proxy.http.routes.route_of`), or None."""
    return route_of(request.raw_path.split("?", 1)[0])


#: Electric's CORS on every shape answer (the engine's, `sync_engine.app`), which an open
#: config (`allow_origins: ["*"]`, no credentials) gives exactly: a client cannot tell the
#: proxy from the engine there.
#: The engine's `electric-server` (sync_engine/app.py: `shapegate/<version>`; it ships with the
#: proxy, same version), on the proxy's own answers until the engine has named itself
#: (`Forwarder.server_name`): an error the proxy makes before the engine first answers after
#: a restart (a 404, a 401, a 502 while the engine is down) carried none, and every engine
#: answer has one. No client reads it (Electric's client 1.5 never does) and no cache keys
#: on it, so a name right for this engine is better than none: the proxy then cannot be told
#: from the engine by it.
ENGINE_SERVER = f"shapegate/{ENGINE_VERSION}"

_ENGINE_CORS = {
    "Access-Control-Expose-Headers": ENGINE_EXPOSE_HEADERS,
    "Access-Control-Allow-Methods": ENGINE_ALLOW_METHODS,
}


_ENGINE_CORS_OTHER = {**_ENGINE_CORS, "Access-Control-Allow-Methods": "GET, HEAD"}


@lru_cache(maxsize=256)
def _cors_for(
    origin: str | None, allow_origins: tuple[str, ...], credentials: bool, shape: bool = True
) -> tuple[bool, Mapping[str, str] | None]:
    """(allowed, CORS headers) for an Origin under one config; the same few origins repeat.

    `shape`: the headers of a shape route's answer; else of any other answer (health, root,
    a 404), which offers the engine's methods there, `GET, HEAD`."""
    if not origin_allowed(origin, allow_origins):
        return False, None
    if "*" in allow_origins and not credentials:
        # As the engine (Electric) answers: the Origin, or `*` without one.
        echoed = {"Access-Control-Allow-Origin": origin if origin is not None else "*"}
        return True, MappingProxyType({**echoed, **(_ENGINE_CORS if shape else _ENGINE_CORS_OTHER)})
    headers = cors_headers(origin, allow_origins, credentials=credentials)
    if headers is None:  # (no Origin: only a listed origin gets CORS headers)
        return True, (_VARIES_WITH_ORIGIN if allow_origins else None)
    # The methods offered, on every answer as the engine's (Electric's CORSHeaderPlug): the
    # answers of a config listing its origins lacked them, the open config's had them.
    headers["Access-Control-Allow-Methods"] = ENGINE_ALLOW_METHODS if shape else "GET, HEAD"
    return True, MappingProxyType(headers)


def request_origin(request: Request) -> str | None:
    """The request's one Origin; None without one, and with several (as the engine, which
    then answers `*`: no browser sends two, and none of them is the caller's)."""
    origin = request.headers.get("Origin")
    if origin is not None and len(request.headers.getall("Origin")) > 1:
        return None
    return origin


#: The CORS headers of a request without Origin under listed `allow_origins`: none, but the
#: answer varies with Origin all the same (a listed origin's answer has them): `Vary: Origin`
#: on it too, else a shared cache that stored it hands it to a listed origin's browser,
#: which cannot read it for as long as it is kept (attack 07:51: one request without Origin
#: and an edge in front of the proxy denied a public shape to every browser for an hour).
_VARIES_WITH_ORIGIN: Mapping[str, str] = MappingProxyType({})


def _echoes_origin(cors: Mapping[str, str] | None) -> bool:
    """The answer varies with the request's Origin: it names it (not `*`), or it has no CORS
    headers because it had no Origin where listed origins get theirs."""
    if cors is _VARIES_WITH_ORIGIN:
        return True
    return cors is not None and cors.get("Access-Control-Allow-Origin", "*") != "*"


def _varies_with_origin(request: Request, cors: Mapping[str, str] | None) -> bool:
    """`_echoes_origin`, or an answer with CORS to a request naming one Origin: the engine
    echoes even `Origin: *` and says `Vary: Origin` (twin 05:30); `*` without an Origin, or
    for two, varies with nothing."""
    if _echoes_origin(cors):
        return True
    return cors is not None and len(request.headers.getall("Origin", ())) == 1


@lru_cache(maxsize=256)
def _shape_vary(existing: tuple[str, ...], origin: bool, shared: bool) -> str:
    """The `Vary` of a shape response: the engine's, Origin when CORS applies, Authorization.

    `Authorization` only when the answer depends on the caller: a shared answer must stay
    shareable by caches that honour `Vary` (Varnish, Fastly, browsers).
    """
    extra = (*(() if shared else ("Authorization",)), *(("Origin",) if origin else ()))
    return merge_vary(existing, *extra)


async def _raising(exc: Exception) -> StreamResponse:
    """`exc`, raised when awaited (`ProxyApp.handle`)."""
    raise exc


class ProxyApp:
    """One proxy: its resources (after `start`), its request handling and its hooks."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        config_path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        sighup: bool = False,
        fast_lane: bool = True,
    ) -> None:
        self.loaded = loaded
        #: Repeated shape GETs forwarded by callbacks when they qualify (`proxy.http.fastlane`);
        #: off, every request takes `handle` (the tests compare the two, byte for byte).
        self.fast_lane = fast_lane
        self.config_path = Path(config_path) if config_path is not None else None
        self.environ = environ
        self.sighup = sighup
        #: Request bodies over this many bytes are refused (413) where a route reads them.
        self.max_body = loaded.config.server.max_body_bytes
        self.metrics = Metrics()
        #: Subset snapshots in flight per principal (`limits.max_subsets`).
        self.subsets = SubsetSlots()
        self._holder: RuntimeHolder | None = None
        self._forwarder: Forwarder | None = None
        #: (holder, forwarder, admission) once started, for the fast lane: one attribute
        #: read instead of three property calls per request (`fastlane.start`).
        self.lane: tuple[RuntimeHolder, Forwarder, Admission] | None = None
        self._admission: Admission | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        #: Shape requests refused for their Origin: a few lines a minute naming it, then a
        #: count (anyone can send any Origin).
        self._origins_refused = ThrottledLog(
            logger, "refused %d more requests for their Origin in the last minute", first=5
        )

    # --- state -----------------------------------------------------------------------------

    @property
    def holder(self) -> RuntimeHolder:
        assert self._holder is not None, "start() first"
        return self._holder

    @property
    def forwarder(self) -> Forwarder:
        assert self._forwarder is not None, "start() first"
        return self._forwarder

    @property
    def admission(self) -> Admission:
        assert self._admission is not None, "start() first"
        return self._admission

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    def __getitem__(self, key: StateKey[T]) -> T:
        """`app[FORWARDER]` and the like (`proxy.http.handlers`' keys), for tests and tools."""
        return cast(T, getattr(self, key.name))

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the long-lived resources (in the running event loop)."""
        loaded = self.loaded
        stack = contextlib.AsyncExitStack()
        session = make_session(loaded.config.upstream.pool_size)  # JWKS fetches
        stack.push_async_callback(session.close)
        pool = UpstreamPool(loaded.config.upstream.pool_size)  # the engine's requests
        stack.push_async_callback(pool.close)
        cache_config = loaded.config.cache
        forwarder = Forwarder(
            pool,
            ResponseCache(cache_config.max_bytes, cache_config.max_entry_bytes),
            self.metrics,
        )
        stack.push_async_callback(forwarder.close)
        holder = RuntimeHolder(
            loaded, session, self.metrics, path=self.config_path, environ=self.environ
        )
        holder.on_revoke.append(forwarder.end_streams)
        holder.on_cache_changed.append(forwarder.cache.clear)
        await stack.enter_async_context(holder.watching(sighup=self.sighup))
        self._session, self._forwarder, self._holder = session, forwarder, holder
        # Per-principal limits; one pool slot per upstream connection (sized at start).
        self._admission = Admission(loaded.config.upstream.pool_size)
        self.lane = (holder, forwarder, self._admission)
        self._stack = stack

    async def stop(self) -> None:
        """Close what `start` created, in reverse order."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    # --- requests ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Coroutine[Any, Any, StreamResponse]:
        """Request id, exact routing, origin check, error rendering, access log and metrics.

        Not a coroutine itself: it hands back `answer`'s, one frame fewer for each request
        held meanwhile (a held long-poll keeps its whole chain of coroutine frames, ~300 B
        each: issue 13's memory per held long-poll). Its caller awaits it in the same `try`
        (`proxy.http.protocol.Connection._answer`), so what it raises is handled alike."""
        request.context.request_id = new_request_id(request.headers.get("X-Request-Id"))
        try:
            work = self._route(request)
        except Exception as exc:  # (a refusal: `answer` renders it as if raised when awaited)
            work = _raising(exc)
        return self.answer(request, work)

    def _route(self, request: Request) -> Awaitable[StreamResponse]:
        """The route's handler's coroutine (not awaited here: one frame fewer per held
        request, as `handle`); raises what refuses the request before any handler runs."""
        route = _route_of(request)
        # Every answer, a 404 or the engine's health too, carries CORS for an allowed Origin
        # as the engine's do (else a browser cannot read it); the methods offered are the
        # engine's for the route matched (`sync_engine.app._decorate`).
        allowed, request.context.cors = self.cors_for(
            request, shape=is_shape_route(route, request.method)
        )
        if route is None:
            raise NotFound("not_found", "Not Found")  # the engine's (aiohttp's) words
        if is_shape_route(route):
            request.context.shape = True
            if not allowed:
                # A browser shows its page nothing of this answer (no CORS headers: only "blocked
                # by CORS policy"), so the log says which Origin was refused and what to set.
                self._origins_refused.log(
                    logging.WARNING,
                    "refused a request from Origin %r: it is not in cors.allow_origins",
                    request_origin(request),
                )
                raise Forbidden(
                    "origin_not_allowed",
                    "this origin may not use the proxy (it is not in the proxy's "
                    "cors.allow_origins)",
                )
            name = route.removeprefix(NAMED_PREFIX) if route.startswith(NAMED_PREFIX) else None
            return handlers.serve(request, shape_name=name)
        if request.method not in ("GET", "HEAD"):
            raise HttpError(405)
        return _GET_ONLY[route](request)

    def cors_for(
        self, request: Request, *, shape: bool = True
    ) -> tuple[bool, Mapping[str, str] | None]:
        """Whether the request's Origin may use the proxy, and the CORS headers it gets."""
        cors = self.holder.current.loaded.config.cors
        return _cors_for(
            request_origin(request), tuple(cors.allow_origins), cors.allow_credentials, shape
        )

    async def answer(self, request: Request, work: Awaitable[StreamResponse]) -> StreamResponse:
        """`work`'s response, or the rendered error it raised; then the access log line."""
        context = request.context
        response: StreamResponse | None = None
        try:
            response = await work
        except ProxyError as exc:
            context.outcome, context.reason = "refused", exc.reason
            response = render_proxy_error(exc)
            if exc.status >= 500:
                context.outcome = "error"
        except HttpError as exc:
            response = render_http_error(exc)
            context.outcome, context.reason = "refused", f"http_{exc.status}"
        except Exception:
            logger.exception("unexpected error handling request %s", context.request_id)
            context.outcome, context.reason = "error", "internal_error"
            response = error_response(500, "internal_error", "internal error")
        finally:
            self.answered(request, response)
        return response

    def shape_vary(self, request: Request) -> str:
        """The `Vary` a shape answer gets when the engine sent none (see `on_prepare`)."""
        context = request.context
        return _shape_vary((), _varies_with_origin(request, context.cors), context.shared)

    def answered(
        self, request: Request, response: StreamResponse | None, status: int = 499
    ) -> None:
        """Record an answered request (`answer`, and `proxy.http.fastlane` outside it): the
        access log line and metrics. Without a response, `status` (499: the client went
        away). (One method, not a method calling a function: once per request.)"""
        context = request.context
        metrics = self.metrics
        duration = time.monotonic() - context.started
        if response is not None:
            status = response.status
        live = context.live
        metrics.request_done(context.outcome, context.reason or "-", live, duration)
        # The access line's level: routine long-polls DEBUG, failures WARNING (`ROUTINE_LIVE`).
        if status >= 500:
            level = logging.WARNING
        elif live and status in ROUTINE_LIVE:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not access_logger.isEnabledFor(level):
            return  # building the record (redaction regexes) costs more than the rest of this
        access_logger.log(
            level,
            "%s %s %s",
            request.method,
            request.raw_path.split("?", 1)[0],
            status,
            extra={
                "request_id": context.request_id,
                "method": request.method,
                "path": request.raw_path.split("?", 1)[0],
                "query": redact_query(request.query.items()),
                "status": status,
                "outcome": context.outcome,
                "reason": context.reason,
                "subject": context.subject,
                "table": context.table,
                "rule": context.rule,
                "upstream_status": context.upstream_status,
                "cache": context.cache,
                "duration_ms": round(duration * 1000, 2),
            },
        )

    def answer_fast(self, request: Request, connection: FastConnection) -> FastAnswer | None:
        """Start answering `request` by callbacks, without a task, if it can be
        (`proxy.http.fastlane`); None: `handle` answers it."""
        if not self.fast_lane or self.lane is None or request.method != "GET":
            return None
        return fastlane.start(self, request, connection)

    def on_prepare(self, request: Request, response: StreamResponse) -> None:
        """Run just before headers go out: request id, CORS, merged Vary."""
        context = request.context
        headers = response.headers
        headers["X-Request-Id"] = context.request_id
        if context.cors is not None:
            headers.update(context.cors)
        if "electric-server" not in headers:
            # (the engine's name, as it gives it, on every answer as the engine's)
            forwarder = self._forwarder
            server = forwarder.server_name if forwarder is not None else None
            headers["electric-server"] = server if server is not None else ENGINE_SERVER
        if request.method == "OPTIONS" or "no-store" in headers.get("Cache-Control", ""):
            # No cache keeps it (a browser keeps a preflight by its max-age, per origin); a
            # preflight from an Origin has its own Vary (`handlers._preflight`: it reflects
            # the requested header names).
            return
        if context.shape:
            existing = tuple(headers.getall("Vary", ()))
            vary = _shape_vary(existing, _varies_with_origin(request, context.cors), context.shared)
            if vary:
                headers["Vary"] = vary
        elif _varies_with_origin(request, context.cors):
            # Any other answer naming the caller's Origin varies with it too, as the engine's
            # (`GET /`: a shared cache keyed without Origin handed one origin's answer, and
            # its Access-Control-Allow-Origin, to another).
            headers["Vary"] = merge_vary(tuple(headers.getall("Vary", ())), "Origin")

    def refused(self, refusal: Refusal, request: Request | None = None) -> Response:
        """The answer to a request the HTTP parser refused (`proxy.http.protocol`): the
        engine's (sync_engine/http/parser_refusals.py) for what it refuses alike, the
        proxy's own (with its `code`) for a slow request or two Authorization headers.

        `request`: a request whose head was read (its body did not come in time): its answer
        has the headers of any answer to it (request id, CORS, `electric-server`), as the
        engine's middleware gives its own 408 then; without them a browser could not read it."""
        if refusal in (REQUEST_TIMEOUT, REPEATED_AUTHORIZATION):
            response = error_response(refusal.status, refusal.reason, refusal.message)
        else:
            response = engine_response(refusal.status, {"message": refusal.message})
        if request is not None:
            context = request.context
            context.request_id = new_request_id(request.headers.get("X-Request-Id"))
            _, context.cors = self.cors_for(
                request, shape=is_shape_route(_route_of(request), request.method)
            )
            self.on_prepare(request, response)
        return response

    def crashed(self) -> Response:
        """The answer when handling itself failed (a bug): nothing about internals."""
        return error_response(500, "internal_error", "internal error")


def create_app(
    loaded: LoadedConfig,
    *,
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    sighup: bool = False,
    fast_lane: bool = True,
) -> ProxyApp:
    """The proxy app for an already validated config (the CLI fails fast before this)."""
    return ProxyApp(
        loaded, config_path=config_path, environ=environ, sighup=sighup, fast_lane=fast_lane
    )
