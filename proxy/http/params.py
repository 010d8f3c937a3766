"""Query string (and POST subset body) -> `ShapeRequest`. Pure; raises `BadShapeRequest`.

A repeated parameter takes its last value, as Plug decodes a query string (Electric) and as the
engine reads it; yarl's `.get()` returns the first, so the proxy never uses it: it checks the
last value and rebuilds the upstream URL from what it parsed, so `table=a&table=b` is checked
and served as `b`.
Only the protocol parameters listed below pass through to the engine; shape-defining
parameters are parsed so the policy can check them; anything else is dropped.

Refusals say what the engine says for the same input (`sync_engine.http.params`), in the same
order: NUL bytes (which would cut a clause short in the SQL parser,
so that the proxy would check and send less than the client wrote), then the values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping

from multidict import MultiDict

from proxy.errors import BadShapeRequest, EngineRefusal
from proxy.policy.sql import parse_identifier_list, parse_table_name
from proxy.shape_request import ShapeRequest, SubsetRequest
from sync_engine.errors import BadBody, InvalidRequest
from sync_engine.http.limits import MAX_PARAMS
from sync_engine.http.params import (
    DELETE_DEFINITION,
    ECTO_SPACE,
    SUBSET_BODY_KEYS,
    check_query_utf8,
    parse_delete_request,
    parse_json_body,
)
from sync_engine.http.params import ELECTRIC_NUMBER as _NUMBER
from sync_engine.http.params import PARAM_KEY as _PARAM_KEY
from sync_engine.http.params import SINGLE_PARAMS_SET as _SINGLE_SET
from sync_engine.http.params import SUBSET_PARAM_KEY as _SUBSET_PARAM_KEY
from sync_engine.http.params import ShapeRequest as EngineRequest
from sync_engine.http.params import _int_field as _engine_int
from sync_engine.http.params import key_number as _key_number
from sync_engine.http.params import parse_shape_request as engine_parse
from sync_engine.http.parser_refusals import MAX_REQUEST_TARGET as CLIENT_MAX_TARGET
from sync_engine.shapes.definition import SubsetParams as EngineSubset

#: Electric's protocol parameters that the client controls (`ELECTRIC_PROTOCOL_QUERY_PARAMS`
#: minus the subset ones, which are checked separately).
PROTOCOL_PARAMS = (
    "offset",
    "handle",
    "live",
    "cursor",
    "live_sse",
    "experimental_live_sse",
    "log",
    "cache-buster",
    "expired_handle",
)
_SUBSET_SCALARS = ("subset__where", "subset__limit", "subset__offset", "subset__order_by")
#: Accepted and dropped: Electric's server ignores them, and they cannot be checked.
_SUBSET_IGNORED = ("subset__where_expr", "subset__order_by_expr")
#: The longest value the proxy reads: what a request line the engine reads can carry (its
#: query values are bounded by it anyway), also for a shape parameter sent in a POST body. An
#: 8,192-character cap refused a `where` of 8,193-9,950 characters the engine serves (attack).
MAX_VALUE_LENGTH = CLIENT_MAX_TARGET


def _invalid(reason: str, field: str, message: str) -> EngineRefusal:
    """The engine's refusal of one parameter (`field`, dotted for a subset's: `subset.limit`),
    in its words and body: `{"message": "Invalid request", "errors": {...}}`."""
    errors: dict[str, object] = {}
    node = errors
    parts = field.split(".")
    for part in parts[:-1]:
        child: dict[str, object] = {}
        node[part] = child
        node = child
    node[parts[-1]] = [message]
    return EngineRefusal(reason, message, body={"message": "Invalid request", "errors": errors})


def check_utf8(query_string: str) -> None:
    """Refuse a query whose percent-escapes are not UTF-8 as the engine does, with the
    engine's own check (`sync_engine.http.params.check_query_utf8`: a 400 naming the first
    such parameter). The decoded query (yarl) replaces such bytes with U+FFFD, so the proxy
    checked and forwarded a clause other than the one sent (`title='\ufffd'` for
    `title='%FF'`; attack 07:35)."""
    try:
        check_query_utf8(query_string)
    except InvalidRequest as exc:
        raise _refusal(exc) from None


def _one_each(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The value of each parameter as the engine reads it: the last of a repeated one (Plug's
    query decoding, which Electric's server and the engine read), so the value the proxy
    checks is the one it sends; after the engine's NUL check of the kept values (a replaced
    value is never read)."""
    values: dict[str, str] = dict(items)
    for name, value in values.items():
        if "\x00" in value and (name in _SINGLE_SET or name.startswith(("params[", "subset__"))):
            field = "params" if name.startswith("params[") else name
            raise _invalid("nul_byte", field, "must not contain NUL bytes")
    for name, value in values.items():
        # (a name the engine does not read is dropped here, however long, as the engine
        # ignores it: a 129-character unknown name was a 400 here, served there)
        if len(value) > MAX_VALUE_LENGTH and (name in _SINGLE_SET or name.startswith("params[")):
            raise BadShapeRequest("parameter_too_long", f"parameter {name[:40]!r} is too long")
    # Electric treats empty strings as absent, except a param's value (`title = $1` may well
    # compare with the empty string), `cursor` (a stream's refresh before its first live
    # answer sends `cursor=`, which tells a cache behind the proxy (nginx) that it is a
    # refresh; without it the refresh is the stream's cached catch-up URL; the engine, as
    # Electric, reads an empty cursor as none) and the flags, which the engine reads as true
    # when present and not `false` (a bare `?live`, `experimental_live_sse=`: the proxy
    # dropped them, so the engine got a long-poll where straight it served SSE).
    # Those the engine reads through Ecto's empty value (`sync_engine.http.params._blank`)
    # are absent when only white space, too: `replica=%20` was the proxy's "is invalid"
    # where the engine serves the default.
    return {
        name: value
        for name, value in values.items()
        if (value.lstrip(ECTO_SPACE) if name in _BLANK_WHEN_SPACE else value != "")
        or name in _KEPT_EMPTY
        or name.startswith(("params[", "subset__params["))
    }


