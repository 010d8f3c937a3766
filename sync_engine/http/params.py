"""Query string (and POST body) -> ShapeRequest, validated in Electric's order (pure).

Everything here is about the request's form; checks that need the catalog (does the table
exist, are the columns real, is the where clause valid) happen when the shape is resolved.
Unknown parameters are ignored, as the client sends several (`cache-buster`,
`expired_handle`, app-defined ones) that must not change the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from multidict import MultiDict, MultiMapping

from ..errors import BadBody, InvalidRequest
from ..log.offsets import InvalidOffset, LogOffset, parse_offset
from ..shapes.definition import LogMode, Replica, ShapeParams, SubsetParams
from . import limits

#: `params[N]` and `subset__params[N]` keys; the proxy reads them with the same patterns.
PARAM_KEY = re.compile(r"\Aparams\[([^\]]*)\]\Z")
SUBSET_PARAM_KEY = re.compile(r"\Asubset__params\[([^\]]*)\]\Z")
#: What the engine reads one value of (the last, when repeated: Plug's decoding).
SINGLE_PARAMS = (
    "table",
    "offset",
    "handle",
    "live",
    "live_sse",
    "experimental_live_sse",
    "cursor",
    "where",
    "columns",
    "queryable_columns",
    "replica",
    "log",
    "subset__where",
    "subset__limit",
    "subset__offset",
    "subset__order_by",
    "subset__params",
)
SINGLE_PARAMS_SET = frozenset(SINGLE_PARAMS)
#: By value (a dict lookup; calling the enum costs ~1 µs).
_REPLICAS = {str(m.value): m for m in Replica}
_LOG_MODES = {str(m.value): m for m in LogMode}


@dataclass(frozen=True, slots=True)
class ShapeRequest:
    """A `/v1/shape` request: the shape asked for, where in its log, and how to wait."""

    shape: ShapeParams
    offset: LogOffset | None  # None means `now`
    handle: str | None
    live: bool = False
    live_sse: bool = False
    cursor: int = 0
    subset: SubsetParams | None = None

    @property
    def from_start(self) -> bool:
        """The client starts at `-1` (a new client, or one refetching after a 409)."""
        return self.offset is not None and self.offset.is_before_all


def _flag(value: str | None) -> bool:
    """Electric's booleans: anything but the literal `false` (or absence) is true."""
    return value is not None and value != "false"


#: Unicode's White_Space characters, which Elixir's `String.trim_leading` removes (Python's
#: `str.strip` removes U+001C-U+001F too, which are not).
ECTO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _blank(value: str | None) -> str | None:
    """None for an absent value and for Ecto's empty one, whitespace only: Electric casts its
    parameters with Ecto's `cast/4`, whose default `empty_values` is
    `Ecto.Type.empty_trimmed_string?` (`String.trim_leading(value) == ""`), so `where=%20`
    is no where, `handle=%20` no handle and `offset=%20` "can't be blank". A value with
    anything else is kept as sent, spaces and all. (Not `live`/`live_sse`: Electric's plug
    makes them booleans first, `value != "false"`, so `live=%20` is true.)"""
    return None if value is None or not value.lstrip(ECTO_SPACE) else value


#: A key Electric reads as a number (`Integer.parse` with nothing left over): a sign, then
#: any number of digits (`+1`, `-1`, `0000000001`), as `Validators.all_keys_are_numbers`.
#: The proxy checks keys with it too (`proxy.http.params._numbered`).
ELECTRIC_NUMBER = re.compile(r"\A[+-]?[0-9]+\Z")


def key_number(key: str) -> int:
    """The number `ELECTRIC_NUMBER` key `key` is, or -1 for one past any count of keys
    (never `int()` of thousands of digits: Python refuses those, and they are just big)."""
    digits = key.lstrip("+-").lstrip("0")
    if len(digits) > 12:
        return -1
    value = int(digits or "0")
    return -value if key.startswith("-") else value


