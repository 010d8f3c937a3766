"""Build the engine's aiohttp application: routes, middlewares and the sources' lifetimes."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from . import __version__
from . import metrics as engine_metrics
from .errors import ServiceUnavailable, Unauthorized
from .http.errors import error_answer, json_response
from .http.headers import ALLOW_METHODS_SHAPE, EXPOSE_HEADERS
from .http.live import LiveConnection
from .http.params import last
from .http.parser_refusals import RefusingApplication
from .http.routes import is_shape_route, use_plug_routes
from .http.shape import ShapeView
from .preflight import disk_full
from .settings import Settings
from .snapshot.subset import set_spool_budget
from .source import Source, SourceConfig, SourceState
from .stopping import cancel_and_wait
from .tenants.manager import SourceManager

SOURCES = web.AppKey("sources", dict)
SETTINGS = web.AppKey("settings", Settings)
MANAGER = web.AppKey("source_manager", SourceManager)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

logger = logging.getLogger(__name__)

#: Seconds between tries to open the source registry while the disk is full.
REGISTRY_RETRY = 2.0

# Request ids for responses whose request had none: 32 random hex digits (a uuid4's
# length), drawn 256 at a time (one getrandom() per 256 responses). Not a per-process
# prefix and a counter: a holder of one source's secret could count every source's
# requests between two of its own.
_ID_BATCH = 256
_ids: list[str] = []


def new_request_id() -> str:
    if not _ids:
        pool = os.urandom(16 * _ID_BATCH).hex()
        _ids.extend(pool[i : i + 32] for i in range(0, len(pool), 32))
    return _ids.pop()


@web.middleware
async def engine_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every public request's one middleware (three before: a coroutine and a partial each
    per request, and every request passed all three):
    - (a path picks its route as in Electric's router: `http.routes.PlugRouter`);
    - an exception is answered (`error_answer`: engine errors by their table, a bug as a
      bare 500);
    - `electric-server`, `x-request-id` and CORS on every response that passes auth
      (`_decorate`; a streamed one is decorated when prepared, `_prepare_stream`)."""
    try:
        resp = await handler(request)
    except Exception as exc:
        resp = error_answer(request, exc)  # (raises what aiohttp itself answers)
    if not resp.prepared:
        _decorate(request, resp)
    return resp


_SERVER = f"shapegate/{__version__}"


def _decorate(request: web.Request, resp: web.StreamResponse) -> None:
    headers = resp.headers
    headers["electric-server"] = _SERVER
    if "x-request-id" not in headers:
        given = request.headers.get("x-request-id")
        # Kept when 20 to 200 bytes long, else a new one: Electric's Plug.RequestId (and
        # the proxy's rule, proxy/http/context.py); new too for one that cannot be sent
        # back as it came (`_sendable`)
        if given is None or not _sendable(given) or not 20 <= len(given.encode()) <= 200:
            given = new_request_id()
        headers["x-request-id"] = given
    if resp.status == 401:
        return
    origins = request.headers.getall("origin", [])
    # (one Origin, sendable as it came: else `*`, as for none or two, `_sendable`)
    if len(origins) == 1 and _sendable(origins[0]):
        headers["access-control-allow-origin"] = origins[0]
        if request.method != "OPTIONS" and "no-store" not in headers.get("cache-control", ""):
            # The answer names the caller's Origin, so a shared cache (the nginx tier, a CDN)
            # must keep one copy per Origin: without this, one request from any origin makes
            # the cached answer unreadable to every other origin's browsers for its lifetime.
            # (Not on a preflight or a no-store answer, which no shared cache keeps: as the
            # proxy, which adds the same `Vary: Origin` where it echoes an Origin.)
            _add_vary(headers, "Origin")
    else:
        headers["access-control-allow-origin"] = "*"
    headers["access-control-expose-headers"] = EXPOSE_HEADERS
    # (by the route matched, as Electric's router sets them: `/v1//shape` is the shape's)
    is_shape = is_shape_route(request)
    headers["access-control-allow-methods"] = ALLOW_METHODS_SHAPE if is_shape else "GET, HEAD"


