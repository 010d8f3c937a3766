"""Routes: `/v1/shape` and `/shapes/<name>` (GET, POST subset, DELETE, OPTIONS), the engine's
`/v1/health`, the proxy's own `/healthz` and `/metrics`.

A shape request goes: bearer token (or none: the anonymous principal, when a rule serves it)
-> verified claims -> parsed query -> policy decision ->
upstream URL built from scratch -> (response cache | collapsed | direct) streamed response.
Each step raises a `ProxyError` that the middleware renders; nothing reaches the engine, and
nothing is served from the cache, until every check has passed. A GET repeating an
(Authorization, query) pair already authorised under the current config reuses that result
until the token's `exp` (bounded by the token-cache TTL).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import zlib
from typing import Protocol, cast

import aiohttp
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from proxy.auth.bearer import bearer_token, refuse_token_in_query
from proxy.auth.claims import TokenVerifier
from proxy.errors import (
    BadShapeRequest,
    EngineRefusal,
    MethodNotAllowed,
    ProxyError,
    ServiceUnavailable,
    Unauthenticated,
    UnsupportedMediaType,
)
from proxy.http import positions
from proxy.http.errors import error_response, render_proxy_error
from proxy.http.headers import (
    ALLOWED_REQUEST_HEADERS,
    preflight_headers,
    reflected_request_headers,
)
from proxy.http.params import (
    check_as_the_engine,
    check_delete_as_the_engine,
    check_utf8,
    engine_body,
    parse_post_request,
    parse_shape_query,
)
from proxy.http.wire import (
    HttpError,
    Request,
    Response,
    StateKey,
    StreamResponse,
    json_response,
)
from proxy.limits.admission import Admission
from proxy.limits.client import client_address
from proxy.limits.config import resolve
from proxy.limits.subsets import SubsetSlots
from proxy.limits.upstream import check_forwarded_fits, clean_error_response, fits
from proxy.metrics import Metrics, metrics_refusal
from proxy.policy.blame import blame
from proxy.policy.evaluate import (
    Claims,
    delete_by_handle_shared,
    evaluate,
    evaluate_delete_by_handle,
    is_delete_by_handle,
    rule_columns_error,
    subset_body,
)
from proxy.policy.sql import CombinedWhere, remap_where_error
from proxy.runtime import (
    ANONYMOUS,
    INSTANCES,
    Prepared,
    Runtime,
    RuntimeHolder,
    principal_of,
)
from proxy.shape_request import ShapeRequest
from proxy.upstream.client import key_of, request_line
from proxy.upstream.forward import SUBSET_WAIT, Admit, Forwarder, Reauthorise, Target
from proxy.upstream.held import MIN_HOLD
from proxy.upstream.respond import Outcome
from proxy.upstream.url import (
    build_delete_by_handle_url,
    build_upstream_url,
    credentials_query,
    definition_key,
    handle_definition_key,
)

logger = logging.getLogger(__name__)

#: What an app holds, by name (`app[FORWARDER]`): for tests and tools.
HOLDER = StateKey[RuntimeHolder]("holder")
SESSION = StateKey[aiohttp.ClientSession]("session")
METRICS = StateKey[Metrics]("metrics")
FORWARDER = StateKey[Forwarder]("forwarder")
ADMISSION = StateKey[Admission]("admission")


#: How many times a request is authorised again when access is revoked before the engine is
#: asked for it (`Reauthorise`); then it gets a 503 to retry.
REAUTHORISE_TRIES = 3


async def serve(request: Request, *, shape_name: str | None) -> StreamResponse:
    """`authorise_and_forward`, again under the current config when access was revoked
    (a reload, an issuer's key dropped) between its authorisation and its engine request
    (`upstream.forward.Reauthorise`): its answer is the one it would have had arriving after
    the revocation, never one of the rule it withdrew."""
    for _ in range(REAUTHORISE_TRIES):
        try:
            return await authorise_and_forward(request, shape_name=shape_name)
        except Reauthorise:
            continue
    raise ServiceUnavailable(
        "config_changing", "the proxy's configuration is changing; retry", retry_after=1
    )


async def authorise_and_forward(request: Request, *, shape_name: str | None) -> StreamResponse:
    """Authorise the request, then forward it: the request path of every shape request.

    `shape_name` is None for `/v1/shape` (the client names the table), the name for
    `/shapes/<name>` (the config names the table, filter and columns).

    Per-principal limits (`proxy.limits`) apply between the two steps: a live request is
    charged to its principal's held requests while it is open; `_forward` hands the
    forwarder an `admit` callable that it awaits only when a new engine request is needed (a
    cache hit or a request joining a flight is free) and whose permit it holds while that
    engine request runs; over a limit it raises a `ProxyError` (429, or 503 after the bounded
    pool wait, with `retry_after`) that the middleware renders like any other.
    """
    context = request.context
    runtime = _app(request).holder.current  # this request keeps this config through a reload
    epoch = _app(request).forwarder.revocations  # (and ends with it: `Target.epoch`)
    method = request.method
    body: bytes | None = None
    if method in ("GET", "HEAD"):  # HEAD: the GET's headers without its body, as Electric
        prepared = await _prepare_get(request, runtime, shape_name)
    elif method == "OPTIONS":
        context.outcome = "preflight"
        max_age = runtime.loaded.config.cors.max_age
        return Response(status=204, headers=_preflight(request, max_age))
    elif method in ("POST", "DELETE"):
        try:
            prepared, body = await _prepare(request, runtime, shape_name, method=method)
        except BadShapeRequest:
            if method == "DELETE" and shape_name is None:
                refused = await _engine_refuses_delete(request, runtime)
                if refused is not None:
                    return refused
            raise
    else:
        raise MethodNotAllowed("method_not_allowed", "Method Not Allowed")  # the engine's words
    context.subject, context.table, context.rule = prepared.subject, prepared.table, prepared.rule
    context.live = prepared.live
    context.shared = prepared.shared
    # A live request holds its client connection until answered, joined or not: charged to
    # its principal's `max_held` for that long (`Admission.hold`; 429 past it).
    held = (
        _app(request).admission.hold(principal(request, prepared), prepared.limits)
        if prepared.live and method in ("GET", "HEAD")
        else None
    )
    # A subset snapshot takes one of the engine's subset query connections, then keeps its
    # answer in the engine's subset budget until it is handed over: charged to its
    # principal's `max_subsets` for that long, or waits for a place (`proxy.limits.subsets`).
    subset = None
    max_subsets = prepared.limits.max_subsets
    if max_subsets is not None and is_subset(prepared, method):
        try:
            subset = await _app(request).subsets.take(
                principal(request, prepared),
                max_subsets,
                prepared.limits.retry_after,
                wait=prepared.limits.subset_wait,
                max_waiting=prepared.limits.max_concurrent,
            )
        except BaseException:  # (a 429, or its client gone while it waited)
            if held is not None:
                held.release()
            raise
    if prepared.upstream_body is not None:  # a GET subset too long for a URL: sent as a POST
        method, body = "POST", prepared.upstream_body
    try:
        # (`_forward`'s steps here, not in a coroutine of its own: a held long-poll keeps
        # each frame of its chain, ~300 B apiece, for as long as it is held)
        target = target_of(prepared, method, body, epoch)
        forwarder = _app(request).forwarder
        outcome = await forwarder.forward(
            request, target, runtime.options, context.request_id, _admitter(request, prepared)
        )
        if (
            method == "HEAD"
            and outcome.upstream_status == 400
            and prepared.policy_where is not None
        ):
            refusal = await _blame_head(request, runtime, prepared)
            if refusal is not None:
                return refusal
        return finish(request, runtime, outcome, prepared)
    finally:
        if held is not None:
            held.release()
        if subset is not None:
            subset.release()


def is_subset(prepared: Prepared, method: str) -> bool:
    """Whether the request is a subset snapshot: a POST (its body is one), or a GET whose
    engine URL (built from the policy's decision) carries a subset, or had to send it as a
    POST body."""
    if method == "POST" or prepared.upstream_body is not None:
        return True
    return any(name.startswith("subset__") for name in prepared.url.query)


async def _engine_refuses_delete(request: Request, runtime: Runtime) -> StreamResponse | None:
    """The engine's 405 for a DELETE the proxy refuses as malformed (a 400: its parameters,
    or a definition the policy cannot read), when the engine takes no DELETE at all (run
    without `--allow-delete`): it says so before reading any parameter, so a client hears
    that, not the proxy's 400. Asked with a DELETE naming nothing (which an engine that
    takes DELETEs refuses without deleting anything: the client's request never reaches
    it); None if not a 405. (A 401 or 403 keeps the policy's answer.)"""
    context = request.context
    base = URL(runtime.loaded.config.upstream.url)
    url = base.with_path(base.path.rstrip("/") + "/v1/shape")
    target = Target(method="DELETE", url=url, url_text=str(url), shared=True, cacheable=False)
    try:
        outcome = await _app(request).forwarder.forward(
            request, target, runtime.options, context.request_id
        )
    except ProxyError:
        return None
    if outcome.upstream_status != 405:
        return None
    context.upstream_status = 405
    context.outcome, context.reason = "refused", "method_not_allowed"
    return outcome.response


def _preflight(request: Request, max_age: int) -> dict[str, str]:
    """A preflight's headers. From an Origin (one allowed: a refused one is a 403 before any
    handler), `Access-Control-Allow-Headers` reflects every valid header name the browser
    asks for (`reflected_request_headers`: a page's own X-Tenant, Sentry's headers), with
    `Vary: Origin, Access-Control-Request-Headers` (the answer depends on both, so a cache
    must not hand one page's answer to another). Without an Origin (no browser's), as the
    engine does: the requested names on the proxy's fixed list. Left out when none is asked
    for."""
    headers = preflight_headers(max_age)
    headers.pop("Access-Control-Allow-Headers", None)
    wanted = ", ".join(request.headers.getall("Access-Control-Request-Headers", ()))
    if len(request.headers.getall("Origin", ())) == 1:
        allowed = reflected_request_headers(wanted)
        headers["Vary"] = "Origin, Access-Control-Request-Headers"
    else:
        allowed = [
            name.strip()
            for name in wanted.split(",")
            if name.strip().lower() in ALLOWED_REQUEST_HEADERS
        ]
    if allowed:
        headers["Access-Control-Allow-Headers"] = ", ".join(allowed)
    return headers


class Services(Protocol):
    """What the handlers use of the app answering them (`proxy.app.ProxyApp`, which routes
    to them and so sits above this module)."""

    @property
    def holder(self) -> RuntimeHolder: ...
    @property
    def forwarder(self) -> Forwarder: ...
    @property
    def admission(self) -> Admission: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def subsets(self) -> SubsetSlots: ...


def _app(request: Request) -> Services:
    app = request.app
    assert app is not None
    return cast(Services, app)


def _admitter(request: Request, prepared: Prepared) -> Admit:
    """Per-principal admission for this request's engine request, if one is needed.

    `forward` calls it only for a new engine request (a cache hit or a joined flight is
    free). Requests without a subject are charged to their client address.
    """
    return functools.partial(
        _app(request).admission.admit, principal(request, prepared), prepared.limits
    )


def principal(request: Request, prepared: Prepared) -> str:
    """Who the request is charged to: requests without a subject, to their client address."""
    if prepared.principal == ANONYMOUS:
        trusted = _app(request).holder.current.loaded.config.server.trusted_proxies
        return f"{ANONYMOUS} {client_address(request.remote, request.headers, trusted)}"
    return prepared.principal


async def _blame_head(request: Request, runtime: Runtime, prepared: Prepared) -> Response | None:
    """A HEAD's 400 has no body to tell whose part of the where the engine refused: the GET's
    says (the engine checks both alike; a refused where makes no shape). The policy's
    refusal when it is the policy's filter, else None (the engine's 400 as it is)."""
    context = request.context
    said = await _app(request).forwarder.error_body(
        request, target_of(prepared, "GET", None), runtime.options, context.request_id, 400
    )
    refusal = None if said is None else blame_policy_where(request, runtime, prepared, said)
    if refusal is not None:
        context.upstream_status = 400
    return refusal


def blame_policy_where(
    request: Request, runtime: Runtime, prepared: Prepared, body: bytes
) -> Response | None:
    """The proxy's answer for an engine 400 (its JSON `body`) whose where error is located
    in the rule's enforced filter (`proxy.policy.blame`), never the engine's words: those
    name a where the client did not write, and the position (and maybe the text) of a filter
    it may not see. A claim bound under the refused node is what does not fit (`"sub":
    "abc"` where the filter compares an int column): a 403 `claim_unusable` naming the
    claim only, as for a scalar claim where a list is read. Else the policy's own text is
    refused (a column it names is gone): a 400 naming the rule, the engine's words in a
    WARNING for the operator, once per rule. None when the error is not the policy's (the
    client's own where keeps the engine's 400)."""
    assert prepared.policy_where is not None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    errors = answer.get("errors") if isinstance(answer, dict) else None
    messages = errors.get("where") if isinstance(errors, dict) else None
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, str):
            continue
        found = blame(message, prepared.policy_where)
        if found is None:
            continue
        context = request.context
        context.outcome = "refused"
        if found.claims:
            names = " or ".join(repr(c) for c in found.claims)
            claim = "claim" if len(found.claims) == 1 else "claims"
            context.reason = "claim_unusable"
            logger.info(
                "request %s: the sync engine refused rule %r's filter with the token's %s %s "
                "bound: %s",
                context.request_id,
                prepared.rule,
                names,
                claim,
                message,
            )
            return error_response(
                403,
                "claim_unusable",
                f"the token's {names} {claim} is not a value this shape's filter can use",
            )
        return _policy_filter_refused(request, runtime, prepared, message)
    if not prepared.policy_where.combined:
        # The client sent no where: the where the engine judged is the policy's filter
        # alone, so an error it does not locate is the policy's too (`abs(i4) < {{n}}` over
        # a row whose i4 overflows: "Postgres could not evaluate the query over the table's
        # rows: numeric value out of range"). Its words, as `errors.where`, blamed a where
        # the client never wrote and told of a value in rows it may not see.
        said = next((m for m in messages if isinstance(m, str)), None)
        if said is not None:
            return _policy_filter_refused(request, runtime, prepared, said)
    return None


