"""Build the engine URL for a decision, from scratch, and mask it for humans.

The client's path and query are never copied: the path is the constant `/v1/shape`, the shape
definition comes from the decision, protocol params were allow-listed by `http.params`, and
`source_id`/`secret` are appended last by the proxy whatever the client sent.
"""

from __future__ import annotations

import json

from yarl import URL

from proxy.policy.evaluate import Decision
from proxy.policy.sql import quote_identifier

SHAPE_PATH = "/v1/shape"
#: Query parameters whose value must never be shown (Electric's own redaction list, plus
#: `source_secret`: Electric Cloud's old name for `secret`, which the engine still reads).
SECRET_PARAMS = frozenset(
    {
        "secret",
        "api_secret",
        "source_secret",
        "token",
        "access_token",
        "id_token",
        "api_key",
        "password",
        "jwt",
    }
)
MASK = "[REDACTED]"


def build_upstream_url(
    base: str,
    decision: Decision,
    *,
    source_id: str | None,
    secret: str | None,
    subset_in_query: bool = True,
) -> URL:
    """The full engine URL (with the secret). `subset_in_query=False` for POST subsets."""
    query: list[tuple[str, str]] = [("table", decision.table)]
    if decision.where is not None:
        query.append(("where", decision.where))
    keys = decision.param_keys or ()  # (the client's keys as written: `Decision.param_keys`)
    query.extend(
        (f"params[{keys[i - 1] if i <= len(keys) else i}]", value)
        for i, value in enumerate(decision.params, start=1)
    )
    if decision.columns_text is not None:
        query.append(("columns", decision.columns_text))
    elif decision.columns is not None:
        query.append(("columns", ",".join(quote_identifier(c) for c in decision.columns)))
    if decision.queryable_columns is not None:
        query.append(
            ("queryable_columns", ",".join(quote_identifier(c) for c in decision.queryable_columns))
        )
    if decision.replica is not None:
        query.append(("replica", decision.replica))
    query.extend(decision.protocol)
    subset = decision.subset
    if subset is not None and subset_in_query:
        if subset.where is not None:
            query.append(("subset__where", subset.where))
        if subset.params:
            query.append(("subset__params", json.dumps(dict(subset.params), separators=(",", ":"))))
        if subset.limit is not None:
            query.append(("subset__limit", str(subset.limit)))
        if subset.offset is not None:
            query.append(("subset__offset", str(subset.offset)))
        if subset.order_by is not None:
            query.append(("subset__order_by", subset.order_by))
        if not any(name.startswith("subset__") for name, _ in query):
            # A subset of nothing in particular (`subset__offset=`): still a subset request.
            query.append(("subset__where", ""))
    return _shape_url(base, query, source_id, secret)


def build_delete_by_handle_url(
    base: str, handle: str, *, source_id: str | None, secret: str | None
) -> URL:
    """The engine URL for `DELETE /v1/shape?handle=H` (see `evaluate_delete_by_handle`)."""
    return _shape_url(base, [("handle", handle)], source_id, secret)


def _shape_url(
    base: str, query: list[tuple[str, str]], source_id: str | None, secret: str | None
) -> URL:
    """`base`'s shape endpoint with `query`, then the source's credentials (added last)."""
    if source_id is not None:
        query.append(("source_id", source_id))
    if secret is not None:
        query.append(("secret", secret))
    root = URL(base)
    return root.with_path(root.path.rstrip("/") + SHAPE_PATH).with_query(query)


_HANDLE_DEFINITION_PREFIX = '["handle",'


def handle_definition_key(handle: str, *, source_id: str | None) -> str:
    """A definition key for a shape known only by its handle: no cached answer has it, so
    on its DELETE the response cache drops that handle's answers under whatever definition
    they were stored (`is_handle_definition`, `ResponseCache.retire_handle`)."""
    return json.dumps(["handle", source_id, handle], separators=(",", ":"))


def is_handle_definition(definition: str) -> bool:
    """Whether `definition` is a `handle_definition_key` (a handle-only DELETE's): three
    items, where a shape's `definition_key` has more (and starts with its source id)."""
    if not definition.startswith(_HANDLE_DEFINITION_PREFIX):
        return False
    try:
        parsed = json.loads(definition)
    except ValueError:
        return False
    return isinstance(parsed, list) and len(parsed) == 3


def definition_key(decision: Decision, *, source_id: str | None) -> str:
    """What identifies the engine shape a decision asks for, as one string.

    Built from the shape-defining parameters only (not offset, handle, live, cursor or cache
    busters), so every request for one shape, whatever its offset, shares it: the response
    cache groups its answers by it to drop them all when the engine rotates the shape.
    `log` defaults to Electric's `full`, as the engine reads it.
    """
    protocol = dict(decision.protocol)
    return json.dumps(
        [
            source_id,
            decision.table,
            decision.where,
            decision.params,
            decision.columns_text if decision.columns_text is not None else decision.columns,
            decision.queryable_columns,
            decision.replica or "default",
            protocol.get("log", "full"),
        ],
        separators=(",", ":"),
    )


def mask_url(url: URL) -> str:
    """The URL as text with secret-bearing parameter values and the password of a
    `user:password@` (`upstream.url` may hold one) replaced by `[REDACTED]`."""
    masked = [
        (name, MASK if name.lower() in SECRET_PARAMS else value)
        for name, value in url.query.items()
    ]
    if url.password is not None:
        url = url.with_password(MASK)
    return str(url.with_query(masked)).replace("%5BREDACTED%5D", MASK)