#: Parameters whose empty value the engine reads as something other than absent.
_KEPT_EMPTY = frozenset({"cursor", "live", "live_sse", "experimental_live_sse"})
#: Parameters the engine reads as absent when they hold only white space (`ECTO_SPACE`).
_BLANK_WHEN_SPACE = frozenset(
    {"table", "offset", "handle", "where", "columns", "queryable_columns", "replica", "log",
     "params", *_SUBSET_SCALARS, "subset__params"}
)  # fmt: skip


def _protocol(values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The protocol parameters sent on, in `PROTOCOL_PARAMS` order, the flags in one spelling:
    `live` and `live_sse` as `true` (anything but `false`: `1`, `yes`, a bare `?live`) or
    `false`, and `experimental_live_sse` as `live_sse` when there is no `live_sse` (the
    engine's reading, Electric's: it is dropped when both are given). Every tier behind the
    proxy then routes and keys on one spelling: nginx's routes SSE on `live=true&live_sse=true`,
    and an SSE stream asked as `experimental_live_sse=true` (clients before `live_sse`) or
    `live_sse=1` went to its cached locations, which swallowed the engine's
    `X-Accel-Buffering: no` (twin 07:55)."""
    protocol = []
    for name in PROTOCOL_PARAMS:
        value = values.get(name)
        if value is None:
            continue
        if name == "experimental_live_sse":
            if "live_sse" in values:
                continue
            name = "live_sse"
        if name in ("live", "live_sse"):
            value = "false" if value == "false" else "true"
        protocol.append((name, value))
    return tuple(protocol)


def _numbered(params: Mapping[str, str], field: str) -> dict[int, str]:
    """`{"1": a, "2": b}` -> `{1: a, 2: b}`: numbers as keys, 1..n without a gap."""
    if len(params) > MAX_PARAMS:
        raise _invalid(
            "invalid_params", field, f"has too many parameters (the limit is {MAX_PARAMS})"
        )
    if not all(_NUMBER.match(key) for key in params):
        raise _invalid("invalid_params", field, "Parameters can only use numbers as keys")
    # (as the engine reads them, which is Electric's `Integer.parse`: `+1` and `0000000001`
    # are 1, `-1` and a key of 13 digits or more never fit)
    numbered = {_key_number(key): value for key, value in params.items()}
    if sorted(numbered) != list(range(1, len(params) + 1)):
        raise _invalid(
            "invalid_params", field, "Parameters must be numbered sequentially, starting from 1"
        )
    return numbered


def _keys_as_given(params: Mapping[str, str]) -> tuple[str, ...] | None:
    """The keys of numbered params (checked by `_numbered`) in their numbers' order, when one
    is not written as the plain number (`01`); None when all are (see
    `ShapeRequest.param_keys`)."""
    keys = sorted(params, key=_key_number)
    return tuple(keys) if any(key != str(_key_number(key)) for key in keys) else None


def _keyed(params: Mapping[str, str], field: str) -> dict[str, str]:
    """Numbered params checked as the engine checks them (`_numbered`), in their numbers'
    order, each under its key as written: the engine looks `$1` up under `1` only, so a
    subset's `{"01": ...}` must reach it as `01` (its 400), never as `1` (rows)."""
    _numbered(params, field)
    return {key: params[key] for key in sorted(params, key=_key_number)}


def _int_param(name: str, value: object, minimum: int) -> int | None:
    """A subset limit or offset, read and refused by the engine's own reading
    (`sync_engine.http.params._int_field`: Ecto's integer cast, the bigint bound), so the
    two cannot drift (the proxy's `int()` took `" 5"`, `1_0`, `\u0665` and `1.0`, and said
    "greater than or equal to 1" where the engine says "greater than 0")."""
    try:
        return _engine_int(value, name, minimum)
    except InvalidRequest as exc:
        raise _refusal(exc) from None


def _subset_params(raw: object) -> dict[str, str]:
    """Subset params as the engine reads them: a JSON object or array, scalar values (in the
    URL as JSON text; in a POST body as JSON itself or as JSON text in a string)."""
    field = "subset.params"
    if isinstance(raw, str):
        # The engine (Electric's JsonOrMapStringParams) reads a string, in the URL or in a
        # POST body, as JSON text, and a blank one as Ecto's empty value: no params. The
        # proxy refusing what the engine takes would make it tellable from the engine.
        if not raw.strip():
            return {}
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):  # deep nesting: a 400, not a 500
            raise _invalid("invalid_subset", field, "params must be valid JSON") from None
        if not isinstance(raw, dict | list):
            raise _invalid("invalid_subset", field, "params must be a JSON object")
    if isinstance(raw, list):
        raw = {str(i + 1): value for i, value in enumerate(raw)}
    if not isinstance(raw, dict):
        raise _invalid("invalid_subset", field, "must be an object")
    if any(isinstance(value, dict | list) for value in raw.values()):
        raise _invalid("invalid_subset", field, "values must be strings, numbers or booleans")
    texts = {
        str(key): "" if value is None else value if isinstance(value, str) else json.dumps(value)
        for key, value in raw.items()
    }
    if any("\x00" in text for text in texts.values()):
        raise _invalid("nul_byte", "subset.where", "must not contain NUL bytes")
    return _keyed(texts, field) if texts else {}