def _policy_filter_refused(
    request: Request, runtime: Runtime, prepared: Prepared, message: str
) -> Response:
    """The 400 for a rule's filter the engine refuses whatever the token holds, naming the
    rule only; the engine's words in a WARNING for the operator, once per rule."""
    context = request.context
    context.outcome = "refused"
    context.reason = "policy_filter_refused"
    key = f"where\x00{prepared.rule}"
    if key not in runtime.warned_rules:
        runtime.warned_rules.add(key)
        logger.warning(
            "the sync engine refuses policy rule %r's filter for table %s (%s): no request "
            "of this rule can be served until it is mended",
            prepared.rule,
            prepared.table,
            message,
        )
    return error_response(
        400,
        "policy_filter_refused",
        f"the proxy's policy rule {prepared.rule!r} has a filter the sync engine refuses "
        "for this table: no request of this rule can be served until the proxy's "
        "configuration is mended (its log says why)",
    )


def remap_where_errors(response: StreamResponse, combined: CombinedWhere) -> None:
    """Put the engine's errors about a combined where (a whole JSON error answer) in terms of
    the client's own where, in place (`proxy.policy.sql.remap_where_error`)."""
    if not isinstance(response, Response) or not isinstance(response.body, bytes):
        return
    try:
        answer = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return
    errors = answer.get("errors") if isinstance(answer, dict) else None
    messages = errors.get("where") if isinstance(errors, dict) else None
    if not isinstance(messages, list):
        return
    remapped = [remap_where_error(m, combined) if isinstance(m, str) else m for m in messages]
    if remapped != messages:
        assert isinstance(errors, dict)
        errors["where"] = remapped
        response.body = orjson.dumps(answer)  # (as the engine writes it: compact)


