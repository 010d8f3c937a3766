"""Build the engine URL for a decision, from scratch, and mask it for humans.

The client's path and query are never copied: the path is the constant `/v1/shape`, the shape
definition comes from the decision, protocol params were allow-listed by `http.params`, and
`source_id`/`secret` are appended last by the proxy whatever the client sent.

The query is encoded by `encode_query`, which escapes only what has a meaning in a query
string, so that no value is longer in the engine URL than the client could have sent it
(see there): yarl's own encoding (`with_query`) escapes `=`, `<`, `>`, `"`, `[`...
(3 bytes each), and a clause that fit the engine's request line as the client wrote it was
a 414 through the proxy (transparency 17:16).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote_plus

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
    query: list[tuple[str, str]] = [("table", short_table(decision.table))]
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
    if decision.queryable_columns_text is not None:
        query.append(("queryable_columns", decision.queryable_columns_text))
    elif decision.queryable_columns is not None:
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


#: A quoted table name (`format_table`'s `"schema"."name"`) whose parts the engine reads the
#: same unquoted: lower-case ASCII identifiers (`sync_engine.pg.identifiers`: an unquoted name
#: is downcased, a schema left out is `public`).
_PLAIN_TABLE = re.compile(r'"([a-z_][a-z0-9_$]*)"\."([a-z_][a-z0-9_$]*)"')


def short_table(table: str) -> str:
    """The engine's `table` for the decision's `"schema"."name"`, as short as it reads the
    same: `items` for `"public"."items"`, `s.items` for `"s"."items"`, else as it is. The
    quoted form was up to 11 bytes longer than the client's `items` and, at the engine's
    request-line limit, a 414 through the proxy where the engine served it."""
    plain = _PLAIN_TABLE.fullmatch(table)
    if plain is None:
        return table
    schema, name = plain.groups()
    return name if schema == "public" else f"{schema}.{name}"


def build_delete_by_handle_url(
    base: str, handle: str, *, source_id: str | None, secret: str | None
) -> URL:
    """The engine URL for `DELETE /v1/shape?handle=H` (see `evaluate_delete_by_handle`)."""
    return _shape_url(base, [("handle", handle)], source_id, secret)


#: What a query value keeps as it is (besides letters, digits and `_.-~`, which `quote_plus`
#: always keeps): every other printable ASCII character but `&` (between parameters), `+`
#: (a space), `%` (an escape), `#` (a fragment) and `?` (kept escaped so that `?` still
#: only starts the query, as a cache's rules read it: config/varnish's `[?&]live=true`).
#: A space is `+`; anything else (controls, non-ASCII as UTF-8) is percent-escaped. The
#: engine's HTTP parser (llhttp, aiohttp's) and nginx's read each of these characters raw,
#: and the engine, the proxy and the tiers decode the query alike (yarl, Plug: split on `&`,
#: then the name at the first `=`, `+` a space, `%XX` a byte), so the engine reads the value
#: the proxy checked. A client cannot send a byte past ASCII raw (both parsers refuse it),
#: so each value is at most as long as the client could have written it, but for a raw `?`.
_VALUE_SAFE = "!$'()*,/:;<=>@[\\]^`{|}\""
#: A name keeps the same but `=` (its end).
_NAME_SAFE = _VALUE_SAFE.replace("=", "")


def encode_query(pairs: Iterable[tuple[str, str]]) -> str:
    """The raw query string of `pairs`, escaped as little as the engine reads it (see
    `_VALUE_SAFE`). The same pairs make the same text, whatever the client's own escapes
    were: the collapsing and cache keys (the URL text) stay one per shape request.

    A lone surrogate (never from a request target, whose non-UTF-8 escapes are refused
    first; claims holding one are refused by the policy) is dropped, as yarl dropped it."""
    return "&".join(
        f"{quote_plus(name, _NAME_SAFE, errors='ignore')}="
        f"{quote_plus(value, _VALUE_SAFE, errors='ignore')}"
        for name, value in pairs
    )


def encode_value(value: str) -> str:
    """One query value as `encode_query` writes it (the secret's form in the engine URL)."""
    return quote_plus(value, _VALUE_SAFE, errors="ignore")


def credentials_query(source_id: str | None, secret: Any) -> str:
    """`&source_id=...&secret=...` as the proxy adds them to an engine URL (`secret` a
    `SecretStr` or None): what a client of the engine adds to its own request."""
    pairs = [] if source_id is None else [("source_id", source_id)]
    if secret is not None:
        pairs.append(("secret", secret.get_secret_value()))
    return "&" + encode_query(pairs) if pairs else ""


def with_raw_query(url: URL, query: str) -> URL:
    """`url` (with no query, or its query replaced) with the already-encoded `query`."""
    return URL(f"{url.with_query(None).with_fragment(None)}?{query}", encoded=True)


def with_param(url: URL, name: str, value: str) -> URL:
    """`url` with parameter `name` set to `value` (where it was, else last), encoded as
    `encode_query` encodes it (yarl's `update_query` re-encoded the whole query its way)."""
    pairs = list(url.query.items())
    at = next((i for i, (key, _) in enumerate(pairs) if key == name), None)
    if at is None:
        pairs.append((name, value))
    else:
        pairs = [*pairs[:at], (name, value), *((k, v) for k, v in pairs[at + 1 :] if k != name)]
    return with_raw_query(url, encode_query(pairs))


def _shape_url(
    base: str, query: list[tuple[str, str]], source_id: str | None, secret: str | None
) -> URL:
    """`base`'s shape endpoint with `query`, then the source's credentials (added last)."""
    if source_id is not None:
        query.append(("source_id", source_id))
    if secret is not None:
        query.append(("secret", secret))
    root = URL(base)
    return with_raw_query(root.with_path(root.path.rstrip("/") + SHAPE_PATH), encode_query(query))


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
            decision.queryable_columns_text
            if decision.queryable_columns_text is not None
            else decision.queryable_columns,
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
    return str(with_raw_query(url, encode_query(masked))).replace("%5BREDACTED%5D", MASK)