def _numbered(items: Mapping[str, str], field_name: str) -> dict[str, str]:
    limits.check_params_count(items, field_name)
    keys = list(items)
    if not all(ELECTRIC_NUMBER.match(k) for k in keys):
        raise InvalidRequest({field_name: ["Parameters can only use numbers as keys"]})
    if sorted(key_number(k) for k in keys) != list(range(1, len(keys) + 1)):
        raise InvalidRequest(
            {field_name: ["Parameters must be numbered sequentially, starting from 1"]}
        )
    # Keys as given, as Electric keeps them (`Integer.parse` only validates them): `$1` is
    # the value of `1`, never of `01`, which was read as `$1` here; Electric answers such a
    # clause "parameter $1 was not provided" (and "parameter value for $01 was not used").
    return dict(items)


#: A percent-escape of a byte past ASCII: the only way into a query string of bytes that
#: may not be UTF-8 (`check_query_utf8`).
_HIGH_ESCAPE = re.compile(r"%[89A-Fa-f][0-9A-Fa-f]")


def check_query_utf8(query_string: str) -> None:
    """Refuse the raw query string (as sent: percent-escapes undecoded) whose first pair
    with a percent-decoded name or value that is not UTF-8 (`+` as space) makes a 400
    naming it, `{<name>: ["is not valid UTF-8"]}` (`query` when the name itself is the
    invalid part), before any other check of the parameters, as Plug refuses such a query
    (`InvalidQueryError`, Electric's). aiohttp decodes `%ff` as U+FFFD (`request.query`):
    `where=title='%ff%fe'` was served as a clause other than the one sent, and
    `params[1]=%ff` bound U+FFFD (attack). The proxy calls it too, with the same words."""
    if _HIGH_ESCAPE.search(query_string) is None:
        return
    for part in query_string.split("&"):
        if _HIGH_ESCAPE.search(part) is None:
            continue
        name, _, value = part.partition("=")
        try:
            field = unquote_to_bytes(name.replace("+", " ")).decode()
        except UnicodeError:
            raise InvalidRequest({"query": ["is not valid UTF-8"]}) from None
        try:
            unquote_to_bytes(value.replace("+", " ")).decode()
        except UnicodeError:
            raise InvalidRequest({field or "query": ["is not valid UTF-8"]}) from None