#: How the engine's refusal of a generated column in the replicated columns begins
#: (`sync_engine.shapes.definition.choose_columns`).
_GENERATED_REFUSAL = "Generated columns cannot be replicated by PostgreSQL"


def name_the_rule(
    response: StreamResponse,
    rule: str,
    rule_columns: tuple[str, ...],
    warned: set[str],
    *,
    field: str = "columns",
) -> None:
    """The engine's 400 for a shape without all its primary key columns, when the policy rule
    hides one of them: no request of that rule can succeed, and the engine's words (about a
    `columns` the client may not have sent) blame the client. Said in the rule's terms
    instead (`proxy.policy.evaluate.rule_columns_error`), in place; the missing columns go to
    the operator, in a WARNING once per rule (`warned`: those named so far under this config;
    the client may not see their names).

    `field="queryable_columns"`: the `columns` the engine refused were the client's
    `queryable_columns` (`Decision.columns_are_queryable`), so its other refusals of them go
    under that name, as the engine names them when it gets the list alone; all but a
    generated column's, which the engine names `columns` then too (it checks the list as
    the columns it replicates: `sync_engine.shapes.definition.choose_columns`)."""
    if not isinstance(response, Response) or not isinstance(response.body, bytes):
        return
    try:
        answer = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return
    errors = answer.get("errors") if isinstance(answer, dict) else None
    messages = errors.get("columns") if isinstance(errors, dict) else None
    if not isinstance(messages, list):
        return
    said = [
        rule_columns_error(m, rule, rule_columns) if isinstance(m, str) else None for m in messages
    ]
    if not any(said):
        if field != "columns" and not all(
            isinstance(m, str) and m.startswith(_GENERATED_REFUSAL) for m in messages
        ):
            assert isinstance(errors, dict)
            answer["errors"] = {field if k == "columns" else k: v for k, v in errors.items()}
            response.body = orjson.dumps(answer)
        return
    if rule not in warned:
        warned.add(rule)
        logger.warning(
            "policy rule %r shows a table without all of its primary key columns (the "
            "engine: %s): add them to the rule's columns",
            rule,
            "; ".join(m for m in messages if isinstance(m, str)),
        )
    assert isinstance(errors, dict)
    errors["columns"] = [new or old for new, old in zip(said, messages, strict=True)]
    if isinstance(answer.get("message"), str) and answer["message"] in messages:
        answer["message"] = errors["columns"][messages.index(answer["message"])]
    response.body = orjson.dumps(answer)


