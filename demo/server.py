"""The `make run` demo server: the todo page, its tokens, its write API and the proxy panel.

Electric's pattern: reads go through sync (the page's `useShape` talks to shape-proxy, never to
the engine), writes go through the app's own API (here). Both check the same token, so a user
reads and writes only their own todos.

    GET  /                  the page (pick a user; /?user=alice opens alice's list)
    POST /api/session       {"user": "alice"} -> a fresh token for this page and the proxy URL
    GET  /token/<user>      the same token as text, for curl and the README
    POST /api/todos         {"title": "..."}          (Authorization: Bearer <token>)
    PATCH /api/todos/<id>   {"done": true|false}      (only the owner's rows)
    DELETE /api/todos/<id>
    POST /api/explain       {"url": "/v1/shape?..."} -> what the proxy does with this request
                            and this token: claims, rule, filter, upstream URL (secret masked)
    GET  /healthz

Environment: DATABASE_URL, DEMO_JWT_SECRET, DEMO_PROXY_URL (the proxy as the browser reaches
it), SHAPE_PROXY_CONFIG (the proxy's config, for the panel), DEMO_HOST, DEMO_PORT.
The engine's secret is never given to this server: the panel's URL is built with a
placeholder and masked anyway.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from demo import tokens
from demo.explain import Explainer

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
DIST = HERE / "dist"
MAX_TITLE = 200
log = logging.getLogger("demo")


@dataclass(frozen=True)
class Settings:
    database_url: str
    jwt_secret: str
    proxy_url: str
    proxy_config: str
    host: str
    port: int

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        missing = [
            name
            for name in ("DATABASE_URL", "DEMO_JWT_SECRET", "DEMO_PROXY_URL", "SHAPE_PROXY_CONFIG")
            if not env.get(name)
        ]
        if missing:
            raise SystemExit(f"demo server: set {', '.join(missing)} (scripts/run-demo does)")
        return cls(
            database_url=env["DATABASE_URL"],
            jwt_secret=env["DEMO_JWT_SECRET"],
            proxy_url=env["DEMO_PROXY_URL"].rstrip("/"),
            proxy_config=env["SHAPE_PROXY_CONFIG"],
            host=env.get("DEMO_HOST", "127.0.0.1"),
            port=int(env.get("DEMO_PORT", "5173")),
        )


SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
EXPLAINER = web.AppKey("explainer", Explainer)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"message": "the body must be JSON"}), content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"message": "the body must be a JSON object"}),
            content_type="application/json",
        )
    return body


def _user(request: web.Request) -> str:
    """The token's user, or a 401 JSON answer."""
    try:
        return tokens.verify(request.headers.get("Authorization"), request.app[SETTINGS].jwt_secret)
    except tokens.TokenError as exc:
        raise web.HTTPUnauthorized(
            text=json.dumps({"message": str(exc)}), content_type="application/json"
        ) from None


def _todo_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise web.HTTPBadRequest(
            text=json.dumps({"message": "todo id must be a positive integer"}),
            content_type="application/json",
        )
    return int(raw)


# --- pages -------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = {
        "app.js": DIST / "app.js",
        "style.css": STATIC / "style.css",
        "favicon.svg": STATIC / "favicon.svg",
    }.get(name)
    if path is None:
        raise web.HTTPNotFound()
    if not path.exists():
        return web.Response(
            status=503, text=f"{path.name} is not built: `make run` builds it (cd demo && npm ci)"
        )
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# --- tokens ------------------------------------------------------------------------------


def _mint(request: web.Request, user: object) -> str:
    if not isinstance(user, str) or not tokens.USER_NAME.match(user):
        raise web.HTTPBadRequest(
            text=json.dumps({"message": "user: 1-32 characters, a-z, 0-9, '_' or '-'"}),
            content_type="application/json",
        )
    return tokens.mint(user, request.app[SETTINGS].jwt_secret)


async def session(request: web.Request) -> web.Response:
    body = await _json_body(request)
    user = body.get("user")
    token = _mint(request, user)
    return web.json_response(
        {"user": user, "token": token, "proxy_url": request.app[SETTINGS].proxy_url},
        headers={"Cache-Control": "no-store"},
    )


async def token_text(request: web.Request) -> web.Response:
    token = _mint(request, request.match_info["user"])
    return web.Response(text=token + "\n", headers={"Cache-Control": "no-store"})


# --- writes ------------------------------------------------------------------------------


async def add_todo(request: web.Request) -> web.Response:
    user = _user(request)
    body = await _json_body(request)
    title = body.get("title")
    if not isinstance(title, str) or not title.strip():
        return _error(400, "title: a non-empty string")
    title = title.strip()
    if len(title) > MAX_TITLE:
        return _error(400, f"title: at most {MAX_TITLE} characters")
    async with request.app[POOL].connection() as conn:
        cur = await conn.execute(
            "INSERT INTO todos (owner_id, title) VALUES (%s, %s) RETURNING id", (user, title)
        )
        row = await cur.fetchone()
    assert row is not None
    return web.json_response({"id": row[0]}, status=201)


async def update_todo(request: web.Request) -> web.Response:
    user = _user(request)
    todo = _todo_id(request)
    body = await _json_body(request)
    done = body.get("done")
    if not isinstance(done, bool):
        return _error(400, "done: true or false")
    async with request.app[POOL].connection() as conn:
        cur = await conn.execute(
            "UPDATE todos SET done = %s WHERE id = %s AND owner_id = %s", (done, todo, user)
        )
    if cur.rowcount == 0:
        return _error(404, f"no todo {todo} of yours")
    return web.json_response({"id": todo, "done": done})


async def delete_todo(request: web.Request) -> web.Response:
    user = _user(request)
    todo = _todo_id(request)
    async with request.app[POOL].connection() as conn:
        cur = await conn.execute("DELETE FROM todos WHERE id = %s AND owner_id = %s", (todo, user))
    if cur.rowcount == 0:
        return _error(404, f"no todo {todo} of yours")
    return web.json_response({"id": todo, "deleted": True})


# --- the proxy panel ---------------------------------------------------------------------


async def explain(request: web.Request) -> web.Response:
    _user(request)  # the panel is for the token's own requests
    body = await _json_body(request)
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith("/") or len(url) > 4096:
        return _error(400, "url: the request path and query, e.g. /v1/shape?table=todos&offset=-1")
    token = request.headers["Authorization"].partition(" ")[2].strip()
    report = await request.app[EXPLAINER].explain(url, token)
    return web.json_response(report, headers={"Cache-Control": "no-store"})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=16 * 1024)
    app[SETTINGS] = settings
    app[EXPLAINER] = Explainer(settings.proxy_config)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
        )
        await app[POOL].open(wait=True, timeout=30)
        yield
        await app[POOL].close()

    app.cleanup_ctx.append(pool)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", health)
    app.router.add_get("/{name:app\\.js|style\\.css|favicon\\.svg}", static_file)
    app.router.add_post("/api/session", session)
    app.router.add_get("/token/{user}", token_text)
    app.router.add_post("/api/todos", add_todo)
    app.router.add_patch("/api/todos/{id}", update_todo)
    app.router.add_delete("/api/todos/{id}", delete_todo)
    app.router.add_post("/api/explain", explain)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="demo: %(message)s", stream=sys.stderr)
    settings = Settings.from_env()
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=lambda _: log.info("listening on http://%s:%d", settings.host, settings.port),
    )


if __name__ == "__main__":
    main()