def parse_shape_request(
    query: MultiMapping[str], body: Mapping[str, Any] | None = None
) -> ShapeRequest:
    """Validate a `/v1/shape` request's parameters; raises InvalidRequest naming the field."""
    items = list(query.items())
    plain = _plain(items)
    params: dict[str, str] = {}
    subset_params: dict[str, str] = {}
    has_subset = False
    if plain is not None:
        q = plain
    else:
        q, has_subset = _checked(query, items, params, subset_params)

    subset_body: dict[str, Any] = {}
    if body:
        nested = body.get("subset")
        if isinstance(nested, dict):
            subset_body.update(nested)
        for k, v in body.items():
            if k in SUBSET_BODY_KEYS:
                subset_body[k] = v
            elif k != "subset" and isinstance(v, str) and k in SINGLE_PARAMS:
                limit = limits.MAX_LENGTH.get(k, limits.DEFAULT_LENGTH)
                if len(v) > limit:
                    raise limits.too_long(k, limit)
                if "\x00" in v:
                    raise InvalidRequest({k: ["must not contain NUL bytes"]})
                q.setdefault(k, v)
        has_subset = has_subset or bool(subset_body)

    # 1. offset
    raw_offset = _blank(q.get("offset"))
    if raw_offset is None:
        raise InvalidRequest({"offset": ["can't be blank"]})
    offset: LogOffset | None
    if raw_offset == "now":
        offset = None
    else:
        try:
            offset = parse_offset(raw_offset)
        except InvalidOffset:
            raise InvalidRequest({"offset": ["has invalid format"]}) from None
    # 2. handle vs offset
    handle = _blank(q.get("handle"))
    resets = offset is None or offset.is_before_all
    if resets:
        handle = None
    elif handle is None:
        raise InvalidRequest({"handle": ["can't be blank when offset != -1"]})
    # 3. live vs offset, live_sse
    live = _flag(q.get("live"))  # (a boolean before Ecto sees it: `live=%20` is true)
    if live and offset is None:
        raise InvalidRequest({"live": ["can't be true when offset is 'now'"]})
    if live and offset is not None and offset.is_before_all:
        raise InvalidRequest({"live": ["can't be true when offset == -1"]})
    sse_raw = q.get("live_sse", q.get("experimental_live_sse"))
    live_sse = _flag(sse_raw)
    if live_sse and not live:
        raise InvalidRequest({"live_sse": ["can't be true unless live is also true"]})
    # 4. definition
    table = _blank(q.get("table"))
    if table is None:
        raise InvalidRequest({"table": ["can't be blank"]})
    replica = _REPLICAS.get(_blank(q.get("replica")) or "default")
    if replica is None:
        raise InvalidRequest({"replica": ["is invalid"]})
    log_mode = _LOG_MODES.get(_blank(q.get("log")) or "full")
    if log_mode is None:
        raise InvalidRequest({"log": ["is invalid"]})
    where = _blank(q.get("where"))
    if where is not None and len(where.encode()) > limits.MAX_WHERE_BYTES:
        raise InvalidRequest(
            {"where": [f"is bigger than maximum size ({limits.MAX_WHERE_BYTES} bytes)"]}
        )
    cursor_raw = q.get("cursor", "")
    cursor = (
        int(cursor_raw)
        if cursor_raw.isascii() and cursor_raw.isdigit() and len(cursor_raw) < 19
        else 0
    )

    subset = _parse_subset(q, subset_params, subset_body) if has_subset else None
    shape = ShapeParams(
        table=table,
        where=where,
        params=_numbered(params, "params") if params else {},
        columns=_blank(q.get("columns")),
        replica=replica,
        log_mode=log_mode,
        queryable_columns=_blank(q.get("queryable_columns")),
    )
    return ShapeRequest(
        shape=shape,
        offset=offset,
        handle=handle,
        live=live,
        live_sse=live_sse,
        cursor=cursor,
        subset=subset,
    )


#: What a DELETE reads besides `table` and `handle`: the definition's own parameters,
#: which tell one shape of the table from another (`params[n]` too). Never the position
#: or the wait (`offset`, `live`, `live_sse`, `cursor`) nor a subset: a DELETE has none.
DELETE_DEFINITION = frozenset({"table", "where", "columns", "replica", "log", "params"})


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """A `DELETE /v1/shape`: the definition named (None: by handle alone) and the handle."""

    shape: ShapeParams | None
    handle: str | None


def parse_delete_request(query: MultiMapping[str]) -> DeleteRequest:
    """Validate a `DELETE /v1/shape` as Electric's DeleteShapePlug does: it reads only
    `table` and `handle` (`Map.take`), an empty one being absent (Ecto's empty value).
    With a table, the definition is checked (the table's name first); without one, a
    handle must be named. `offset`, `live`, `live_sse` and the rest are never read: the
    engine refused `live=1&table=` for its live flag and a bad table after `live_sse=`,
    where Electric names the missing handle and the table. The proxy calls this too
    (`proxy.http.params`), so the two answer a DELETE alike.

    One difference, on purpose: Electric drops `where`, `columns`, `replica`, `log` and
    `params` and so deletes the table's plain shape; here they still say which shape of
    the table is meant (the proxy's narrowed DELETE names its own shape, never the wide
    one other principals read)."""
    table = _blank(last(query, "table"))
    handle = _blank(last(query, "handle"))
    if table is None:
        if handle is None:
            raise InvalidRequest({"handle": ["can't be blank when shape definition is missing"]})
        return DeleteRequest(None, handle)
    kept: MultiDict[str] = MultiDict(
        (k, v)
        for k, v in query.items()
        if k in DELETE_DEFINITION or (k.startswith("params[") and PARAM_KEY.match(k))
    )
    kept["offset"] = "-1"
    return DeleteRequest(parse_shape_request(kept).shape, handle)