def target_of(
    prepared: Prepared, method: str, body: bytes | None, epoch: int | None = None
) -> Target:
    """What to ask the engine for an authorised request, authorised now (`epoch`:
    `Target.epoch`; `Target.answer_by` from the token's expiry and now)."""
    until = prepared.token_until
    return Target(
        method=method,
        cacheable=method != "HEAD" and prepared.unless_engine_refuses is None,
        url=prepared.url,
        url_text=prepared.url_text,
        body=body,
        live=prepared.live,
        sse=prepared.sse,
        shared=prepared.shared,
        definition=prepared.definition,
        handle=prepared.handle,
        initial=prepared.initial,
        deadline=prepared.token_exp,
        epoch=epoch,
        answer_by=None if until is None else max(until, time.time() + MIN_HOLD),
        subset=prepared.subset or method == "POST",
        refused=prepared.unless_engine_refuses is not None,
    )


def finish(
    request: Request, runtime: Runtime, outcome: Outcome, prepared: Prepared | None = None
) -> StreamResponse:
    """The client's response from a forwarded request's outcome, noted in its context.

    `prepared.combined`: the client's where went to the engine ANDed with the enforced one; a
    400 about it is said in terms of the client's own where (`remap_where_errors`). A 400
    refusing the shape's columns for want of a primary key column the rule hides is said in
    the rule's terms (`name_the_rule`)."""
    context = request.context
    if (
        prepared is not None
        and prepared.unless_engine_refuses is not None
        and outcome.upstream_status != 400
    ):
        # The engine named no fault before the proxy's: the proxy's refusal. (The engine
        # refuses such an order_by by the same rule, so it never answers rows; were it to,
        # they would be the policy's own: its filter and columns went with the request.)
        deferred = prepared.unless_engine_refuses.copy()
        context.upstream_status = outcome.upstream_status
        context.outcome, context.reason = "refused", deferred.reason
        return render_proxy_error(deferred)
    if outcome.upstream_status == 401:
        # The engine refused the proxy's own credentials (`upstream.secret_env` or
        # `secret_file`, `source_id`): nothing the client can mend with its token, so not a
        # 401 (on which Electric's client asks the app for a new token and tries again, for
        # ever), but a gateway error it retries after a while, and an ERROR line for the
        # operator.
        logger.error(
            "the sync engine refused the proxy's credentials (401): check upstream.secret_env "
            "(or secret_file) and upstream.source_id (request %s)",
            context.request_id,
        )
        context.upstream_status = 401
        context.outcome, context.reason = "error", "upstream_unauthorized"
        return error_response(
            502,
            "upstream_unauthorized",
            "the proxy could not authenticate to the sync engine",
            retry_after=runtime.options.retry_after,
        )
    if _not_the_engines_failure(outcome):
        # A 5xx that is not the engine's JSON: a tier between proxy and engine (nginx's HTML
        # 502/504) answered for an engine it could not reach. Said as when the proxy cannot
        # reach the engine itself (JSON, no-store, Retry-After), not relayed as text/html
        # that Electric's client cannot read (attack 05:03).
        timeout = outcome.upstream_status == 504
        context.upstream_status = outcome.upstream_status
        context.outcome = "error"
        context.reason = "upstream_timeout" if timeout else "upstream_unreachable"
        return error_response(
            504 if timeout else 502,
            context.reason,
            "the sync engine did not answer in time" if timeout
            else "the sync engine is unreachable",
            retry_after=runtime.options.retry_after,
        )  # fmt: skip
    if outcome.upstream_status is not None and outcome.upstream_status >= 400:
        secret = runtime.loaded.upstream_secret
        if not clean_error_response(
            outcome.response, secret.get_secret_value() if secret else None
        ):
            logger.warning(
                "an upstream %d answer's body has a Content-Encoding the proxy cannot decode "
                "to scrub it (a hop between the proxy and the engine?): answered 502",
                outcome.upstream_status,
            )
            context.upstream_status = outcome.upstream_status
            context.outcome, context.reason = "error", "upstream_error"
            return error_response(
                502,
                "upstream_error",
                "the sync engine connection failed",
                retry_after=runtime.options.retry_after,
            )
        if prepared is not None and outcome.upstream_status == 400:
            response = outcome.response
            if (
                prepared.policy_where is not None
                and isinstance(response, Response)
                and isinstance(response.body, bytes)
            ):
                refusal = blame_policy_where(request, runtime, prepared, response.body)
                if refusal is not None:
                    context.upstream_status = 400
                    return refusal
            if prepared.combined is not None:
                remap_where_errors(outcome.response, prepared.combined)
            if prepared.rule_columns is not None:
                name_the_rule(
                    outcome.response,
                    prepared.rule,
                    prepared.rule_columns,
                    runtime.warned_rules,
                    field="queryable_columns" if prepared.columns_are_queryable else "columns",
                )
    context.upstream_status = outcome.upstream_status
    context.cache = outcome.cache
    if outcome.failure is not None:
        context.outcome, context.reason = outcome.failure
    return outcome.response


