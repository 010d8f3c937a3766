"""Build the proxy's aiohttp application: routes, middleware, long-lived resources.

The engine connection pool, the `Forwarder` (in-flight collapsed requests and the response
cache), the `ClientSession` for JWKS fetches and the runtime holder (config, verifier, JWKS
caches, reload watcher) are created in one `cleanup_ctx` generator and closed in reverse order.
The cache size is read at start (a reload does not resize it); `collapse` and the policy
follow reloads. Nothing is module-global: two apps in one process (as in the tests) share nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from aiohttp import web

from proxy.config.loader import LoadedConfig
from proxy.errors import Forbidden, NotFound, ProxyError
from proxy.http.context import CONTEXT, RequestContext, new_request_id
from proxy.http.errors import error_response, render_http_exception, render_proxy_error
from proxy.http.handlers import ADMISSION, FORWARDER, HOLDER, METRICS, SESSION, add_routes
from proxy.http.headers import cors_headers, merge_vary, origin_allowed
from proxy.http.server import HANDLER_ARGS, ProxyApplication
from proxy.limits.admission import Admission
from proxy.logs import ACCESS_LOGGER, access_level, redact_query
from proxy.metrics import Metrics
from proxy.runtime import RuntimeHolder
from proxy.upstream.cache import ResponseCache
from proxy.upstream.client import UpstreamPool, make_session
from proxy.upstream.forward import Forwarder

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

#: Exact raw paths served. Matching the raw request target (not the decoded, normalised path)
#: means `/v1//shape`, `/v1/shape/` and `/v1/%73hape` are 404s, never a second way in.
_EXACT_PATHS = frozenset({"/v1/shape", "/v1/health", "/healthz", "/metrics"})
_NAMED_SHAPE_PATH = re.compile(r"^/shapes/[A-Za-z0-9_-]{1,100}$")
_SHAPE_PATHS = ("/v1/shape", "/shapes/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _check_path(request: web.Request) -> str:
    """The raw path when it is served (then it equals the decoded path), else a 404."""
    raw = request.raw_path.split("?", 1)[0]
    if raw not in _EXACT_PATHS and not _NAMED_SHAPE_PATH.match(raw):
        raise NotFound("not_found", "no such path")
    return raw


@lru_cache(maxsize=256)
def _cors_for(
    origin: str | None, allow_origins: tuple[str, ...], credentials: bool
) -> tuple[bool, Mapping[str, str] | None]:
    """(allowed, CORS headers) for an Origin under one config; the same few origins repeat."""
    if not origin_allowed(origin, allow_origins):
        return False, None
    headers = cors_headers(origin, allow_origins, credentials=credentials)
    return True, MappingProxyType(headers) if headers is not None else None


@lru_cache(maxsize=256)
def _shape_vary(existing: tuple[str, ...], origin: bool, shared: bool) -> str:
    """The `Vary` of a shape response: the engine's, Origin when CORS applies, Authorization.

    `Authorization` only when the answer depends on the caller: a shared answer must stay
    shareable by caches that honour `Vary` (Varnish, Fastly, browsers).
    """
    extra = (*(() if shared else ("Authorization",)), *(("Origin",) if origin else ()))
    return merge_vary(existing, *extra)


@web.middleware
async def handle_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, exact routing, origin check, error rendering, access log and metrics."""
    context = RequestContext(request_id=new_request_id(request.headers.get("X-Request-Id")))
    request[CONTEXT] = context
    app = request.app
    response: web.StreamResponse | None = None
    try:
        # (not `request.path`: decoding it costs a yarl parse and memory per held request)
        if _check_path(request).startswith(_SHAPE_PATHS):
            context.shape = True
            cors = app[HOLDER].current.loaded.config.cors
            allowed, context.cors = _cors_for(
                request.headers.get("Origin"), tuple(cors.allow_origins), cors.allow_credentials
            )
            if not allowed:
                raise Forbidden("origin_not_allowed", "this origin may not use the proxy")
        response = await handler(request)
    except ProxyError as exc:
        context.outcome, context.reason = "refused", exc.reason
        response = render_proxy_error(exc)
        if exc.status >= 500:
            context.outcome = "error"
    except web.HTTPException as exc:
        response = render_http_exception(exc)
        context.outcome, context.reason = "refused", f"http_{exc.status}"
    except Exception:
        logger.exception("unexpected error handling request %s", context.request_id)
        context.outcome, context.reason = "error", "internal_error"
        response = error_response(500, "internal_error", "internal error")
    finally:
        _log_access(request, app[METRICS], context, response)
    return response


def _log_access(
    request: web.Request,
    metrics: Metrics,
    context: RequestContext,
    response: web.StreamResponse | None,
) -> None:
    duration = time.monotonic() - context.started
    status = response.status if response is not None else 499
    kind = "live" if context.live else "other"
    metrics.request_done(context.outcome, context.reason or "-", kind, duration)
    level = access_level(status, live=context.live)
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
            "query": redact_query(request.rel_url.query.items()),
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


async def _decorate(request: web.Request, response: web.StreamResponse) -> None:
    """Signal run just before headers go out: request id, CORS, merged Vary."""
    context = request.get(CONTEXT)
    if context is None:
        return
    headers = response.headers
    headers["X-Request-Id"] = context.request_id
    if context.cors is not None:
        headers.update(context.cors)
    if context.shape:
        existing = tuple(headers.getall("Vary", ()))
        vary = _shape_vary(existing, context.cors is not None, context.shared)
        if vary:
            headers["Vary"] = vary


def create_app(
    loaded: LoadedConfig,
    *,
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    sighup: bool = False,
) -> web.Application:
    """The proxy app for an already validated config (the CLI fails fast before this)."""
    app = ProxyApplication(  # its server answers requests the HTTP parser refused in JSON
        middlewares=[handle_request],
        client_max_size=loaded.config.server.max_body_bytes,
        handler_args=HANDLER_ARGS,
    )
    metrics = Metrics()
    app[METRICS] = metrics

    async def resources(app: web.Application) -> AsyncIterator[None]:
        session = make_session(loaded.config.upstream.pool_size)  # JWKS fetches
        app[SESSION] = session
        pool = UpstreamPool(loaded.config.upstream.pool_size)  # the engine's requests
        cache_config = loaded.config.cache
        forwarder = Forwarder(
            pool,
            ResponseCache(cache_config.max_bytes, cache_config.max_entry_bytes),
            metrics,
        )
        app[FORWARDER] = forwarder
        # Per-principal limits; one pool slot per upstream connection (sized at start).
        app[ADMISSION] = Admission(loaded.config.upstream.pool_size)
        holder = RuntimeHolder(
            loaded,
            session,
            metrics,
            path=Path(config_path) if config_path is not None else None,
            environ=environ,
        )
        app[HOLDER] = holder
        try:
            async with holder.watching(sighup=sighup):
                yield
        finally:
            await forwarder.close()
            await pool.close()
            await session.close()

    app.cleanup_ctx.append(resources)
    app.on_response_prepare.append(_decorate)
    add_routes(app)
    return app