def _as_read_by_the_engine(subset: EngineSubset) -> SubsetRequest:
    """The engine's own reading of a request's subset (`check_as_the_engine`) as the
    proxy's: its params' text as the engine binds it (a JSON number's, `true`, `null`), its
    limit and offset as the engine reads them, the params in their numbers' order."""
    return SubsetRequest(
        where=subset.where,
        params={key: subset.params[key] for key in sorted(subset.params, key=_key_number)},
        limit=subset.limit,
        offset=subset.offset,
        order_by=subset.order_by,
    )


def _parse_subset(
    values: dict[str, str], present: bool, checked: EngineRequest | None
) -> SubsetRequest | None:
    """The subset of a query string; `present`: some `subset__*` parameter came, even empty
    (`subset__offset=`), which makes the request a subset request to the engine. `checked`:
    the engine's reading of the request, whose subset is taken as it is when it has one."""
    if not present:
        return None
    if checked is not None and checked.subset is not None:
        return _as_read_by_the_engine(checked.subset)
    if "subset__params" in values:
        params = _subset_params(values["subset__params"])
    else:
        bracketed: dict[str, str] = {}
        for key, value in values.items():
            match = _SUBSET_PARAM_KEY.match(key)
            if match:
                bracketed[match.group(1)] = value
        params = _keyed(bracketed, "subset.params") if bracketed else {}
    return SubsetRequest(
        where=values.get("subset__where"),
        params=params,
        limit=_int_param("limit", values.get("subset__limit"), 1),
        offset=_int_param("offset", values.get("subset__offset"), 0),
        order_by=values.get("subset__order_by"),
    )


