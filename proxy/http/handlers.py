"""Routes: `/v1/shape` and `/shapes/<name>` (GET, POST subset, OPTIONS), `/healthz`, `/metrics`.

A shape request goes: bearer token -> verified claims -> parsed query -> policy decision ->
upstream URL built from scratch -> streamed response. Each step raises a `ProxyError` that
the middleware renders; nothing reaches the engine until every check has passed.
"""

from __future__ import annotations

import dataclasses
import json

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.auth.bearer import bearer_token, refuse_token_in_query
from proxy.errors import BadShapeRequest, MethodNotAllowed
from proxy.http.context import CONTEXT
from proxy.http.headers import preflight_headers
from proxy.http.params import parse_shape_query, parse_subset_body
from proxy.metrics import Metrics
from proxy.policy.evaluate import evaluate, subset_body
from proxy.runtime import RuntimeHolder
from proxy.upstream.forward import UpstreamOptions, forward
from proxy.upstream.url import build_upstream_url

HOLDER = web.AppKey("holder", RuntimeHolder)
SESSION = web.AppKey("session", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", Metrics)


async def shape(request: web.Request) -> web.StreamResponse:
    """`/v1/shape`: the client names the table."""
    return await _serve(request, shape_name=None)


async def named_shape(request: web.Request) -> web.StreamResponse:
    """`/shapes/<name>`: the config names the table, filter and columns."""
    return await _serve(request, shape_name=request.match_info["name"])


async def _serve(request: web.Request, *, shape_name: str | None) -> web.StreamResponse:
    context = request[CONTEXT]
    holder = request.app[HOLDER]
    runtime = holder.current  # this request keeps this config even if a reload happens
    config = runtime.loaded.config
    if request.method == "OPTIONS":
        context.outcome = "preflight"
        return web.Response(status=204, headers=preflight_headers(config.cors.max_age))
    if request.method == "DELETE":
        raise MethodNotAllowed("delete_not_allowed", "shapes cannot be deleted through the proxy")
    if request.method not in ("GET", "POST"):
        raise MethodNotAllowed("method_not_allowed", f"{request.method} is not supported here")
    query = list(request.rel_url.query.items())
    refuse_token_in_query(query)
    claims = await runtime.verifier.verify(bearer_token(request.headers))
    context.subject = str(claims.get("sub")) if claims.get("sub") is not None else None
    shape_request = parse_shape_query(query)
    is_post = request.method == "POST"
    if is_post:
        if shape_request.subset is not None:
            raise BadShapeRequest("invalid_subset", "give subset parameters in the body or the URL")
        body = await request.read()
        shape_request = dataclasses.replace(shape_request, subset=parse_subset_body(body))
    decision = evaluate(runtime.loaded.policy, claims, shape_request, shape_name=shape_name)
    context.table, context.rule = decision.table, decision.rule
    secret = runtime.loaded.upstream_secret
    url = build_upstream_url(
        config.upstream.url,
        decision,
        source_id=config.upstream.source_id,
        secret=secret.get_secret_value() if secret is not None else None,
        subset_in_query=not is_post,
    )
    upstream = config.upstream
    options = UpstreamOptions(
        connect_timeout=upstream.connect_timeout,
        first_byte_timeout=upstream.first_byte_timeout,
        retry_after=upstream.retry_after,
        max_age_cap=config.cache.max_age_cap,
    )
    return await forward(
        request,
        request.app[SESSION],
        url,
        body=subset_body(decision.subset)
        if is_post and decision.subset
        else (b"{}" if is_post else None),
        options=options,
        context=context,
        metrics=request.app[METRICS],
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus config state: a failed reload shows here while the old config serves."""
    request[CONTEXT].outcome = "health"
    holder = request.app[HOLDER]
    body = {
        "status": "ok",
        "config_loaded_at": holder.current.loaded_at,
        "config_error": holder.last_error,
    }
    return web.Response(
        text=json.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: web.Request) -> web.Response:
    request[CONTEXT].outcome = "metrics"
    payload = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=payload, headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", "/v1/shape", shape)
    app.router.add_route("*", "/shapes/{name}", named_shape)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
