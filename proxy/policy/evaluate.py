"""Decide what an authenticated client may sync: (claims, client shape request) -> Decision.

Pure and synchronous: no I/O, no clock. Default deny: an unknown table, a table without a
matching allow rule, or a matching deny rule is a `Forbidden`. The enforced filter is always
present (unless the rule says `all_rows: true`); the client can only narrow it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.model import ClaimMatch
from proxy.errors import BadShapeRequest, Forbidden
from proxy.limits.config import RuleLimits
from proxy.policy.compiled import CompiledPolicy, CompiledRule, CompiledTable
from proxy.policy.sql import ClauseCache, parse_table_name
from proxy.shape_request import ShapeRequest, SubsetRequest

Claims = Mapping[str, Any]
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Decision:
    """An allowed shape, ready to become an upstream URL."""

    table: str
    rule: str
    where: str | None
    params: tuple[str, ...]
    columns: tuple[str, ...] | None
    queryable_columns: tuple[str, ...] | None
    replica: str | None
    protocol: tuple[tuple[str, str], ...]
    subset: SubsetRequest | None
    limits: RuleLimits | None = None  # the rule's overrides of the per-principal limits


def claim_value(claims: Claims, path: str) -> Any:
    """Look up `path` in the claims: the exact key first (URL-shaped claim names), then dots."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _norm(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _matches(claims: Claims, when: Mapping[str, ClaimMatch]) -> bool:
    for path, expected in when.items():
        actual = claim_value(claims, path)
        if actual is _MISSING or actual is None:
            return False
        have = {_norm(v) for v in actual} if isinstance(actual, list) else {_norm(actual)}
        want = {_norm(v) for v in expected} if isinstance(expected, list) else {_norm(expected)}
        if not have & want:
            return False
    return True


def _pg_array(values: list[Any]) -> str:
    items = []
    for v in values:
        if isinstance(v, dict | list) or v is None:
            raise Forbidden("claim_unusable", "a claim list may hold only scalar values")
        text = _norm(v).replace("\\", "\\\\").replace('"', '\\"')
        items.append(f'"{text}"')
    return "{" + ",".join(items) + "}"


def _param_from_claim(claims: Claims, path: str) -> str:
    value = claim_value(claims, path)
    if value is _MISSING or value is None:
        raise Forbidden("missing_claim", f"the token has no {path!r} claim, which this shape needs")
    if isinstance(value, list):
        return _pg_array(value)
    if isinstance(value, dict):
        raise Forbidden("claim_unusable", f"claim {path!r} is an object, not a value")
    return _norm(value)


def _select_rule(table: CompiledTable, claims: Claims) -> CompiledRule:
    for deny in table.deny:
        if _matches(claims, deny.when):
            raise Forbidden("denied_by_rule", f"access to this shape is denied ({deny.reason})")
    for rule in table.allow:
        if _matches(claims, rule.when):
            return rule
    raise Forbidden("no_matching_rule", "no policy rule allows this user to sync this shape")


def _find_table(
    policy: CompiledPolicy, request: ShapeRequest, shape_name: str | None
) -> CompiledTable:
    if shape_name is not None:
        table = policy.shapes.get(shape_name)
        if table is None:
            raise Forbidden("unknown_shape", f"there is no named shape {shape_name!r}")
        if request.where is not None or request.params or request.columns is not None:
            raise BadShapeRequest(
                "named_shape_definition", "a named shape takes no where, params or columns"
            )
        if request.table is not None and _table_key(request.table) != table.key:
            raise BadShapeRequest("named_shape_definition", "table does not match the named shape")
        return table
    if request.table is None:
        raise BadShapeRequest("missing_table", "the table parameter is required")
    found = policy.tables.get(_table_key(request.table))
    if found is None:
        raise Forbidden("table_not_allowed", "this table may not be synced")
    return found


def _table_key(text: str) -> tuple[str, str]:
    try:
        return parse_table_name(text)
    except ValueError as exc:
        raise BadShapeRequest("invalid_table", str(exc)) from None