def parse_shape_query(
    items: Iterable[tuple[str, str]], checked: EngineRequest | None = None
) -> ShapeRequest:
    """Parse a `/v1/shape` query string (as decoded name/value pairs); `checked`: the
    engine's own reading of it (`check_as_the_engine`), whose subset is the proxy's."""
    items = list(items)
    values = _one_each(items)
    bracketed: dict[str, str] = {}
    for key, value in values.items():
        match = _PARAM_KEY.match(key)
        if match:
            bracketed[match.group(1)] = value
    bare = values.get("params")
    if bare is not None and bare.strip():
        # The engine's (Electric's) words: `params` is a map there, and a bare string fails
        # Ecto's cast, "is invalid"; an empty or blank `params=` is no params (Ecto's empty
        # value), which the engine ignores.
        raise _invalid("invalid_params", "params", "is invalid")
    params = _numbered(bracketed, "params") if bracketed else {}
    param_keys = _keys_as_given(bracketed) if bracketed else None
    if "table" in values:  # (the engine reads the table's name before its columns)
        try:
            parse_table_name(values["table"])
        except ValueError as exc:
            raise _invalid("invalid_table", "table", str(exc)) from None
    columns = columns_error = None
    if "columns" in values:
        try:
            columns = parse_identifier_list(values["columns"])
        except ValueError as exc:
            columns_error = str(exc)  # (refused by the policy if it needs the list)
    return ShapeRequest(
        table=values.get("table"),
        where=values.get("where"),
        params=params,
        param_keys=param_keys,
        columns=columns,
        columns_text=values.get("columns"),
        columns_error=columns_error,
        queryable_columns_text=values.get("queryable_columns"),
        replica=values.get("replica"),
        protocol=_protocol(values),
        subset=_parse_subset(
            values, any(name.startswith("subset__") for name, _ in items), checked
        ),
    )


