"""Admin HTTP API for sources, and the dashboard's static files.

    GET    /api/info                           engine URL, version, registry
    GET    /api/sources                        {"sources": [status, ...], "registry": {read_only}}
    POST   /api/sources                        {name, database_url[, max_shapes, max_initial_syncs]}
                                               -> 201 status + secret (shown this once)
    GET    /api/sources/{id}                   status
    POST   /api/sources/{id}/rotate-secret     {grace_period_seconds} -> status + new secret
    POST   /api/sources/{id}/pause | /resume   status
    DELETE /api/sources/{id}                   {source_id, deleted, warnings}
    GET    /                                   the dashboard (static HTML, CSS and JS)

Errors are JSON: {"error": code, "message": reason[, "field": name]} with a 4xx status (a
503 store_unavailable when sources.db cannot be written), and a failed request changes
nothing; malformed HTTP gets the same JSON (`_AdminConnection`). Secrets and passwords never
appear in responses other than the ones that carry a new secret; once such an answer is
written to its connection the source is marked `secret_delivered` (`_deliver`), until then
the same creation sent again is answered with the same secret (`SourceManager.create`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from .. import __version__
from ..http.parser_refusals import Refusal, RefusingApplication, RefusingRequestHandler
from ..settings import Settings
from ..tenants.errors import DuplicateName, InvalidInput, SourceError, UnknownSource
from ..tenants.manager import SourceManager
from ..tenants.store import SourceRecord

logger = logging.getLogger(__name__)

MANAGER = web.AppKey("admin_source_manager", SourceManager)
ADMIN_SETTINGS = web.AppKey("admin_settings", Settings)
MAX_BODY = 64 * 1024
MIN_TOKEN_LENGTH = 16
_HOLD_ENV = "SHAPEGATE_TEST_HOLD_ADMIN"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS = {InvalidInput: 400, UnknownSource: 404, DuplicateName: 409}
_STATIC = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
_ONCE = "This secret is shown only once; store it now."
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, indent=None).encode(),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _error(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    source_id: str | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    if source_id is not None:  # a 409 duplicate_name: the source that has the name
        body["source_id"] = source_id
    return _json(status, body)


def _secure(resp: web.StreamResponse) -> None:
    resp.headers.setdefault("cache-control", "no-store")
    resp.headers["x-content-type-options"] = "nosniff"
    resp.headers["x-frame-options"] = "DENY"
    resp.headers["referrer-policy"] = "no-referrer"
    resp.headers["content-security-policy"] = _CSP


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    if not resp.prepared:
        _secure(resp)
    return resp


async def _deliver(
    request: web.Request,
    resp: web.Response,
    manager: SourceManager,
    source_id: str,
    hold: str | None = None,
) -> web.Response:
    """Send an answer carrying a source's secret, then record that it was sent: until
    then a retry of the source's creation is answered with the same secret again
    (`SourceManager.create`). Sent means written to the connection; a client gone before
    that raises here (logged, no answer) and leaves the source undelivered. The engine
    killed between the two leaves it undelivered too, although its client has the
    secret: which is why a retry gets that same secret, never a new one."""
    _secure(resp)
    await resp.prepare(request)
    await resp.write_eof()
    if hold is not None:
        await _hold_before_answer(hold)
    await manager.secret_delivered(source_id)
    return resp


async def _hold_before_answer(point: str) -> None:
    """Tests only: with SHAPEGATE_TEST_HOLD_ADMIN=<point>:<file>, write `file` at `point`
    ("create": a creation saved, its answer not yet written; "create-sent": its answer
    written, not yet recorded as sent) and wait there until it is removed (or the engine
    is killed there). Unset (production): nothing."""
    hold = os.environ.get(_HOLD_ENV)
    if not hold:
        return
    where, _, path = hold.partition(":")
    if where == point and path:
        held = Path(path)
        await asyncio.to_thread(held.write_text, point)
        while await asyncio.to_thread(held.exists):  # noqa: ASYNC110 (a test's file)
            await asyncio.sleep(0.05)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SourceError as exc:
        status = next((v for k, v in _STATUS.items() if isinstance(exc, k)), 400)
        field, sid = getattr(exc, "field", None), getattr(exc, "source_id", None)
        return _error(status, exc.code, exc.message, field, source_id=sid)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "body_too_large", f"request body is larger than {MAX_BODY} bytes")
    except sqlite3.Error as exc:  # a full disk, an I/O error: the store is as it was
        logger.warning("admin request %s %s: sources.db not written: %s", request.method,
                       request.path, exc)  # fmt: skip
        resp = _error(
            503,
            "store_unavailable",
            f"the engine could not write its sources registry (sources.db in its data"
            f" directory): {exc}; nothing was changed. Check that disk (free space) and"
            f" that no other program holds the file, then retry.",
        )
        resp.headers["retry-after"] = "10"
        return resp
    except (RequestPayloadError, BadHttpMessage):  # cut short, bad chunking
        return _error(400, "invalid_request", "the request body could not be read")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}.get(
            exc.status, "http_error"
        )
        resp = _error(exc.status, code, exc.reason)
        allow = exc.headers.get("allow")
        if allow is not None:  # a 405 says which methods the path takes (RFC 9110)
            resp.headers["allow"] = allow
        return resp
    except ConnectionResetError:  # the client left before its answer was sent
        logger.info("admin request %s %s: the client left before the answer", request.method,
                    request.path)  # fmt: skip
        return web.Response(status=499)
    except Exception:
        logger.exception("admin request %s %s failed", request.method, request.path)
        return _error(500, "internal_error", "internal error; see the engine's log")


def _token_middleware(token: str) -> Any:
    want = hashlib.sha256(token.encode()).digest()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            for name in ("Authorization", "X-Admin-Token"):
                sent = len(request.headers.getall(name, ()))
                if sent > 1:
                    # (a singleton field, RFC 9110: the first was taken, whatever followed)
                    return _error(400, "invalid_request", f"send one {name} header, not {sent}")
            if "authorization" in request.headers and "x-admin-token" in request.headers:
                # (one was read, the other ignored: a wrong X-Admin-Token beside a valid Bearer
                # passed, the reverse did not; hostile 23:08)
                return _error(
                    400,
                    "invalid_request",
                    "send one credential: an Authorization header or an X-Admin-Token header,"
                    " not both",
                )
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer":
                value = request.headers.get("x-admin-token", "")
            # a header's bytes that are not UTF-8 come as surrogates: back to those bytes
            got = hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).digest()
            if not value or not hmac.compare_digest(got, want):
                resp = _error(
                    401,
                    "unauthorized",
                    "missing or wrong admin token: send 'Authorization: Bearer <admin token>'",
                )
                resp.headers["www-authenticate"] = 'Bearer realm="shapegate-admin"'
                return resp
        return await handler(request)

    return require_token


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise web.HTTPUnsupportedMediaType(
            reason="the request body must be sent as is, without a Content-Encoding"
        )
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("body", f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser goes
        raise InvalidInput("body", "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidInput("body", "request body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        known = "allowed: " + ", ".join(allowed) if allowed else "this request takes none"
        raise InvalidInput(unknown[0], f"unknown field {unknown[0]!r}; {known}")
    return data


#: Connections the admin listener may open (counted apart from the public port's, out of its
#: descriptor reserve: `RefusingRequestHandler.reserved_connections`).
ADMIN_RESERVE = 32


class _AdminConnection(RefusingRequestHandler):
    """A connection of the admin listener: requests its HTTP parser refuses (a malformed
    request line, a header over the limits, bad chunking) get the admin API's JSON error,
    nothing of the request quoted, one INFO line (aiohttp answered text quoting the request's
    first bytes and logged a traceback at ERROR)."""

    __slots__ = ()

    #: Admin connections open past the public port's cap (attack 08:17: with the public port
    #: full of one source's held live requests, the API, CLI and dashboard got 503 "Too many
    #: connections" and the operator could not pause the source filling it).
    reserved_connections = ADMIN_RESERVE

    def refused(self, refusal: Refusal) -> web.StreamResponse:
        return _error(refusal.status, refusal.reason, refusal.message)


def build_admin_app(settings: Settings, manager: SourceManager) -> web.Application:
    """The admin app, sharing the engine app's `SourceManager` (`app[MANAGER]` there)."""
    token = settings.admin_token
    if not token or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the admin token must be at least {MIN_TOKEN_LENGTH} characters")
    app = RefusingApplication(
        _AdminConnection,
        middlewares=[_headers, _errors, _token_middleware(token)],
        client_max_size=MAX_BODY,
    )
    app[MANAGER] = manager
    app[ADMIN_SETTINGS] = settings
    engine_url = settings.engine_url

    def status(rec: SourceRecord) -> dict[str, Any]:
        body = manager.status(rec)
        body["shape_url"] = f"{engine_url}/v1/shape?source_id={rec.source_id}"
        return body

    def registry() -> dict[str, Any]:
        """sources.db: open read-only (why) when it could not be opened for writing."""
        store = manager.store
        return {"read_only": store.read_only if store is not None else "not open"}

    async def info(request: web.Request) -> web.StreamResponse:
        return _json(
            200,
            {
                "engine_url": engine_url,
                "version": __version__,
                "sources": len(manager.records),
                "registry": registry(),
            },
        )

    async def list_sources(request: web.Request) -> web.StreamResponse:
        return _json(200, {"sources": [status(r) for r in manager.all()], "registry": registry()})

    async def create_source(request: web.Request) -> web.StreamResponse:
        data = await _body(request, ("name", "database_url", "max_shapes", "max_initial_syncs"))
        rec, secret, again = await manager.create(
            data.get("name"),
            data.get("database_url"),
            data.get("max_shapes"),
            data.get("max_initial_syncs"),
        )
        try:
            body = status(rec)
            body["secret"] = secret
            body["secret_notice"] = _ONCE
            if again:
                body["secret_notice"] += (
                    " This source was created by an earlier identical request whose answer"
                    " may not have arrived; this is the secret it was given then (unchanged)."
                )
            await _hold_before_answer("create")
            resp = _json(201, body, {"location": f"/api/sources/{rec.source_id}"})
            return await _deliver(request, resp, manager, rec.source_id, hold="create-sent")
        finally:
            manager.answer_ended(rec.source_id)

    async def show_source(request: web.Request) -> web.StreamResponse:
        return _json(200, status(manager.get(request.match_info["id"])))

    async def rotate_secret(request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        manager.get(sid)  # 404 before reading the body
        data = await _body(request, ("grace_period_seconds",))
        rec, secret = await manager.rotate_secret(sid, data.get("grace_period_seconds"))
        body = status(rec)
        body["secret"] = secret
        body["secret_notice"] = _ONCE
        return await _deliver(request, _json(200, body), manager, rec.source_id)

    async def pause(request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        manager.get(sid)
        await _body(request, ())
        return _json(200, status(await manager.pause(sid)))

    async def resume(request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        manager.get(sid)
        await _body(request, ())
        return _json(200, status(await manager.resume(sid)))

    async def delete_source(request: web.Request) -> web.StreamResponse:
        rec = manager.get(request.match_info["id"])
        warnings = await manager.delete(rec.source_id)
        return _json(
            200,
            {"source_id": rec.source_id, "name": rec.name, "deleted": True, "warnings": warnings},
        )

    async def dashboard(request: web.Request) -> web.StreamResponse:
        return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=_STATIC[name], charset="utf-8")

    r = app.router
    r.add_get("/api/info", info)
    r.add_get("/api/sources", list_sources)
    r.add_post("/api/sources", create_source)
    r.add_get("/api/sources/{id}", show_source)
    r.add_delete("/api/sources/{id}", delete_source)
    r.add_post("/api/sources/{id}/rotate-secret", rotate_secret)
    r.add_post("/api/sources/{id}/pause", pause)
    r.add_post("/api/sources/{id}/resume", resume)
    r.add_get("/", dashboard)
    r.add_get("/static/{name}", static)
    return app


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()