def _build_where(
    rule: CompiledRule, claims: Claims, request: ShapeRequest, clauses: ClauseCache
) -> tuple[str | None, tuple[str, ...]]:
    enforced_params = tuple(
        _param_from_claim(claims, p) for p in (rule.template.claim_paths if rule.template else ())
    )
    enforced_sql = rule.template.sql if rule.template else None
    if request.where is None:
        if request.params:
            raise BadShapeRequest("params_without_where", "params are only accepted with a where")
        return enforced_sql, enforced_params
    if not rule.client_where:
        raise Forbidden("client_where_not_allowed", "this shape does not accept a client where")
    clause = clauses.client_where(
        request.where, rule.columns, param_offset=len(enforced_params), what="where"
    )
    if set(request.params) != set(range(1, clause.param_count + 1)):
        raise BadShapeRequest(
            "invalid_params", "params must be numbered 1..n, one for each $n in where"
        )
    client_params = tuple(request.params[i] for i in range(1, clause.param_count + 1))
    where = f"({enforced_sql}) AND ({clause.sql})" if enforced_sql else f"({clause.sql})"
    return where, enforced_params + client_params


def _check_subset(rule: CompiledRule, subset: SubsetRequest, clauses: ClauseCache) -> SubsetRequest:
    if not rule.subset:
        raise Forbidden("subset_not_allowed", "this shape does not accept subset requests")
    where = None
    if subset.where is not None:
        clause = clauses.client_where(subset.where, rule.columns, what="subset where")
        if set(subset.params) != {str(i) for i in range(1, clause.param_count + 1)}:
            raise BadShapeRequest(
                "invalid_params", "subset params must be numbered 1..n, one for each $n"
            )
        where = clause.sql
    elif subset.params:
        raise BadShapeRequest("params_without_where", "subset params need a subset where")
    order_by = None
    if subset.order_by is not None:
        order_by = clauses.order_by(subset.order_by, rule.columns, what="subset order_by")
    return SubsetRequest(
        where=where,
        params=subset.params,
        limit=subset.limit,
        offset=subset.offset,
        order_by=order_by,
    )


def evaluate(
    policy: CompiledPolicy, claims: Claims, request: ShapeRequest, *, shape_name: str | None = None
) -> Decision:
    """Authorise `request` for `claims`, returning the shape to request from the engine.

    Raises `Forbidden` (403) when the policy refuses and `BadShapeRequest` (400) when the
    request is malformed in a way only the policy can see (e.g. params for a missing where).
    """
    table = _find_table(policy, request, shape_name)
    rule = _select_rule(table, claims)
    where, params = _build_where(rule, claims, request, policy.clauses)
    columns = request.columns
    if rule.columns is not None and columns is not None:
        hidden = [c for c in columns if c not in rule.columns]
        if hidden:
            raise Forbidden("column_not_allowed", f"columns not allowed: {', '.join(hidden)}")
    if columns is None:
        columns = rule.column_order
    if request.replica not in (None, "default", "full"):
        raise BadShapeRequest("invalid_replica", "replica must be 'default' or 'full'")
    if request.replica == "full" and not rule.replica_full:
        raise Forbidden("replica_full_not_allowed", "replica=full is not allowed for this shape")
    if request.wants_sse and not rule.sse:
        raise Forbidden("sse_not_allowed", "SSE is not allowed for this shape; use long-polling")
    subset = (
        _check_subset(rule, request.subset, policy.clauses) if request.subset is not None else None
    )
    return Decision(
        table=table.table,
        rule=rule.name,
        where=where,
        params=params,
        columns=columns,
        queryable_columns=rule.column_order,
        replica=request.replica,
        protocol=request.protocol,
        subset=subset,
        limits=rule.limits,
    )


def subset_body(subset: SubsetRequest) -> bytes:
    """The JSON body for a POST subset request: only the subset keys, never shape keys.

    Electric merges unknown body keys into the query params, so forwarding the client's
    body as-is would let it override `table` or `where`.
    """
    body: dict[str, object] = {}
    if subset.where is not None:
        body["where"] = subset.where
    if subset.params:
        body["params"] = dict(subset.params)
    for key in ("limit", "offset", "order_by"):
        value = getattr(subset, key)
        if value is not None:
            body[key] = value
    return json.dumps(body, separators=(",", ":")).encode()
