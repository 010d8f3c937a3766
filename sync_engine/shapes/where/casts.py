"""The implicit and explicit conversions between scalar types.

`IMPLICIT_CASTS[(from, to)]` is `(function, exact)`: `exact` when the conversion keeps
equality (so an index key on the converted value is still a key on the column's value).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from sync_engine.pg.types import (
    BOOL,
    BPCHAR,
    DATE,
    FLOAT4,
    FLOAT8,
    INT4,
    NAME,
    NUMERIC,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    VARCHAR,
    PgType,
)
from sync_engine.pg.values import Value

from .datetimes import (
    date_to_ts,
    ts_to_date,
    ts_to_time,
    ts_to_tstz,
    tstz_to_date,
    tstz_to_time,
    tstz_to_ts,
)
from .resolution import INT_TYPES, NUMERIC_ORDER
from .semantics import float4_to_numeric, identity, to_float4, to_float8, to_int, to_numeric

# Implicit (and explicit) scalar conversions: (from, to) -> (function, index-exact).
IMPLICIT_CASTS: dict[tuple[PgType, PgType], tuple[Callable[[Value], Value], bool]] = {}
for _i, _src in enumerate(NUMERIC_ORDER):
    for _dst in NUMERIC_ORDER[_i + 1 :]:
        if _dst in INT_TYPES:
            IMPLICIT_CASTS[(_src, _dst)] = (identity, True)
        elif _dst == NUMERIC:
            IMPLICIT_CASTS[(_src, _dst)] = (Decimal, True)
        elif _dst == FLOAT4:
            IMPLICIT_CASTS[(_src, _dst)] = (to_float4, False)
        else:
            IMPLICIT_CASTS[(_src, _dst)] = (to_float8, _src == FLOAT4)
for _src in (VARCHAR, BPCHAR, NAME):
    IMPLICIT_CASTS[(_src, TEXT)] = (identity, True)
IMPLICIT_CASTS[(TEXT, VARCHAR)] = (identity, True)
# text -> char(n) (a list such as COALESCE(ch, t) is char(n)): the engine keeps char(n)
# values without their trailing blanks, which char(n) comparisons ignore.
IMPLICIT_CASTS[(TEXT, BPCHAR)] = (lambda v: str(v).rstrip(" "), False)
IMPLICIT_CASTS[(DATE, TIMESTAMP)] = (date_to_ts, False)
IMPLICIT_CASTS[(DATE, TIMESTAMPTZ)] = (date_to_ts, False)  # then to tz: see Compiler.coerce
IMPLICIT_CASTS[(TIMESTAMP, TIMESTAMPTZ)] = (ts_to_tstz, False)


EXPLICIT_CASTS: dict[tuple[PgType, PgType], Callable[[Value], Value]] = {
    **{(s, d): to_int(d) for s in NUMERIC_ORDER for d in INT_TYPES if s != d},
    **{(s, NUMERIC): to_numeric for s in NUMERIC_ORDER if s != NUMERIC},
    (FLOAT4, NUMERIC): float4_to_numeric,
    **{(s, FLOAT8): to_float8 for s in NUMERIC_ORDER if s != FLOAT8},
    **{(s, FLOAT4): to_float4 for s in NUMERIC_ORDER if s != FLOAT4},
    (INT4, BOOL): bool,
    (BOOL, INT4): int,
    (TIMESTAMP, DATE): ts_to_date,
    (TIMESTAMP, TIME): ts_to_time,
    (TIMESTAMPTZ, TIMESTAMP): tstz_to_ts,
    (TIMESTAMPTZ, DATE): tstz_to_date,
    (TIMESTAMPTZ, TIME): tstz_to_time,
    (DATE, TIMESTAMP): date_to_ts,
    (DATE, TIMESTAMPTZ): lambda v: ts_to_tstz(date_to_ts(v)),
    (TIMESTAMP, TIMESTAMPTZ): ts_to_tstz,
}