def _plain(items: list[tuple[str, str]]) -> dict[str, str] | None:
    """The single-valued parameters of a query string that has nothing the full checks
    (`_checked`) would refuse or read further: no NUL byte in them, no `params`/`subset__`
    ones, every value within its length; else None. A repeated one takes its last value,
    as Plug decodes a query string (Electric's server).

    The usual request, a storm's 20,000 of them: one pass instead of four.
    """
    if len(items) > limits.MAX_QUERY_PARAMS:
        return None
    q: dict[str, str] = {}
    lengths = limits.MAX_LENGTH
    default = limits.DEFAULT_LENGTH
    for k, v in items:
        if k.startswith(("params", "subset__")):
            return None
        if k in SINGLE_PARAMS_SET:
            if "\x00" in v:
                return None
            q[k] = v
        if len(v) > lengths.get(k, default):
            return None
    return q


def _checked(
    query: MultiMapping[str],
    items: list[tuple[str, str]],
    params: dict[str, str],
    subset_params: dict[str, str],
) -> tuple[dict[str, str], bool]:
    """Every check of the query string, in Electric's order: the single-valued parameters,
    filling `params` and `subset_params`; and whether any `subset__` parameter came.

    A parameter given more than once takes its last value, `params[1]` as `table` (Plug's
    query decoding, which Electric's server reads: "If a value is given more than once, the
    last value takes precedence"); the values it replaces are not read, NUL bytes and all
    (their lengths still count: `limits.check_query`)."""
    limits.check_query(query)
    kept = {k: i for i, (k, _) in enumerate(items)}  # each name's last position
    q: dict[str, str] = {}
    for i, (k, v) in enumerate(items):
        if kept[k] != i:
            continue
        if "\x00" in v and (k in SINGLE_PARAMS_SET or k.startswith(("params[", "subset__"))):
            field = "params" if k.startswith("params[") else k
            raise InvalidRequest({field: ["must not contain NUL bytes"]})
        if k in SINGLE_PARAMS_SET:
            q[k] = v
    has_subset = False
    for i, (k, v) in enumerate(items):
        if k.startswith("params["):
            m = PARAM_KEY.match(k)
            if m and kept[k] == i:
                params[m.group(1)] = v
        elif k.startswith("subset__"):
            has_subset = True
            m = SUBSET_PARAM_KEY.match(k)
            if m and kept[k] == i:
                subset_params[m.group(1)] = v
    bare = last(query, "params")
    if _blank(bare) is not None:
        # `params=...` is one string where Electric's `params` field is a map
        # (`{:map, :string}`): Ecto's cast fails with its own words, "is invalid". An empty
        # (or blank) value is Ecto's empty value: the field keeps its default, no params.
        raise InvalidRequest({"params": ["is invalid"]})
    return q, has_subset


def last(query: MultiMapping[str], name: str) -> str | None:
    """A parameter's value as Electric reads it: the last one when it is repeated (Plug's
    query decoding), None when absent. For what the engine reads outside
    `parse_shape_request` (`secret`, `source_id`, a DELETE's `handle`)."""
    values = query.getall(name, ())
    return values[-1] if values else None


_MAX_BIGINT = 2**63 - 1  # LIMIT and OFFSET are bigint in Postgres


def _subset_error(field_name: str, message: str) -> InvalidRequest:
    return InvalidRequest({"subset": {field_name: [message]}})


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _int_field(value: Any, field_name: str, minimum: int) -> int | None:
    if value is None or value == "":
        return None
    # As Ecto's :integer cast (Electric's): a JSON integer, or a string of ASCII digits with an
    # optional sign. Not a bool, not a float (1.5, 1e3, 2.0), not Python's wider `int(str)`
    # (spaces, `1_0`, non-ASCII digits).
    if isinstance(value, JsonNumber):
        value = value.text
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        # (one of 20 or more digits is past bigint either way; `int()` refuses over 4,300)
        digits = value.lstrip("+-").lstrip("0") or "0"
        n = (-1 if value[0] == "-" else 1) * (int(digits) if len(digits) < 20 else 10**20)
    else:
        raise _subset_error(field_name, "is invalid")
    if n < minimum:
        # Ecto's validate_number words for Electric's rules: `limit` greater_than: 0,
        # `offset` greater_than_or_equal_to: 0.
        if minimum == 1:
            raise _subset_error(field_name, "must be greater than 0")
        raise _subset_error(field_name, f"must be greater than or equal to {minimum}")
    if n > _MAX_BIGINT:
        raise _subset_error(field_name, f"must be less than or equal to {_MAX_BIGINT}")
    return n


