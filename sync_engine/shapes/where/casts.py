"""The implicit and explicit conversions between scalar types.

`IMPLICIT_CASTS[(from, to)]` is `(function, exact)`: `exact` when the conversion keeps
equality (so an index key on the converted value is still a key on the column's value).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .datetimes import (
    date_to_ts,
    ts_to_date,
    ts_to_time,
    ts_to_tstz,
    tstz_to_date,
    tstz_to_time,
    tstz_to_ts,
)
from .semantics import float4_to_numeric, identity, to_float4, to_float8, to_int, to_numeric
from .types import INT_TYPES, NUMERIC_ORDER

# Implicit (and explicit) scalar conversions: (from, to) -> (function, index-exact).
IMPLICIT_CASTS: dict[tuple[str, str], tuple[Callable[[Any], Any], bool]] = {}
for _i, _src in enumerate(NUMERIC_ORDER):
    for _dst in NUMERIC_ORDER[_i + 1 :]:
        if _dst in INT_TYPES:
            IMPLICIT_CASTS[(_src, _dst)] = (identity, True)
        elif _dst == "numeric":
            IMPLICIT_CASTS[(_src, _dst)] = (Decimal, True)
        elif _dst == "float4":
            IMPLICIT_CASTS[(_src, _dst)] = (to_float4, False)
        else:
            IMPLICIT_CASTS[(_src, _dst)] = (to_float8, _src == "float4")
for _src in ("varchar", "bpchar", "name"):
    IMPLICIT_CASTS[(_src, "text")] = (identity, True)
IMPLICIT_CASTS[("text", "varchar")] = (identity, True)
IMPLICIT_CASTS[("date", "timestamp")] = (date_to_ts, False)
IMPLICIT_CASTS[("date", "timestamptz")] = (date_to_ts, False)  # then to tz: see Compiler.coerce
IMPLICIT_CASTS[("timestamp", "timestamptz")] = (ts_to_tstz, False)


EXPLICIT_CASTS: dict[tuple[str, str], Callable[[Any], Any]] = {
    **{(s, d): to_int(d) for s in NUMERIC_ORDER for d in INT_TYPES if s != d},
    **{(s, "numeric"): to_numeric for s in NUMERIC_ORDER if s != "numeric"},
    ("float4", "numeric"): float4_to_numeric,
    **{(s, "float8"): to_float8 for s in NUMERIC_ORDER if s != "float8"},
    **{(s, "float4"): to_float4 for s in NUMERIC_ORDER if s != "float4"},
    ("int4", "bool"): bool,
    ("bool", "int4"): int,
    ("timestamp", "date"): ts_to_date,
    ("timestamp", "time"): ts_to_time,
    ("timestamptz", "timestamp"): tstz_to_ts,
    ("timestamptz", "date"): tstz_to_date,
    ("timestamptz", "time"): tstz_to_time,
    ("date", "timestamp"): date_to_ts,
    ("date", "timestamptz"): lambda v: ts_to_tstz(date_to_ts(v)),
    ("timestamp", "timestamptz"): ts_to_tstz,
}