def parse_subset_body(body: bytes) -> SubsetRequest:
    """Parse a POST `/v1/shape` JSON body: `{where, params, limit, offset, order_by}`.

    Unknown keys are refused rather than merged into the shape (Electric would merge them).
    """
    if not body.strip():
        return SubsetRequest()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: a 400, not a 500
        raise BadShapeRequest("invalid_body", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadShapeRequest("invalid_body", "the request body must be a JSON object")
    if isinstance(data.get("subset"), dict) and len(data) == 1:
        data = data["subset"]
    allowed = {"where", "params", "limit", "offset", "order_by", "where_expr", "order_by_expr"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadShapeRequest("invalid_body", f"unexpected body keys: {', '.join(unknown)}")
    for key in ("where", "order_by"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise _invalid("invalid_subset", f"subset.{key}", "is invalid")
    where = data.get("where") or None
    order_by = data.get("order_by") or None
    if "\x00" in (where or "") + (order_by or ""):
        raise _invalid("nul_byte", "subset.where", "must not contain NUL bytes")
    raw_params = data.get("params")
    return SubsetRequest(
        where=where,
        params=_subset_params(raw_params) if raw_params is not None else {},
        limit=_int_param("limit", data.get("limit"), 1),
        offset=_int_param("offset", data.get("offset"), 0),
        order_by=order_by,
    )


#: The proxy's `code` for the engine's refusal of a parameter, by field (and words).
_REASONS = {
    "table": "invalid_table",
    "offset": "invalid_offset",
    "handle": "invalid_handle",
    "live": "invalid_live",
    "live_sse": "invalid_live",
    "replica": "invalid_replica",
    "log": "invalid_log",
    "where": "invalid_where",
    "params": "invalid_params",
    "subset": "invalid_subset",
    "columns": "invalid_columns",
    "query": "too_many_parameters",
    "body": "invalid_body",
}


def _reason(errors: Mapping[str, object]) -> tuple[str, str]:
    """(the proxy's code, the message) of the engine's first complaint."""
    field, messages = next(iter(errors.items()), ("", []))
    while isinstance(messages, Mapping):  # {"subset": {"offset": [...]}}
        messages = next(iter(messages.values()), [])
    message = str(messages[0]) if isinstance(messages, list) and messages else ""
    if message == "is not valid UTF-8":
        return "invalid_utf8", message
    if "at most once" in message or "more than once" in message:
        return "repeated_parameter", message
    if "NUL bytes" in message:
        return "nul_byte", message
    if "is too long" in message:
        return "parameter_too_long", message
    if field == "table" and message == "can't be blank":
        return "missing_table", message
    return _REASONS.get(field, "invalid_request"), message


def _refusal(exc: InvalidRequest | BadBody) -> EngineRefusal:
    if isinstance(exc, BadBody):
        body: dict[str, object] = {"error": exc.message}
        if exc.details:
            body["details"] = exc.details
        reason = "payload_too_large" if exc.status == 413 else "invalid_body"
        return EngineRefusal(reason, exc.message, body=body, status=exc.status)
    reason, message = _reason(exc.errors)
    return EngineRefusal(
        reason, message or exc.message, body={"message": exc.message, "errors": exc.errors}
    )


def engine_body(raw: bytes) -> dict[str, object] | None:
    """A POST body read as the engine reads it (`sync_engine.http.params.parse_json_body`):
    None when empty, else a JSON object, or its refusal in its words."""
    try:
        return parse_json_body(raw, exact=True)
    except (InvalidRequest, BadBody) as exc:
        raise _refusal(exc) from None


def check_as_the_engine(
    items: Iterable[tuple[str, str]], body: Mapping[str, object] | None = None
) -> EngineRequest:
    """Refuse what the engine's own parameter checks refuse (`sync_engine.http.params`), in
    their order and words: query size and repeats, then offset, handle, live, table, replica,
    log, the subset, the params. The proxy's own parsing and the policy come after, so a
    request wrong in several ways gets the engine's first complaint, not another one.
    Returns the engine's reading, whose subset the proxy then takes as it is (its numbers
    and params read by the engine's code, never by a second reading of the proxy's)."""
    try:
        return engine_parse(MultiDict(items), dict(body) if body is not None else None)
    except (InvalidRequest, BadBody) as exc:
        raise _refusal(exc) from None


def check_delete_as_the_engine(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Refuse a `DELETE /v1/shape` as the engine does, with the engine's own check
    (`sync_engine.http.params.parse_delete_request`: the two cannot drift apart); the
    parameters the proxy goes on with: what the engine reads, nothing else.

    As Electric's DeleteShapePlug, the engine reads `table` and `handle` (an empty one is
    absent) and, with a table, the definition's own parameters (`where`, `columns`,
    `replica`, `log`, `params[n]`); never `offset`, `live`, `live_sse` or `cursor`. The proxy
    read them too: a DELETE with `live=1&table=` got the engine's old live error, and one
    with `live=true&offset=nonsense` a 400 the engine (now) deletes through."""
    pairs = list(items)
    try:
        asked = parse_delete_request(MultiDict(pairs))
    except (InvalidRequest, BadBody) as exc:
        refusal = _refusal(exc)
        if isinstance(exc, InvalidRequest) and list(exc.errors) == ["handle"]:
            # (neither a table nor a handle: the access log says which is missing)
            refusal = EngineRefusal("missing_handle", refusal.message, body=refusal.body)
        raise refusal from None
    kept: list[tuple[str, str]] = []
    if asked.shape is not None:  # (by its definition; else by its handle alone)
        kept = [
            (name, value)
            for name, value in pairs
            if name in DELETE_DEFINITION or _PARAM_KEY.match(name) is not None
        ]
    if asked.handle is not None:
        kept.append(("handle", asked.handle))
    return kept


def _is_subset_param(name: str) -> bool:
    return name == "subset__params" or _SUBSET_PARAM_KEY.match(name) is not None


def parse_post_request(
    items: Iterable[tuple[str, str]],
    body: Mapping[str, object] | None,
    checked: EngineRequest | None = None,
) -> ShapeRequest:
    """A POST `/v1/shape` (query string and JSON body, already passed `check_as_the_engine`)
    read as the engine reads it: the body's subset keys (top level, or under `subset`) over
    the URL's `subset__*`, and a shape parameter (`table`, `columns`...) given as a string in
    the body only when the URL lacks it. The policy then checks the whole, as for a GET; the
    engine gets the shape in the URL and only the checked subset in the body."""
    pairs = list(items)
    subset_body: dict[str, object] = {}
    extra: list[tuple[str, str]] = []
    if body:
        nested = body.get("subset")
        if isinstance(nested, Mapping):
            subset_body.update(nested)
        present = {name for name, _ in pairs}
        for key, value in body.items():
            if key in SUBSET_BODY_KEYS:
                subset_body[key] = value
            elif key != "subset" and isinstance(value, str) and key in _SINGLE_SET:
                if key not in present:
                    extra.append((key, value))
                    present.add(key)
    has_subset = bool(subset_body) or any(name.startswith("subset__") for name, _ in pairs)
    if not has_subset:  # (a body `subset__where` counts only for a request with a subset)
        extra = [(k, v) for k, v in extra if not k.startswith("subset__")]
    # A URL subset value the body's replaces is never read by the engine (its `subset__limit=
    # abc` was refused here, where the engine served the body's limit); a subset parameter
    # left with no value stays, so that the request is still a subset request.
    overridden = {f"subset__{k}" for k in ("where", "limit", "offset", "order_by")
                  if k in subset_body}  # fmt: skip
    replaced_params = subset_body.get("params") is not None
    pairs = [
        (name, "" if name in overridden or (replaced_params and _is_subset_param(name)) else v)
        for name, v in pairs
    ]
    request = parse_shape_query([*pairs, *extra], checked)
    if not subset_body:
        return request
    if checked is not None and checked.subset is not None:
        return dataclasses.replace(request, subset=_as_read_by_the_engine(checked.subset))
    url = request.subset or SubsetRequest()
    where = subset_body.get("where", url.where)
    order_by = subset_body.get("order_by", url.order_by)
    if "params" in subset_body and subset_body["params"] is not None:
        raw_params = subset_body["params"]
        params = _subset_params(raw_params)
    else:
        params = dict(url.params)
    limit = subset_body["limit"] if "limit" in subset_body else url.limit
    offset = subset_body["offset"] if "offset" in subset_body else url.offset
    subset = SubsetRequest(
        where=where if isinstance(where, str) and where else None,
        params=params,
        limit=_int_param("limit", limit, 1),
        offset=_int_param("offset", offset, 0),
        order_by=order_by if isinstance(order_by, str) and order_by else None,
    )
    return dataclasses.replace(request, subset=subset)
