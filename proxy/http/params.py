"""Query string (and POST subset body) -> `ShapeRequest`. Pure; raises `BadShapeRequest`.

Every parameter must appear at most once: Plug keeps the last duplicate while yarl's `.get()`
returns the first, so `table=a&table=b` could be checked as `a` and served as `b`. Only
the protocol parameters listed below pass through to the engine; shape-defining parameters are
parsed so the policy can check them; anything else is dropped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable

from proxy.errors import BadShapeRequest
from proxy.policy.sql import parse_identifier_list
from proxy.shape_request import ShapeRequest, SubsetRequest

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
_PARAM_KEY = re.compile(r"^params\[(\d{1,4})\]$")
_SUBSET_PARAM_KEY = re.compile(r"^subset__params\[(\d{1,4})\]$")
MAX_VALUE_LENGTH = 8192


def _one_each(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    pairs = list(items)
    counts = Counter(name for name, _ in pairs)
    repeated = sorted(name for name, n in counts.items() if n > 1)
    if repeated:
        raise BadShapeRequest(
            "repeated_parameter", f"parameter given more than once: {', '.join(repeated)}"
        )
    for name, value in pairs:
        if len(value) > MAX_VALUE_LENGTH or len(name) > 128:
            raise BadShapeRequest("parameter_too_long", f"parameter {name[:40]!r} is too long")
    # Electric treats empty strings as absent.
    return {name: value for name, value in pairs if value != ""}


def _int_param(name: str, value: str | int | None, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadShapeRequest("invalid_subset", f"{name} must be an integer") from None
    if number < minimum or number > 10**9:
        raise BadShapeRequest("invalid_subset", f"{name} must be >= {minimum}")
    return number


def _subset_params(raw: object, name: str) -> dict[str, str]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):  # deep nesting: a 400, not a 500
            raise BadShapeRequest("invalid_subset", f"{name} must be a JSON object") from None
    if not isinstance(raw, dict):
        raise BadShapeRequest("invalid_subset", f"{name} must be a JSON object")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not str(key).isdigit() or isinstance(value, dict | list) or value is None:
            raise BadShapeRequest("invalid_subset", f"{name} maps numbers to scalar values")
        out[str(int(key))] = value if isinstance(value, str) else json.dumps(value)
    return out


def _parse_subset(values: dict[str, str]) -> SubsetRequest | None:
    keys = [k for k in values if k.startswith("subset__")]
    if not keys:
        return None
    params: dict[str, str] = {}
    if "subset__params" in values:
        params = _subset_params(values["subset__params"], "subset__params")
    for key, value in values.items():
        match = _SUBSET_PARAM_KEY.match(key)
        if match:
            if "subset__params" in values:
                raise BadShapeRequest("invalid_subset", "give subset__params in one form only")
            params[str(int(match.group(1)))] = value
    return SubsetRequest(
        where=values.get("subset__where"),
        params=params,
        limit=_int_param("subset__limit", values.get("subset__limit"), 1),
        offset=_int_param("subset__offset", values.get("subset__offset"), 0),
        order_by=values.get("subset__order_by"),
    )


def parse_shape_query(items: Iterable[tuple[str, str]]) -> ShapeRequest:
    """Parse a `/v1/shape` query string (as decoded name/value pairs)."""
    values = _one_each(items)
    params: dict[int, str] = {}
    for key, value in values.items():
        match = _PARAM_KEY.match(key)
        if match:
            params[int(match.group(1))] = value
    if "params" in values:
        raise BadShapeRequest("invalid_params", "give params as params[1]=..., params[2]=...")
    columns = None
    if "columns" in values:
        try:
            columns = parse_identifier_list(values["columns"])
        except ValueError as exc:
            raise BadShapeRequest("invalid_columns", f"columns: {exc}") from None
    return ShapeRequest(
        table=values.get("table"),
        where=values.get("where"),
        params=params,
        columns=columns,
        replica=values.get("replica"),
        protocol=tuple((k, values[k]) for k in PROTOCOL_PARAMS if k in values),
        subset=_parse_subset(values),
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
            raise BadShapeRequest("invalid_body", f"{key} must be a string")
    return SubsetRequest(
        where=data.get("where") or None,
        params=_subset_params(data["params"], "params") if data.get("params") else {},
        limit=_int_param("limit", data.get("limit"), 1),
        offset=_int_param("offset", data.get("offset"), 0),
        order_by=data.get("order_by") or None,
    )