def _not_the_engines_failure(outcome: Outcome) -> bool:
    """A whole 5xx answer without the engine's JSON body (the engine's errors all are)."""
    status = outcome.upstream_status
    if status is None or status < 500 or not isinstance(outcome.response, Response):
        return False
    ctype = outcome.response.headers.get("Content-Type", "")
    return not ctype.lower().startswith("application/json")


#: The prepared-request cache's stand-in for "no Authorization header" (a real key is a hash).
ANONYMOUS_KEY = b"anonymous"


async def _prepare_get(request: Request, runtime: Runtime, shape_name: str | None) -> Prepared:
    """`_prepare` for a GET, remembered per (Authorization, query) under this config.

    A repeated pair was already authorised: its result is reused until the token expires
    (bounded by the token-cache TTL) instead of redoing every step. A query whose position
    parameters (`offset`, `handle`, `cursor`: a live follower's, new each request) split off
    (`proxy.http.positions`) is remembered once per rest of the query and kind of position,
    its engine URL made from a template with this request's values.
    """
    authorization = request.headers.get("Authorization")
    cache, remapped = runtime.prepared, runtime.remapped
    key: tuple[bytes, str, str] | None = None
    found: positions.Split | None = None
    if cache is not None and remapped is not None:
        # (an empty header is a token, and a 401 (`_claims`), never the anonymous entry: it
        # was served what an anonymous client had asked before it: attack 05:24)
        digest = ANONYMOUS_KEY if authorization is None else TokenVerifier.digest(authorization)
        name = shape_name or ""
        found = positions.split(request.query_string)
        if found is not None:
            rest, kind, values = found
            prepared = cache.get((digest, name, rest, kind)) or remapped.get(
                (digest, name, rest, kind)
            )
            if prepared is not None and prepared.expires > time.time():
                _app(request).metrics.token_cache_lookup(True)
                return _instance(runtime, (digest, name, request.query_string), prepared, values)
        key = (digest, name, request.query_string)
        prepared = cache.get(key) or remapped.get(key)
        if prepared is not None and prepared.expires > time.time():
            _app(request).metrics.token_cache_lookup(True)
            return prepared
    epoch = runtime.verifier.epoch
    prepared, _ = await _prepare(request, runtime, shape_name, method="GET")
    limited = prepared.limits.max_subsets is not None and is_subset(prepared, "GET")
    # (nor one whose refusal waits for the engine's answer: the fast lane would relay it;
    # nor a subset while the fast lane would wait less for its answer than the general path,
    # `subset_wait`: its own `first_byte_timeout` made a slow subset the proxy's 504, review
    # 22:55; remembered again once the fast lane waits as long, bugs-for-perf 22:45)
    limited = (
        limited
        or prepared.unless_engine_refuses is not None
        or (prepared.subset and runtime.options.first_byte_timeout < SUBSET_WAIT)
    )
    if cache is not None and remapped is not None and key is not None and not limited:
        # (a subset under `max_subsets` is never remembered: the fast lane, which reads these,
        # would forward its repeats without counting them)
        if epoch == runtime.verifier.epoch:
            # (not when the issuer's keys changed meanwhile: the token may be one they dropped)
            kept = cache if prepared.combined is None else remapped
            made = None if found is None else positions.template(prepared, found[1], found[2])
            if found is not None and made is not None:
                kept[(key[0], key[1], found[0], found[1])] = made
                _remember(runtime, key, made, prepared)  # (this query's: `_instance`)
            else:
                kept[key] = prepared
    return prepared