def _sendable(value: str) -> bool:
    """Whether a request header's value can be echoed as the bytes that came: aiohttp
    decodes bytes that are not UTF-8 to lone surrogates, and its writer drops them, so
    `Origin: http://<0xE9>.example` was answered `access-control-allow-origin:
    http://.example`, an origin nobody sent (twin, LOW). Electric echoes the bytes; the
    engine cannot, and answers such an Origin (which no browser sends) as it answers none:
    `*`, which a shared cache may give every origin."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _add_vary(headers: CIMultiDict[str], token: str) -> None:
    """Add `token` to the response's `Vary` (one header, no duplicate token)."""
    present = [t.strip() for v in headers.getall("vary", []) for t in v.split(",") if t.strip()]
    if any(t == "*" or t.lower() == token.lower() for t in present):
        return
    headers["vary"] = ", ".join((*present, token))


async def _prepare_stream(request: web.Request, resp: web.StreamResponse) -> None:
    # Streaming responses (SSE) are prepared inside the handler: decorate them here.
    if "electric-server" not in resp.headers:
        _decorate(request, resp)


def build_app(settings: Settings, sources: dict[str, Source] | None = None) -> web.Application:
    """The public app (/v1/shape, /v1/health, /metrics).

    Sources: the single database of `--database-url` ("default"), and the registered
    sources of `<data-dir>/sources.db` run by the app's `SourceManager` (`app[MANAGER]`,
    shared with the admin app of `sync_engine.admin`). A request naming a `source_id` is
    for a registered source once any is registered; otherwise, and always when none is,
    requests go to the single database exactly as without a registry.
    """
    # The engine's connections (`http.server.EngineRequestHandler`) that also tell a held
    # live request when its client has gone.
    app = RefusingApplication(LiveConnection, middlewares=[engine_middleware])
    use_plug_routes(app)
    app[SETTINGS] = settings
    # (process-wide: every source's subset answers share the memory and the disk)
    set_spool_budget(settings.subset_spool_budget)
    app[SOURCES] = sources if sources is not None else {}
    manager = SourceManager(settings)
    app[MANAGER] = manager
    app.on_shutdown.append(_answer_held)
    # Why the source registry (`sources.db`) could not be opened at start, while it cannot
    # (a full disk): the single database is served meanwhile, registered sources are not.
    registry = _Registry()
    app.on_response_prepare.append(_prepare_stream)
    responses = engine_metrics.ShapeResponses()
    app.on_response_prepare.append(responses.on_prepare)
    wal_ends = engine_metrics.WalEnds()
    scrape = engine_metrics.new_registry(
        engine_metrics.EngineCollector(
            lambda: [*app[SOURCES].values(), *manager.running.values()],
            lambda: [
                sid
                for sid, rec in manager.records.items()
                if rec.paused and sid not in manager.running
            ],
            settings.data_dir,
            responses,
            wal_ends,
        )
    )

    secret = settings.secret.encode() if settings.secret is not None else None
    admin_token = settings.admin_token.encode() if settings.admin_token is not None else None

    async def find_source(request: web.Request) -> Source:
        """The source a request is for, after checking its credentials."""
        srcs: dict[str, Source] = request.app[SOURCES]
        q = request.query
        given = _given_secret(q)
        if registry.problem is not None and ("source_id" in q or "default" not in srcs):
            # (never to the single database: it may need no secret, and is not theirs)
            raise ServiceUnavailable(registry.problem, retry_after=10, code="registry_unavailable")
        if manager.has_sources() and ("source_id" in q or "default" not in srcs):
            return await manager.authenticate(last(q, "source_id"), given)
        if secret is not None:
            if given is None or not hmac.compare_digest(given.encode(), secret):
                raise Unauthorized()
        source = srcs.get("default")
        if source is None:
            raise ServiceUnavailable("No database is configured", retry_after=10)
        return source

    view = ShapeView(settings, find_source)

    async def options(request: web.Request) -> web.StreamResponse:
        resp = web.Response(
            status=204, headers={"access-control-max-age": "86400", "connection": "keep-alive"}
        )
        wanted = request.headers.get("access-control-request-headers", "")
        allowed = [
            x.strip()
            for x in wanted.split(",")
            if x.strip().lower() in ("if-none-match", "traceparent")
        ]
        if allowed:
            resp.headers["access-control-allow-headers"] = ", ".join(allowed)
        return resp

    async def health(request: web.Request) -> web.StreamResponse:
        srcs: dict[str, Source] = request.app[SOURCES]
        states = {sid: s.state for sid, s in srcs.items()}
        active = bool(states) and all(v is SourceState.ACTIVE for v in states.values())
        if not states and manager.has_sources():
            active = True  # serving registered sources; each one's state is in the admin API
        body: dict[str, Any] = {"status": "active" if active else "starting"}
        status = 200 if active else 202
        stuck = [p for s in srcs.values() if (p := s.start_problem) is not None]
        if stuck:  # cannot start until a person acts: not "starting" for good (kind only)
            body, status = {"status": "error", "message": stuck[0]}, 503
        paused = [s.write_error for s in srcs.values() if s.write_error]
        if registry.problem is not None:
            paused.append(registry.problem)
        if paused:  # shape logs cannot be written (disk full): serving, not replicating
            body, status = {"status": "waiting", "message": paused[0]}, 503
        warnings = [w for s in srcs.values() for w in s.warnings]
        if warnings:  # serving correctly, but an operator should act (see Source.warnings)
            body["warnings"] = warnings
        no_cache = {"cache-control": "no-cache, no-store, must-revalidate"}
        return json_response(status, body, no_cache)

    async def metrics(request: web.Request) -> web.StreamResponse:
        """Prometheus text (`sync_engine.metrics`): per source, replication lag, last message
        from Postgres, paused for a write error, state, shapes and their bytes, shapes
        created and retired by reason; engine-wide, the data directory's disk, live requests
        waiting for a change (what end-to-end tests wait on instead of sleeping), and
        `/v1/shape` responses by status class.

        Behind `--secret` when one is set, as `/v1/shape` is (a CDN tier forwards `/` to the
        engine): as the `secret` query parameter or as `Authorization: Bearer <secret>`,
        Prometheus's way. With registered sources (or the admin token that registers them)
        it shows every tenant's activity: without `--secret` it answered anyone then; now
        the admin token (`Authorization: Bearer`, as the admin API takes it) is required,
        and with no admin token configured nobody reads it there.
        """
        if not _may_read_metrics(request, secret, admin_token, manager.has_sources()):
            raise Unauthorized()
        headers = {"content-type": engine_metrics.CONTENT_TYPE, "cache-control": "no-store"}
        return web.Response(body=engine_metrics.exposition(scrape), headers=headers)

    async def root(request: web.Request) -> web.StreamResponse:
        # (said, not left to aiohttp: it leaves a HEAD's `Content-Length: 0` out, and a HEAD
        # carries the headers of its GET, as Electric's does, `Plug.Head`)
        return web.Response(status=200, headers={"content-length": "0"})

    # (`/v1/shape/`, `/v1//shape`, `/v1/%73hape`... route here too: `http.routes`)
    app.router.add_get("/v1/shape", view.get)
    app.router.add_post("/v1/shape", view.post)
    app.router.add_delete("/v1/shape", view.delete)
    app.router.add_route("OPTIONS", "/v1/shape", options)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", root)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        srcs: dict[str, Source] = app[SOURCES]
        if settings.database_url and "default" not in srcs:
            srcs["default"] = Source(
                SourceConfig(
                    source_id="default",
                    database_url=settings.database_url,
                    data_dir=settings.data_dir / "sources" / "default",
                    chunk_bytes=settings.chunk_bytes,
                    max_shapes=settings.max_shapes,
                    max_log_bytes=settings.max_log_bytes,
                    disk_reserve=settings.disk_reserve,
                    max_concurrent_snapshots=settings.max_concurrent_snapshots,
                    fsync=settings.fsync,
                    schema_check_interval=settings.schema_check_interval,
                    replication_timeout=settings.replication_timeout,
                    stream_id=settings.replication_stream_id,
                    family_check_interval=settings.family_check_interval,
                    catalog_timeout=settings.catalog_timeout,
                    probe_timeout=settings.probe_timeout,
                    snapshot_timeout=settings.snapshot_timeout,
                )
            )
        for s in srcs.values():
            await s.start()
        await registry.start(manager, settings)
        yield
        await registry.stop()
        await wal_ends.close()
        await manager.stop()
        for s in srcs.values():
            await s.stop()

    app.cleanup_ctx.append(lifespan)
    return app


