"""Size and shape limits on a request's parameters and POST body, each a 400 naming its limit.

The HTTP parser already bounds a URL (8190 bytes, `parser_refusals.py`) and the body is read up to
8 MiB (`shape.py`); these bound what a request may ask the engine to parse, compile and keep
in memory, well above anything the client sends: a `where` of 64 KiB, 1,000 numbered
params, a JSON body nested 64 levels deep. Checked before anything else reads the values,
so no later step sees an oversized one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from multidict import MultiMapping

from ..errors import InvalidRequest

#: Parameters in one query string (the client sends about a dozen plus the where params).
MAX_QUERY_PARAMS = 1_000
#: Numbered `params[n]` (or subset params) of one request.
MAX_PARAMS = 1_000
#: Keys at the top of a POST body (subset keys plus any shape parameters).
MAX_BODY_KEYS = 100
#: Nesting of a POST body's JSON (objects and arrays).
MAX_JSON_DEPTH = 64
#: Characters of one parameter's value, by name; `DEFAULT_LENGTH` for the others. Values
#: Electric reads leniently (offset, cursor, the flags) keep its answers (`has invalid
#: format`, cursor 0, `live=<anything>` true) up to the default.
MAX_LENGTH = {"table": 1_024, "handle": 256}
DEFAULT_LENGTH = 64 * 1024
#: Bytes of a where clause (URL or body); the same for the subset's where and order_by.
MAX_WHERE_BYTES = 64 * 1024


def too_long(field: str, limit: int) -> InvalidRequest:
    return InvalidRequest({field: [f"is too long (the limit is {limit} characters)"]})


def too_deep() -> InvalidRequest:
    return InvalidRequest(
        {"body": [f"is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)"]}
    )


def check_query(query: MultiMapping[str]) -> None:
    """Count and lengths of a query string's parameters."""
    if len(query) > MAX_QUERY_PARAMS:
        raise InvalidRequest(
            {"query": [f"has too many parameters (the limit is {MAX_QUERY_PARAMS})"]}
        )
    for key, value in query.items():
        field = "params" if key.startswith("params[") else key
        limit = MAX_LENGTH.get(field, DEFAULT_LENGTH)
        if len(value) > limit:
            raise too_long(field, limit)


def check_params_count(params: Mapping[str, object], field: str) -> None:
    if len(params) > MAX_PARAMS:
        raise InvalidRequest({field: [f"has too many parameters (the limit is {MAX_PARAMS})"]})


def check_body(body: Any) -> None:
    """Depth and breadth of a decoded POST body (walked without recursion)."""
    if isinstance(body, dict) and len(body) > MAX_BODY_KEYS:
        raise InvalidRequest({"body": [f"has too many keys (the limit is {MAX_BODY_KEYS})"]})
    level: list[Any] = [body]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise too_deep()
        nested: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nested.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                nested.extend(v for v in item if isinstance(v, dict | list))
        level = nested