def _instance(
    runtime: Runtime, key: tuple[bytes, str, str], template: Prepared, values: tuple[str, ...]
) -> Prepared:
    """`template`'s decision for this query (`positions.instantiate`), the same object for
    the same query while it is among the last `INSTANCES` made (`Runtime.instances`)."""
    made = runtime.instances.get(key)
    if made is not None and made[0] is template:
        runtime.instances.move_to_end(key)
        return made[1]
    prepared = positions.instantiate(template, values)
    _remember(runtime, key, template, prepared)
    return prepared


def _remember(
    runtime: Runtime, key: tuple[bytes, str, str], template: Prepared, prepared: Prepared
) -> None:
    runtime.instances[key] = (template, prepared)
    if len(runtime.instances) > INSTANCES:
        runtime.instances.popitem(last=False)


async def _claims(request: Request, runtime: Runtime) -> tuple[Claims, bool]:
    """The verified claims and whether the caller is anonymous (no Authorization header).

    A request without a token is anonymous only when some rule serves anonymous callers;
    otherwise it is refused at once (401), as before anything else is looked at. A token
    that is present but invalid is always a 401, never a fallback to anonymous, except
    under a config with no issuers at all: nothing there could verify a token, so one that
    an app sends anyway (meant for its own API) is ignored and the caller is anonymous,
    the least-privileged principal, as the engine itself would ignore the header.
    """
    policy_anonymous = runtime.loaded.policy.anonymous
    if policy_anonymous and (
        "Authorization" not in request.headers or not runtime.loaded.config.issuers
    ):
        return {}, True
    return await runtime.verifier.verify(bearer_token(request.headers)), False