def _given_secret(query: MultiMapping[str]) -> str | None:
    """The secret a request gives, as Electric reads it: `secret`, else `api_secret` (else
    `source_secret`), the first of them present even if empty, its last value if repeated
    (`conn.query_params["secret"] || conn.query_params["api_secret"]` after Plug's query
    decoding: an empty `secret` is not absent there)."""
    for name in ("secret", "api_secret", "source_secret"):
        if name in query:
            return last(query, name)
    return None


def _may_read_metrics(
    request: web.Request, secret: bytes | None, admin_token: bytes | None, has_sources: bool
) -> bool:
    """Whether `request` may read /metrics (`metrics.may_read`): the `--secret` as a shape
    request gives it or as a Bearer header, or the admin token as a Bearer header."""
    return engine_metrics.may_read(
        request.query,
        request.headers,
        _given_secret(request.query),
        secret,
        admin_token,
        has_sources,
    )


class _Registry:
    """Starts the source manager, which opens the source registry (`sources.db`, SQLite in
    WAL mode). SQLite cannot open it at all on a full disk (its shared-memory file needs
    space), and the engine failed to start: now it serves its single database (and the
    shapes it has) meanwhile, answers requests for registered sources 503
    `registry_unavailable`, and starts the manager once space returns."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self._detail = ""
        self._retry: asyncio.Task[None] | None = None

    async def start(self, manager: SourceManager, settings: Settings) -> None:
        if await self._try(manager, settings):
            return
        logger.warning(
            "%s (%s); serving the single database meanwhile, trying again every %g s",
            self.problem,
            self._detail,
            REGISTRY_RETRY,
        )
        self._retry = asyncio.create_task(self._again(manager, settings), name="registry-open")

    async def _try(self, manager: SourceManager, settings: Settings) -> bool:
        try:
            await manager.start()
        except (sqlite3.Error, OSError) as exc:
            # Opened nothing (the store failed to open) and the disk is full: wait for space.
            # Anything else stops the engine, as before.
            if manager.store is not None or not await asyncio.to_thread(
                disk_full, settings.data_dir
            ):
                raise
            # (said by /v1/health and registered sources' 503s, to anyone: no path; the
            # log has it)
            self.problem = (
                "the source registry cannot be opened: the disk of the data directory is full"
            )
            self._detail = f"{manager.path}: {exc}"
            return False
        if self.problem is not None:
            logger.info("the source registry %s is open: registered sources start", manager.path)
        self.problem = None
        return True

    async def _again(self, manager: SourceManager, settings: Settings) -> None:
        while True:
            await asyncio.sleep(REGISTRY_RETRY)
            try:
                if await self._try(manager, settings):
                    return
            except Exception:
                logger.exception("opening the source registry %s failed", manager.path)

    async def stop(self) -> None:
        if self._retry is not None:
            await cancel_and_wait([self._retry], "opening the source registry")


async def _answer_held(app: web.Application) -> None:
    """On shutdown (SIGTERM), before the server stops: every source is closed to requests,
    so its held ones (long-polls, SSE streams, snapshot waits) answer at once, a 503 with
    Retry-After their client retries (`Source.close_to_requests`). They were cut without an
    answer when the server's shutdown timeout ran out (newuser 16:57: `curl` got nothing,
    the proxy a 502 `upstream_unreachable`), though README said they were answered."""
    for source in [*app[SOURCES].values(), *app[MANAGER].running.values()]:
        source.close_to_requests(_stopping)


def _stopping() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the engine is stopping (restarting?): retry shortly", retry_after=1, code="stopping"
    )