def _blank_text(value: Any) -> Any:
    """A subset field (URL text or any JSON value) with Ecto's empty text as None."""
    return _blank(value) if isinstance(value, str) else value


def _parse_subset(
    q: Mapping[str, str], bracket_params: dict[str, str], body: Mapping[str, Any]
) -> SubsetParams:
    where = _blank_text(body.get("where", q.get("subset__where")))
    if where is not None and not isinstance(where, str):
        raise _subset_error("where", "is invalid")
    order_by = _blank_text(body.get("order_by", q.get("subset__order_by")))
    if order_by is not None and not isinstance(order_by, str):
        raise _subset_error("order_by", "is invalid")
    # Electric's SubsetParams `params` is a JsonOrMapStringParams: a string (the query's
    # `subset__params`, or a string in the body) is decoded as JSON, "params must be valid
    # JSON" when it is not and "params must be a JSON object" when it decodes to anything
    # else (a list too: `["a"]` is not `{"1": "a"}` to Electric); a map is taken as is;
    # anything else, a list in the body included, fails Ecto's cast, "is invalid". The
    # client always sends an object (`Record<string, ...>`); a list was once read here as
    # $1, $2, ..., a request Electric refuses, so an app that relied on it would break on
    # Electric.
    raw_params: Any = body.get("params")
    if raw_params is None and "subset__params" in q:
        raw_params = q["subset__params"]
    if isinstance(raw_params, str) and _blank(raw_params) is None:
        raw_params = None  # Ecto's empty value: the default, no params
    if isinstance(raw_params, str):
        params_text = raw_params
        try:
            raw_params = orjson.loads(params_text)
        except orjson.JSONDecodeError:
            raw_params = _exact_json(params_text)  # (a number past a double's range?)
            if raw_params is None:
                raise _subset_error("params", "params must be valid JSON") from None
        if _has_float_value(raw_params):  # (a flat object: no depth for `json` to recurse)
            raw_params = _exact_json(params_text)  # (each number as written)
        if not isinstance(raw_params, dict):
            raise _subset_error("params", "params must be a JSON object")
    if raw_params is None:
        raw_params = bracket_params
    if not isinstance(raw_params, dict):
        raise _subset_error("params", "is invalid")
    if any(isinstance(v, dict | list) for v in raw_params.values()):
        raise _subset_error("params", "values must be strings, numbers or booleans")
    params = {str(k): _param_text(v) for k, v in raw_params.items()}
    for name, text in (("where", where), ("order_by", order_by)):
        if text is not None and len(text.encode()) > limits.MAX_WHERE_BYTES:
            raise _subset_error(
                name, f"is bigger than maximum size ({limits.MAX_WHERE_BYTES} bytes)"
            )
    if any(len(v) > limits.DEFAULT_LENGTH for v in params.values()):
        raise _subset_error(
            "params", f"is too long (the limit is {limits.DEFAULT_LENGTH} characters)"
        )
    for text in (where or "", order_by or "", *params.values()):
        if "\x00" in text:
            raise _subset_error("where", "must not contain NUL bytes")
    limit = _int_field(_blank_text(body.get("limit", q.get("subset__limit"))), "limit", 1)
    offset = _int_field(_blank_text(body.get("offset", q.get("subset__offset"))), "offset", 0)
    if (limit is not None or offset is not None) and not order_by:
        raise _subset_error("order_by", "order_by is required when limit or offset is present")
    if params:
        try:
            params = _numbered(params, "params")
        except InvalidRequest as e:
            raise InvalidRequest({"subset": e.errors}) from None
    return SubsetParams(
        where=where or None, params=params, limit=limit, offset=offset, order_by=order_by or None
    )