async def _prepare(
    request: Request, runtime: Runtime, shape_name: str | None, *, method: str
) -> tuple[Prepared, bytes | None]:
    """Authenticate, parse, authorise and build the upstream URL (raises `ProxyError`).

    Returns the prepared request and, for a POST, the subset body to send upstream.
    """
    config = runtime.loaded.config
    query = list(request.query.items())
    refuse_token_in_query(query)
    claims, anonymous = await _claims(request, runtime)
    post = method == "POST"
    posted = engine_body(await _read_body(request, config.server.max_body_bytes)) if post else None
    # (before anything reads the decoded query's values; after the body, as the engine)
    check_utf8(request.query_string)
    checked = None
    if shape_name is None and method == "DELETE":
        # (the engine's checks of a DELETE, before the policy's; its offset never read)
        query = check_delete_as_the_engine(query)
    elif shape_name is None:
        # The engine's own checks first, so a request wrong in several ways is refused for
        # what the engine would name first (an offset before a table, say).
        checked = check_as_the_engine(query, posted)
    elif method != "DELETE" and (named := runtime.loaded.policy.shapes.get(shape_name)):
        # A named shape is the engine's request for its table: its numbers, flags and
        # subset read (and refused) as the engine reads them, not by the proxy's own reading
        # (`subset__limit=%205` was served, `subset__limit=0` refused in other words).
        named_table = [] if any(name == "table" for name, _ in query) else [("table", named.table)]
        checked = check_as_the_engine([*query, *named_table], posted)
    shape_request = (
        parse_post_request(query, posted, checked) if post else parse_shape_query(query, checked)
    )
    if method == "DELETE" and is_delete_by_handle(shape_request, shape_name):
        return _prepare_delete_by_handle(request, runtime, claims, anonymous, shape_request), None
    try:
        decision = evaluate(
            runtime.loaded.policy,
            claims,
            shape_request,
            shape_name=shape_name,
            anonymous=anonymous,
            delete=method == "DELETE",
        )
    except Unauthenticated:
        if anonymous and "Authorization" in request.headers and not config.issuers:
            # (a token was sent, ignored by `_claims` as nothing could verify it: "a bearer
            # token is required" would send its sender looking at the token, not the config)
            raise Unauthenticated(
                "no_issuer", "this proxy accepts no bearer token: no issuer is configured"
            ) from None
        raise
    secret = runtime.loaded.upstream_secret
    build = functools.partial(
        build_upstream_url,
        config.upstream.url,
        decision,
        source_id=config.upstream.source_id,
        secret=secret.get_secret_value() if secret is not None else None,
    )
    url = build(subset_in_query=not post)
    upstream_body = None
    if not post and decision.subset is not None and not fits(url):
        # Too long for the engine's request line: the subset clauses go in a POST body.
        url, upstream_body = build(subset_in_query=False), subset_body(decision.subset)
    # else a 414 naming the limit (the engine would answer with a 400); measured for the
    # method the engine gets (a HEAD's, as long as a POST's, the engine's own 414 past it)
    sent = "POST" if post or upstream_body is not None else method
    check_forwarded_fits(
        url,
        "GET" if sent == "HEAD" else sent,
        client_method=request.method,
        client_target=request.raw_path,
        credentials=credentials_query(config.upstream.source_id, secret),
    )
    protocol = dict(decision.protocol)
    # (`-1_0` is the engine's other spelling of `-1`: the same answer, revalidated the same
    # way, never a plain cache entry served for its s-maxage after a rotation: twin 02:40)
    initial = protocol.get("offset") in ("-1", "-1_0", "now")
    definition = definition_key(decision, source_id=config.upstream.source_id)
    sub = claims.get("sub")
    # Never reused past the token's expiry, nor longer than a verified token is cached.
    expires = time.time() + config.server.token_cache_ttl
    if not anonymous:
        expires = min(float(claims["exp"]), expires)
    prepared = Prepared(
        url=url,
        url_text=str(url),
        subject=str(sub) if sub is not None else None,
        table=decision.table,
        rule=decision.rule,
        principal=principal_of(claims),
        live=shape_request.live,
        sse=shape_request.wants_sse,
        shared=decision.shared,
        definition=definition,
        handle=None if initial else protocol.get("handle"),
        initial=initial,
        subset=post or decision.subset is not None,
        unless_engine_refuses=decision.unless_engine_refuses,
        expires=expires,
        token_exp=None if anonymous else float(claims["exp"]),
        token_until=(
            None if anonymous else float(claims["exp"]) + runtime.verifier.leeway(claims.get("iss"))
        ),
        limits=resolve(
            config.limits, decision.limits, shape=None if method == "DELETE" else definition
        ),
        upstream_body=upstream_body,
        request_line=request_line("GET", url),
        pool_key=key_of(url),
        combined=decision.combined,
        rule_columns=decision.rule_columns,
        columns_are_queryable=decision.columns_are_queryable,
        policy_where=decision.policy_where,
    )
    body = None
    if post:
        body = subset_body(decision.subset) if decision.subset else b"{}"
    return prepared, body


#: Content codings of a POST body the proxy decodes, as the engine's server (aiohttp) does:
#: zlib's window bits for each (`deflate` with or without its zlib header, as aiohttp reads it).
_DECODED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}


async def _read_body(request: Request, limit: int) -> bytes:
    """A POST body, decoded from its `Content-Encoding` (gzip or deflate, as the engine
    decodes them; identity as is), at most `limit` bytes once decoded: a body read as JSON
    whatever its coding said (the proxy answered a gzip body "Invalid JSON" where the engine
    served it, and read a `br` one as if it were plain)."""
    raw = await request.read()
    coding = request.headers.get("Content-Encoding")
    if coding is None:
        return raw
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return raw
    wbits = _DECODED.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(
            "unsupported_content_encoding",
            "Unsupported Content-Encoding: a request body may be gzip, deflate or identity",
        )
    if not raw:
        return raw
    if not wbits:  # (deflate: zlib's header, or raw deflate as some clients send it)
        wbits = zlib.MAX_WBITS if raw[0] & 0x0F == 8 else -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        body = decoder.decompress(raw, limit + 1)  # (a bomb stops here: bounded output)
    except zlib.error:
        body = None
    if body is not None and len(body) > limit:
        raise HttpError(413, "Request Entity Too Large")
    if body is None or not decoder.eof or decoder.unused_data:
        # (the engine's words for a body its server cannot read)
        raise EngineRefusal(
            "bad_request", "Malformed request body", body={"message": "Malformed request body"}
        )
    return body


