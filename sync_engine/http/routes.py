"""Which route a request's path picks: the one Electric's router would pick.

Electric serves its API with Plug.Router on Bandit. Bandit hands Plug the request target's
path as sent (the part before `?`); `Plug.Conn.Adapter.conn` splits it on `/` and drops the
empty segments (`path_info`); `Plug.Router.match` percent-decodes each segment on its own
(`Plug.Router.Utils.decode_path_info!`, `URI.decode`) and matches the list. So `/v1//shape`,
`//v1/shape`, `/v1/shape/`, `/v1/%73hape` and `/v1/health/` are Electric's shape and health
routes (its router authenticates and sets CORS on them by the route matched,
`conn.private.plug_route`), while `/v1/shape%2F` (segments `v1`, `shape/`), `/v1%2Fshape`,
`/v1/./shape` and `/v1/x/../shape` match nothing: a 404. aiohttp matches the whole decoded
path instead (`/v1//shape` was a 404 here), so the engine resolves such paths itself.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError, UrlMappingMatchInfo
from yarl import URL

#: The engine's routes, as registered (`app.build_app`).
ROUTES = ("/", "/v1/shape", "/v1/health", "/metrics")
_BY_SEGMENTS: dict[tuple[bytes, ...], str] = {
    tuple(p.encode() for p in path.split("/") if p): path for path in ROUTES
}


def route_of(raw_path: str) -> str | None:
    """The registered route that `raw_path` (the request target's path, still
    percent-encoded, no query) picks as Plug's router would, or None for none."""
    segments = tuple(unquote_to_bytes(s) for s in raw_path.split("/") if s)
    return _BY_SEGMENTS.get(segments)


class PlugRouter(web.UrlDispatcher):
    """aiohttp's router, given the path of the route `route_of` picks (the query as sent)."""

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        raw = request.rel_url.raw_path
        if raw not in ROUTES:  # (the everyday paths, as registered: as they are)
            path = route_of(raw)
            if path is None:
                return MatchInfoError(web.HTTPNotFound())
            rel_url = URL.build(
                path=path, query_string=request.rel_url.raw_query_string, encoded=True
            )
            request = request.clone(rel_url=rel_url)
        return await super().resolve(request)


def use_plug_routes(app: web.Application) -> None:
    """Make `app` route as `PlugRouter` does (before any route is added). The router is
    swapped in place: passing one to `web.Application` is deprecated."""
    router = app.router
    assert type(router) is web.UrlDispatcher and not router.resources()
    router.__class__ = PlugRouter


def is_shape_route(request: web.Request) -> bool:
    """Whether `request` was routed to `/v1/shape` (whatever its path's spelling)."""
    info = request.match_info
    if info is None:  # (a request the parser refused: never routed)
        return False
    resource = info.route.resource
    return resource is not None and resource.canonical == "/v1/shape"