#: Bytes of a POST body the engine reads at most.
MAX_BODY = 8 * 1024 * 1024

#: Keys of a POST body that are the subset's (beside a nested `subset` object).
SUBSET_BODY_KEYS = ("where", "params", "limit", "offset", "order_by", "where_expr", "order_by_expr")


def parse_json_body(raw: bytes, *, exact: bool = False) -> dict[str, Any] | None:
    """A POST body as the engine reads it: None when empty, else a JSON object, refused in
    Electric's words (`BadBody`) otherwise. The proxy reads bodies with this too, so both
    refuse the same body the same way.

    `exact` (the engine's own reading): a body whose params hold a fraction, an integer
    beyond 64 bits or a number past a double's range (`1` and 5,000 zeros, which orjson
    refuses) is read again with every number kept as written (`JsonNumber`): the param is
    bound to the digits the client sent, where a double's nearest value (30 digits read as
    `1.2345678901234568e+29`) selected other rows than Postgres does for the number sent."""
    if len(raw) > MAX_BODY:
        raise BadBody("Request body too large", 413)
    if not raw.strip():
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own limit (1,024 levels), far above ours
            raise limits.too_deep() from None
        data = _exact_json(raw) if exact else None
        if data is None:
            raise BadBody("Invalid JSON in request body", details=str(exc)) from None
    if not isinstance(data, dict):
        raise BadBody("Request body must be a JSON object")
    limits.check_body(data)  # (its depth bounded before `json` recurses into it below)
    subset = data.get("subset")
    if _has_float_value(data.get("params")) or (
        isinstance(subset, dict) and _has_float_value(subset.get("params"))
    ):
        again: dict[str, Any] = _exact_json(raw) if exact else json.loads(raw)
        return again
    return data


class JsonNumber:
    """A JSON number as written (`_exact_json`): bound to a `$n` as its text, never a
    double's approximation; a subset's limit or offset reads its text as an integer."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"JsonNumber({self.text!r})"


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")  # (Python's json reads NaN, Infinity)


def _exact_json(text: str | bytes) -> Any:
    """`text` as JSON with each number a `JsonNumber` (no `int()`: it refuses 4,300+
    digits), NaN and Infinity refused as Electric's Jason refuses them; None when it is
    not JSON (or nests past the interpreter's recursion: orjson bounds the depth first).
    A lone surrogate (`"\\ud800"`), which `json` reads and orjson refuses, is not JSON
    either: its text cannot be encoded (a 500 in any `.encode()` after)."""
    try:
        value = json.loads(
            text, parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_not_json
        )
        orjson.dumps(value, default=_number_text)  # (refuses a surrogate, as `loads` does)
    except (ValueError, RecursionError, TypeError):  # (orjson.JSONEncodeError: TypeError)
        return None
    return value


def _number_text(value: object) -> str:
    if isinstance(value, JsonNumber):
        return value.text
    raise TypeError(type(value).__name__)


def _param_text(value: object) -> str:
    """A subset parameter's value as the text bound to its `$n`, as Electric's
    `JsonOrMapStringParams` writes it (Elixir's `to_string`): JSON `true`/`false` are
    "true"/"false" (Python's `str` wrote "True", which a text comparison matched otherwise,
    and otherwise than the proxy, which forwards "true"), `null` is ""."""
    if value is None:
        return ""
    if isinstance(value, JsonNumber):
        return value.text
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _has_float_value(params: object) -> bool:
    """Whether a params object read by orjson has a float value: orjson reads an integer
    beyond 64 bits as one (`1.2345678901234568e+29`), where Electric (Jason) binds its
    digits. Then the text is read again with `json`, whose integers are exact (rare: JS
    clients send at most 17 significant digits)."""
    return isinstance(params, dict) and any(type(v) is float for v in params.values())