def _prepare_delete_by_handle(
    request: Request,
    runtime: Runtime,
    claims: Claims,
    anonymous: bool,
    shape_request: ShapeRequest,
) -> Prepared:
    """`DELETE /v1/shape?handle=H` with no definition, for a caller who may delete any shape.

    On success the forwarder retires H in the response cache (its DELETE rule), so no
    answer of the deleted shape is served again.
    """
    config = runtime.loaded.config
    rule = evaluate_delete_by_handle(runtime.loaded.policy, claims, anonymous=anonymous)
    handle = dict(shape_request.protocol)["handle"]
    secret = runtime.loaded.upstream_secret
    url = build_delete_by_handle_url(
        config.upstream.url,
        handle,
        source_id=config.upstream.source_id,
        secret=secret.get_secret_value() if secret is not None else None,
    )
    check_forwarded_fits(
        url,
        "DELETE",
        client_method=request.method,
        client_target=request.raw_path,
        credentials=credentials_query(config.upstream.source_id, secret),
    )
    sub = claims.get("sub")
    return Prepared(
        url=url,
        url_text=str(url),
        subject=str(sub) if sub is not None else None,
        table="",
        rule=rule.name,
        principal=principal_of(claims),
        live=False,
        sse=False,
        # (as a DELETE naming its table: its engine headers as they are where no caller
        # differs, e.g. the open policy; they said `private, no-cache` and `Vary` there)
        shared=delete_by_handle_shared(runtime.loaded.policy),
        definition=handle_definition_key(handle, source_id=config.upstream.source_id),
        handle=handle,
        initial=False,
        expires=time.time(),
        limits=resolve(config.limits, rule.limits),
        request_line=request_line("DELETE", url),
        pool_key=key_of(url),
    )


async def engine_health(request: Request) -> StreamResponse:
    """`GET /v1/health`: the engine's own health answer (body and status), no token needed.

    Electric clients and tools probe this path; the proxy's own liveness is `/healthz`.
    """
    context = request.context
    context.outcome = "health"
    app = _app(request)
    runtime = app.holder.current
    base = URL(runtime.loaded.config.upstream.url)
    url = base.with_path(base.path.rstrip("/") + "/v1/health")
    target = Target(method="GET", url=url, url_text=str(url), shared=True, cacheable=False)
    outcome = await app.forwarder.forward(request, target, runtime.options, context.request_id)
    context.upstream_status = outcome.upstream_status
    return outcome.response


async def root(request: Request) -> StreamResponse:
    """`GET /`: an empty 200, as the engine and Electric answer it.

    Electric's client test suites (and tools) probe the server's root before anything else and
    stop unless it is a 2xx; the proxy must not be told apart from the engine there: no
    `Cache-Control` either (the engine's has none; the proxy's said `no-store`).
    """
    request.context.outcome = "health"
    # (a HEAD's answer says `Content-Length: 0` as its GET's does: the engine's since
    # 59c79ae9, as Electric's `Plug.Head`)
    return Response(status=200, headers={"Content-Length": "0"})


#: `/healthz`'s `config_error` for a caller that may not read `/metrics`.
CONFIG_ERROR_HIDDEN = "the last config reload failed; see the proxy's log"


async def healthz(request: Request) -> StreamResponse:
    """Liveness plus config state: a failed reload shows here while the old config serves.

    The error's text (file path, table and rule names, environment variable names: policy
    internals) only to a caller that may read `/metrics` (`metrics_refusal`: the metrics
    token, or a local client); anyone else reads that a reload failed (attack 07:45)."""
    request.context.outcome = "health"
    holder = _app(request).holder
    error = holder.last_error
    if error is not None:
        loaded = holder.current.loaded
        token = loaded.metrics_token
        secret = None if token is None else token.get_secret_value()
        local = loaded.config.metrics.allow_loopback
        if metrics_refusal(request.remote, request.headers, secret, allow_loopback=local):
            error = CONFIG_ERROR_HIDDEN
    body = {
        "status": "ok",
        "config_loaded_at": holder.current.loaded_at,
        "config_error": error,
    }
    return json_response(json.dumps(body), headers={"Cache-Control": "no-store"})


async def metrics(request: Request) -> StreamResponse:
    """Prometheus text, for whom `metrics_refusal` lets read it (config `metrics:`)."""
    loaded = _app(request).holder.current.loaded
    token = loaded.metrics_token
    refusal = metrics_refusal(
        request.remote,
        request.headers,
        None if token is None else token.get_secret_value(),
        allow_loopback=loaded.config.metrics.allow_loopback,
    )
    if refusal is not None:
        raise Unauthenticated(*refusal)
    request.context.outcome = "metrics"
    payload = generate_latest(_app(request).metrics.registry)
    return Response(
        body=payload, headers={"Cache-Control": "no-store", "Content-Type": CONTENT_TYPE_LATEST}
    )
