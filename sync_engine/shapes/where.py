"""Shape `where` clauses: parse, validate against the supported SQL subset, compile.

A client's clause is parsed by the real Postgres parser (pglast) as
`SELECT 1 WHERE <clause>`, type-checked against the table's columns, and turned into
- `Where.sql`: the clause deparsed from the validated AST, `$n` placeholders replaced by
  explicitly cast, quoted literals. Nothing the client typed is pasted into SQL, so
  `1=1) OR (1=1` or `'); DROP TABLE t; --` cannot escape (the snapshot session must keep
  Postgres's default `standard_conforming_strings=on`, which the engine never changes);
- `Where.matches(row)`: a tree of Python closures built once, evaluating the clause with
  SQL three-valued logic on replication rows (Postgres text values);
- `Where.index`: an equality / IN conjunct the router can use to skip the shape cheaply.

The supported subset follows Electric's (reference section 5). Types follow Postgres's
resolution rules closely enough that `matches` agrees with Postgres running `sql`; the
real-database test checks that on a few hundred rows and dozens of clauses.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import (
    A_Expr_Kind,
    BoolExprType,
    BoolTestType,
    MinMaxOp,
    NullTestType,
    SetOperation,
    SortByDir,
)
from pglast.parser import ParseError
from pglast.stream import RawStream

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo

Row = Mapping[str, "str | None"]
Cache = dict[str, Any]
Eval = Callable[[Row, Cache], Any]

PREFIX = "SELECT 1 WHERE "
MAX_WHERE_SIZE = 65_536

INT_TYPES = ("int2", "int4", "int8")
NUMERIC_ORDER = ("int2", "int4", "int8", "numeric", "float4", "float8")
FLOAT_TYPES = frozenset({"float4", "float8", "numeric"})
STRING_TYPES = frozenset({"text", "varchar", "bpchar", "name"})
DATETIME_TYPES = frozenset({"date", "timestamp", "timestamptz"})
ORDERED_TYPES = frozenset(
    {*NUMERIC_ORDER, *STRING_TYPES, "uuid", "date", "time", "timestamp", "timestamptz",
     "interval", "bool", "bytea"}
)  # fmt: skip
CAST_TARGETS = frozenset(
    {"bool", "bytea", "date", "float4", "float8", "int2", "int4", "int8", "numeric", "text",
     "time", "timestamp", "timestamptz", "uuid", "varchar", "interval"}
)  # fmt: skip
TEMPORAL_TYPES = frozenset({"date", "time", "timestamp", "timestamptz", "interval"})
JSON_TYPES = frozenset({"json", "jsonb"})
NON_DETERMINISTIC = frozenset(
    {"now", "random", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
     "timeofday", "gen_random_uuid", "uuid_generate_v4", "setseed", "nextval", "currval",
     "lastval", "txid_current", "pg_current_xact_id", "current_setting", "pg_backend_pid"}
)  # fmt: skip
AGGREGATES = frozenset(
    {"count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or",
     "every", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "stddev",
     "variance", "bit_and", "bit_or"}
)  # fmt: skip
JSON_OPERATORS = frozenset({"->", "->>", "#>", "#>>", "?", "?|", "?&", "@?", "@@", "#-"})
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}
NEGATED = {"=": "<>", "<>": "=", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
LIKE_OPERATORS = {"~~": (False, False), "!~~": (False, True), "~~*": (True, False),
                  "!~~*": (True, True)}  # fmt: skip
_DECIMAL_CONTEXT = Context(prec=60)
_UTC = UTC


class WhereError(ValueError):
    """A where clause the engine cannot accept; `str(e)` is the message for the client."""

    located: bool = False


def _error(message: str, node: Any = None) -> WhereError:
    """Build an error, prefixed with the clause-relative location of `node` when known."""
    loc = getattr(node, "location", None) if node is not None else None
    if isinstance(loc, int) and loc >= len(PREFIX):
        error = WhereError(f"At location {loc - len(PREFIX)}: {message}")
        error.located = True
        return error
    return WhereError(message)


# --- the typed, compiled expression -------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    """One checked sub-expression: its Postgres type and how to evaluate it.

    `fn(row, cache)` returns the value or None for SQL NULL. Constants carry `value` so
    operators can fold them. `column` is set when the expression is a column's value
    (after exact, index-safe coercions only); `unary` then maps that column's raw text
    (of column `unary_of`) to the value, letting `col op const` compile to one closure.
    `text` holds the raw
    text of an untyped literal or parameter whose type the context decides.
    """

    type: str
    fn: Eval
    is_const: bool = False
    value: Any = None
    column: str | None = None
    unary: Callable[[str], Any] | None = None
    unary_of: str | None = None
    raw: bool = False
    text: str | None = None
    param: int | None = None
    index: tuple[str, frozenset[Any]] | None = None
    node: Any = None


def _const(type_name: str, value: Any, node: Any = None) -> Expr:
    return Expr(type_name, lambda _row, _cache: value, is_const=True, value=value, node=node)


def _elem(type_name: str) -> str:
    return type_name[:-2]


def _is_array(type_name: str) -> bool:
    return type_name.endswith("[]")


def _is_enum(type_name: str) -> bool:
    return type_name.startswith("enum:")


def _display(type_name: str) -> str:
    if _is_enum(type_name):
        return type_name[5:]
    return pgv.sql_type_name(type_name)


def _null_safe(func: Callable[..., Any], args: Sequence[Expr]) -> Expr | Eval:
    """An evaluator applying `func` to the arguments' values, NULL if any is NULL."""
    if len(args) == 1:
        (f,) = (a.fn for a in args)

        def one(row: Row, cache: Cache) -> Any:
            a = f(row, cache)
            return None if a is None else func(a)

        return one
    if len(args) == 2:
        f1, f2 = args[0].fn, args[1].fn
        if args[1].is_const:
            b = args[1].value

            def two_const(row: Row, cache: Cache) -> Any:
                a = f1(row, cache)
                return None if a is None else func(a, b)

            return two_const

        def two(row: Row, cache: Cache) -> Any:
            a = f1(row, cache)
            if a is None:
                return None
            b = f2(row, cache)
            return None if b is None else func(a, b)

        return two
    fns = [a.fn for a in args]

    def many(row: Row, cache: Cache) -> Any:
        vals = []
        for f in fns:
            v = f(row, cache)
            if v is None:
                return None
            vals.append(v)
        return func(*vals)

    return many


def _apply(type_name: str, func: Callable[..., Any], args: Sequence[Expr], node: Any) -> Expr:
    """A strict (NULL in, NULL out) function of `args`, folded when all are constant."""
    if all(a.is_const for a in args):
        vals = [a.value for a in args]
        if any(v is None for v in vals):
            return _const(type_name, None, node)
        try:
            return _const(type_name, func(*vals), node)
        except (ArithmeticError, ValueError, TypeError, OverflowError) as e:
            raise _error(str(e) or type(e).__name__, node) from None
    if len(args) == 1 and args[0].unary is not None:
        inner = args[0].unary
        name = args[0].unary_of
        assert name is not None

        def unary(text: str) -> Any:
            return func(inner(text))

        return Expr(type_name, _column_eval(name, unary), unary=unary, unary_of=name, node=node)
    fn = _null_safe(func, args)
    assert callable(fn)
    return Expr(type_name, fn, node=node)


def _column_eval(name: str, parse: Callable[[str], Any]) -> Eval:
    def get(row: Row, _cache: Cache) -> Any:
        text = row.get(name)
        return None if text is None else parse(text)

    return get


def _cached_column_eval(name: str, parse: Callable[[str], Any]) -> Eval:
    """Column value parsed at most once per row, for columns referenced several times."""

    def get(row: Row, cache: Cache) -> Any:
        try:
            return cache[name]
        except KeyError:
            text = row.get(name)
            value = cache[name] = None if text is None else parse(text)
            return value

    return get


# --- value semantics ----------------------------------------------------------------------


def _nan_key(x: Any) -> tuple[int, Any]:
    return (1, 0) if x != x else (0, x)


def _nan_aware(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Postgres orders NaN above every number and NaN = NaN; Python does neither."""

    def cmp(a: Any, b: Any) -> Any:
        if a != a or b != b:
            return op(_nan_key(a), _nan_key(b))
        return op(a, b)

    return cmp


def _comparison(op_name: str, type_name: str) -> Callable[[Any, Any], Any]:
    op = COMPARISONS[op_name]
    return _nan_aware(op) if type_name in FLOAT_TYPES else op


def _int_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _int_mod(a: int, b: int) -> int:
    return a - b * _int_div(a, b)


def _checked(type_name: str, func: Callable[..., int]) -> Callable[..., int]:
    def run(*args: int) -> int:
        return pgv.check_int_range(type_name, func(*args))

    return run


def _num_div(a: Any, b: Any) -> Any:
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return _DECIMAL_CONTEXT.divide(Decimal(a), Decimal(b))
    return a / b


def _num_mod(a: Any, b: Any) -> Any:
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return _DECIMAL_CONTEXT.remainder(Decimal(a), Decimal(b))


def _float_result(value: float) -> float:
    if math.isinf(value):
        raise OverflowError("value out of range: overflow")
    return value


def _round_half_away(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _to_int(type_name: str) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            result = value
        elif isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"cannot convert {value} to {pgv.sql_type_name(type_name)}")
            result = _round_half_away(value)
        else:
            if math.isnan(value) or math.isinf(value):
                raise ValueError(f"{pgv.sql_type_name(type_name)} out of range")
            result = round(value)
        return pgv.check_int_range(type_name, result)

    return conv


def _to_numeric(value: Any) -> Decimal:
    if isinstance(value, float):
        if math.isnan(value):
            return Decimal("NaN")
        return Decimal(f"{value:.15g}")
    return Decimal(value)


def _to_float8(value: Any) -> float:
    return float(value)


def _to_float4(value: Any) -> float:
    return pgv.round_float4(float(value))


def _date_to_ts(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return datetime.combine(value, time(0))


def _ts_to_tstz(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.replace(tzinfo=_UTC)


def _tstz_to_ts(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.astimezone(_UTC).replace(tzinfo=None)


def _ts_to_date(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.date()


def _ts_to_time(value: Any) -> Any:
    return value.time()


def _tstz_to_date(value: Any) -> Any:
    return _ts_to_date(_tstz_to_ts(value))


def _tstz_to_time(value: Any) -> Any:
    return _tstz_to_ts(value).time()


def _identity(value: Any) -> Any:
    return value


# Implicit (and explicit) scalar conversions: (from, to) -> (function, index-exact).
_IMPLICIT: dict[tuple[str, str], tuple[Callable[[Any], Any], bool]] = {}
for _i, _src in enumerate(NUMERIC_ORDER):
    for _dst in NUMERIC_ORDER[_i + 1 :]:
        if _dst in INT_TYPES:
            _IMPLICIT[(_src, _dst)] = (_identity, True)
        elif _dst == "numeric":
            _IMPLICIT[(_src, _dst)] = (Decimal, True)
        elif _dst == "float4":
            _IMPLICIT[(_src, _dst)] = (_to_float4, False)
        else:
            _IMPLICIT[(_src, _dst)] = (_to_float8, _src == "float4")
for _src in ("varchar", "bpchar", "name"):
    _IMPLICIT[(_src, "text")] = (_identity, True)
_IMPLICIT[("text", "varchar")] = (_identity, True)
_IMPLICIT[("date", "timestamp")] = (_date_to_ts, False)
_IMPLICIT[("date", "timestamptz")] = (_date_to_ts, False)  # then to tz below
_IMPLICIT[("timestamp", "timestamptz")] = (_ts_to_tstz, False)

_EXPLICIT: dict[tuple[str, str], Callable[[Any], Any]] = {
    **{(s, d): _to_int(d) for s in NUMERIC_ORDER for d in INT_TYPES if s != d},
    **{(s, "numeric"): _to_numeric for s in NUMERIC_ORDER if s != "numeric"},
    **{(s, "float8"): _to_float8 for s in NUMERIC_ORDER if s != "float8"},
    **{(s, "float4"): _to_float4 for s in NUMERIC_ORDER if s != "float4"},
    ("int4", "bool"): bool,
    ("bool", "int4"): int,
    ("timestamp", "date"): _ts_to_date,
    ("timestamp", "time"): _ts_to_time,
    ("timestamptz", "timestamp"): _tstz_to_ts,
    ("timestamptz", "date"): _tstz_to_date,
    ("timestamptz", "time"): _tstz_to_time,
    ("date", "timestamp"): _date_to_ts,
    ("date", "timestamptz"): lambda v: _ts_to_tstz(_date_to_ts(v)),
    ("timestamp", "timestamptz"): _ts_to_tstz,
}


def _common_numeric(a: str, b: str) -> str:
    if "float4" in (a, b) and (a != b) and "float8" not in (a, b):
        return "float8"
    return max(a, b, key=NUMERIC_ORDER.index)


def _common_scalar(a: str, b: str) -> str | None:
    """The type both operands convert to, following Postgres's implicit casts."""
    if a == b:
        return "text" if a in ("varchar", "name") else a
    if a == "unknown":
        return b
    if b == "unknown":
        return a
    if a in NUMERIC_ORDER and b in NUMERIC_ORDER:
        return _common_numeric(a, b)
    if a in STRING_TYPES and b in STRING_TYPES:
        return "text"
    if a in DATETIME_TYPES and b in DATETIME_TYPES:
        return "timestamptz" if "timestamptz" in (a, b) else "timestamp"
    return None


def _common_type(a: str, b: str) -> str | None:
    if _is_array(a) and _is_array(b):
        elem = _common_scalar(_elem(a), _elem(b))
        return None if elem is None else elem + "[]"
    if _is_array(a) and b == "unknown":
        return a
    if _is_array(b) and a == "unknown":
        return b
    if _is_array(a) or _is_array(b):
        return None
    return _common_scalar(a, b)


# --- text output (for ::text and concat) --------------------------------------------------


def _trim_fraction(micros: int) -> str:
    return "" if not micros else "." + f"{micros:06d}".rstrip("0")


def _float_text(value: float) -> str:
    """float8 output with extra_float_digits=1: shortest digits, %g-like layout."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    digits = repr(value)
    d = Decimal(digits)
    exp = d.adjusted()
    if -4 <= exp < 15:
        return format(d, "f").removesuffix(".0") if "e" in digits else digits.removesuffix(".0")
    sign = "-" if value < 0 else ""
    coeff = d.as_tuple().digits
    ds = "".join(map(str, coeff)).rstrip("0") or "0"
    body = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    return f"{sign}{body}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def _interval_text(iv: pgv.Interval) -> str:
    """interval output under IntervalStyle='iso_8601'."""
    if not (iv.months or iv.days or iv.micros):
        return "PT0S"
    years, months = int(iv.months / 12), iv.months - 12 * int(iv.months / 12)
    out = "P"
    for amount, unit in ((years, "Y"), (months, "M"), (iv.days, "D")):
        if amount:
            out += f"{amount}{unit}"
    if iv.micros:
        sign = -1 if iv.micros < 0 else 1
        rest = abs(iv.micros)
        hours, rest = divmod(rest, 3600 * pgv.USECS_PER_SEC)
        minutes, rest = divmod(rest, 60 * pgv.USECS_PER_SEC)
        secs, frac = divmod(rest, pgv.USECS_PER_SEC)
        out += "T"
        neg = "-" if sign < 0 else ""
        if hours:
            out += f"{neg}{hours}H"
        if minutes:
            out += f"{neg}{minutes}M"
        if secs or frac:
            out += f"{neg}{secs}{_trim_fraction(frac)}S"
    return out


def _time_text(t: time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}{_trim_fraction(t.microsecond)}"


def _special_text(value: Any) -> str | None:
    if isinstance(value, pgv.PgInfinity):
        return "infinity" if value.sign > 0 else "-infinity"
    return None


def _date_text(value: Any) -> str:
    return _special_text(value) or value.isoformat()


def _timestamp_text(value: Any) -> str:
    return _special_text(value) or f"{value.date().isoformat()} {_time_text(value.time())}"


def _timestamptz_text(value: Any) -> str:
    return _special_text(value) or _timestamp_text(_tstz_to_ts(value)) + "+00"


def _numeric_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")


_ARRAY_QUOTE_RE = re.compile(r'[{},"\\\s]')


def _array_text(elem_out: Callable[[Any], str]) -> Callable[[Any], str]:
    def out(value: Any) -> str:
        parts = []
        for item in value:
            if item is None:
                parts.append("NULL")
            elif isinstance(item, tuple):
                parts.append(out(item))
            else:
                s = elem_out(item)
                if not s or _ARRAY_QUOTE_RE.search(s) or s.upper() == "NULL":
                    s = '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                parts.append(s)
        return "{" + ",".join(parts) + "}"

    return out


_TEXT_OUT: dict[str, Callable[[Any], str]] = {
    **{t: str for t in INT_TYPES},
    **{t: _identity for t in (*STRING_TYPES, "json", "jsonb", "unknown")},
    "numeric": _numeric_text,
    "float8": _float_text,
    "float4": _float_text,
    "bool": lambda b: "t" if b else "f",
    "uuid": str,
    "date": _date_text,
    "timestamp": _timestamp_text,
    "timestamptz": _timestamptz_text,
    "time": _time_text,
    "interval": _interval_text,
    "bytea": lambda b: "\\x" + b.hex(),
}


def _text_output(type_name: str) -> Callable[[Any], str] | None:
    """The type's output function (what concat() uses), or None when unsupported."""
    if _is_enum(type_name):
        return _identity
    if _is_array(type_name):
        elem = _text_output(_elem(type_name))
        return None if elem is None else _array_text(elem)
    return _TEXT_OUT.get(type_name)


# --- LIKE ---------------------------------------------------------------------------------


def like_regex(
    pattern: str, escape: str | None = "\\", *, ignore_case: bool = False
) -> re.Pattern[str]:
    """Translate a LIKE pattern (`%`, `_`, escape char) to an anchored regex."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if escape and ch == escape:
            i += 1
            if i >= len(pattern):
                raise ValueError("LIKE pattern must not end with escape character")
            out.append(re.escape(pattern[i]))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(out), flags)


# --- arrays -------------------------------------------------------------------------------


def _flatten(value: Any) -> list[Any]:
    out: list[Any] = []
    for item in value:
        if isinstance(item, tuple):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def _array_contains(a: Any, b: Any) -> bool:
    """a @> b: every element of b is in a; NULL elements never match (Postgres rule)."""
    have = [x for x in _flatten(a) if x is not None]
    for x in _flatten(b):
        if x is None or x not in have:
            return False
    return True


def _array_overlaps(a: Any, b: Any) -> bool:
    have = [x for x in _flatten(a) if x is not None]
    return any(x is not None and x in have for x in _flatten(b))


def _array_ndims(a: Any) -> int | None:
    if not a:
        return None
    dims = 0
    while isinstance(a, tuple) and a:
        dims += 1
        a = a[0]
    return dims


def _subscript(a: Any, index: int) -> Any:
    if not a or isinstance(a[0], tuple) or not 1 <= index <= len(a):
        return None
    return a[index - 1]


def _slice(a: Any, lo: int | None, hi: int | None) -> Any:
    if not a or isinstance(a[0], tuple):
        return ()
    lo = 1 if lo is None else max(lo, 1)
    hi = len(a) if hi is None else min(hi, len(a))
    return tuple(a[lo - 1 : hi]) if lo <= hi else ()


# --- dates and intervals ------------------------------------------------------------------


def _add_interval(value: Any, iv: pgv.Interval) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    if iv.months:
        value = pgv.add_months(value, iv.months)
    return value + timedelta(days=iv.days, microseconds=iv.micros)


def _add_days(value: Any, days: int) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value + timedelta(days=days)


def _neg_interval(iv: pgv.Interval) -> pgv.Interval:
    return pgv.Interval(-iv.months, -iv.days, -iv.micros)


def _time_add(t: time, iv: pgv.Interval) -> time:
    micros = ((t.hour * 60 + t.minute) * 60 + t.second) * pgv.USECS_PER_SEC + t.microsecond
    micros = (micros + iv.micros) % pgv.USECS_PER_DAY
    secs, us = divmod(micros, pgv.USECS_PER_SEC)
    return time(secs // 3600, secs // 60 % 60, secs % 60, us)


def _ts_diff(a: Any, b: Any) -> pgv.Interval:
    """timestamp - timestamp: days and time, like Postgres's justify_hours result."""
    delta = a - b
    micros = (delta.days * 86_400 + delta.seconds) * pgv.USECS_PER_SEC + delta.microseconds
    days = int(micros / pgv.USECS_PER_DAY)
    return pgv.Interval(0, days, micros - days * pgv.USECS_PER_DAY)


def _interval_mul(iv: pgv.Interval, factor: float) -> pgv.Interval:
    months = iv.months * factor
    whole_months = int(months)
    days = iv.days * factor + (months - whole_months) * pgv.DAYS_PER_MONTH
    whole_days = int(days)
    micros = round(iv.micros * factor + (days - whole_days) * pgv.USECS_PER_DAY)
    return pgv.Interval(whole_months, whole_days, micros)


def _date_minus_date(a: date, b: date) -> int:
    return (a - b).days


def _justify_hours(iv: pgv.Interval) -> pgv.Interval:
    days = int(iv.micros / pgv.USECS_PER_DAY)
    return pgv.Interval(iv.months, iv.days + days, iv.micros - days * pgv.USECS_PER_DAY)


def _justify_days(iv: pgv.Interval) -> pgv.Interval:
    months = int(iv.days / pgv.DAYS_PER_MONTH)
    return pgv.Interval(iv.months + months, iv.days - months * pgv.DAYS_PER_MONTH, iv.micros)


# Binary operators by (operator, left, right) -> (result type, function).
_DATETIME_OPS: dict[tuple[str, str, str], tuple[str, Callable[[Any, Any], Any]]] = {
    ("+", "date", "int4"): ("date", lambda d, n: _add_days(d, n)),
    ("+", "int4", "date"): ("date", lambda n, d: _add_days(d, n)),
    ("-", "date", "int4"): ("date", lambda d, n: _add_days(d, -n)),
    ("-", "date", "date"): ("int4", _date_minus_date),
    ("+", "date", "time"): ("timestamp", datetime.combine),
    ("+", "time", "date"): ("timestamp", lambda t, d: datetime.combine(d, t)),
    ("+", "date", "interval"): ("timestamp", lambda d, i: _add_interval(_date_to_ts(d), i)),
    ("-", "date", "interval"): (
        "timestamp",
        lambda d, i: _add_interval(_date_to_ts(d), _neg_interval(i)),
    ),
    ("+", "timestamp", "interval"): ("timestamp", _add_interval),
    ("-", "timestamp", "interval"): ("timestamp", lambda t, i: _add_interval(t, _neg_interval(i))),
    ("+", "interval", "timestamp"): ("timestamp", lambda i, t: _add_interval(t, i)),
    ("+", "timestamptz", "interval"): ("timestamptz", _add_interval),
    ("-", "timestamptz", "interval"): (
        "timestamptz",
        lambda t, i: _add_interval(t, _neg_interval(i)),
    ),
    ("+", "interval", "timestamptz"): ("timestamptz", lambda i, t: _add_interval(t, i)),
    ("-", "timestamp", "timestamp"): ("interval", _ts_diff),
    ("-", "timestamptz", "timestamptz"): ("interval", _ts_diff),
    ("+", "time", "interval"): ("time", _time_add),
    ("-", "time", "interval"): ("time", lambda t, i: _time_add(t, _neg_interval(i))),
    ("+", "interval", "interval"): (
        "interval",
        lambda a, b: pgv.Interval(a.months + b.months, a.days + b.days, a.micros + b.micros),
    ),
    ("-", "interval", "interval"): (
        "interval",
        lambda a, b: pgv.Interval(a.months - b.months, a.days - b.days, a.micros - b.micros),
    ),
    ("*", "interval", "float8"): ("interval", _interval_mul),
    ("*", "float8", "interval"): ("interval", lambda f, i: _interval_mul(i, f)),
}


# --- the checker / compiler ---------------------------------------------------------------


class _Compiler:
    """Walks the pglast AST once, checking each node and building its `Expr`."""

    def __init__(
        self,
        params: Mapping[str, str],
        columns: Mapping[str, ColumnInfo],
        *,
        allow_enums: bool,
        allow_subqueries: bool,
        ref_counts: Mapping[str, int],
    ) -> None:
        self.params = params
        self.columns = columns
        self.allow_enums = allow_enums
        self.allow_subqueries = allow_subqueries
        self.ref_counts = ref_counts
        self.param_types: dict[int, str] = {}
        self.referenced: set[str] = set()

    # -- entry points --

    def compile(self, node: Any) -> Expr:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise _error(f"{_construct_name(node)} is not supported", node)
        try:
            expr: Expr = method(node)
        except WhereError as e:
            # Constants carry no location in pglast: report the nearest enclosing node's.
            if e.located or not isinstance(getattr(node, "location", None), int):
                raise
            raise _error(str(e), node) from None
        return expr if expr.node is not None else replace(expr, node=node)

    def to_bool(self, expr: Expr, what: str) -> Expr:
        if expr.type == "bool":
            return expr
        if expr.type == "unknown":
            return self.coerce(expr, "bool")
        raise _error(f"argument of {what} must be type boolean, not type {_display(expr.type)}",
                     expr.node)  # fmt: skip

    # -- coercion --

    def coerce(self, expr: Expr, target: str) -> Expr:
        """Implicitly convert `expr` to `target` (unknown literals are parsed), or fail."""
        if expr.type == target:
            return expr
        if expr.type == "unknown":
            return self._resolve_unknown(expr, target)
        if _is_array(expr.type) and _is_array(target):
            key = (_elem(expr.type), _elem(target))
            conv = _IMPLICIT.get(key)
            if conv is None:
                raise self._no_conversion(expr, target)
            return self._map_array(expr, target, conv[0])
        conv = _IMPLICIT.get((expr.type, target))
        if conv is None:
            raise self._no_conversion(expr, target)
        func, exact = conv
        if (expr.type, target) == ("date", "timestamptz"):
            func = _EXPLICIT[("date", "timestamptz")]
        if func is _identity:
            return replace(expr, type=target, raw=expr.raw and exact, fn=expr.fn)
        result = _apply(target, func, [expr], expr.node)
        if exact and expr.column is not None:
            result = replace(result, column=expr.column)
        return result

    def _no_conversion(self, expr: Expr, target: str) -> WhereError:
        return _error(f"cannot convert {_display(expr.type)} to {_display(target)}", expr.node)

    def _map_array(self, expr: Expr, target: str, func: Callable[[Any], Any]) -> Expr:
        def conv(a: Any) -> Any:
            return tuple(
                None if x is None else conv(x) if isinstance(x, tuple) else func(x) for x in a
            )

        return replace(_apply(target, conv, [expr], expr.node), column=None)

    def _resolve_unknown(self, expr: Expr, target: str) -> Expr:
        """Give an untyped literal / parameter its type, parsing it with that type's rules."""
        if expr.param is not None:
            seen = self.param_types.setdefault(expr.param, target)
            if seen != target:
                raise _error(f"type conflict for ${expr.param}", expr.node)
        if expr.text is None:
            return _const(target, None, expr.node)
        if _is_enum(target) or (_is_array(target) and _is_enum(_elem(target))):
            if _is_array(target):
                value: Any = pgv.parse_array(expr.text, _identity)
            else:
                value = expr.text
            return _const(target, value, expr.node)
        try:
            parser = pgv.input_parser(target)
            return _const(target, parser(expr.text), expr.node)
        except ValueError as e:
            raise _error(str(e), expr.node) from None

    def unify(self, exprs: Sequence[Expr], what: str, node: Any) -> tuple[str, list[Expr]]:
        """Convert operands to one common type (Postgres's UNION/CASE-style resolution)."""
        typ = "unknown"
        for e in exprs:
            common = _common_type(typ, e.type)
            if common is None:
                raise _error(f"{what} types {_display(typ)} and {_display(e.type)} cannot be "
                             "matched", e.node or node)  # fmt: skip
            typ = common
        if typ == "unknown":
            typ = "text"
        return typ, [self.coerce(e, typ) for e in exprs]

    # -- leaves --

    def _ColumnRef(self, node: ast.ColumnRef) -> Expr:
        parts = [getattr(f, "sval", "*") for f in node.fields]
        if len(parts) != 1 or parts[0] not in self.columns:
            raise _error(f"unknown reference {'.'.join(parts)}", node)
        col = self.columns[parts[0]]
        self.referenced.add(col.name)
        typ = _column_type(col)
        if col.is_array and col.type_kind == "e":
            parse = _enum_array_parser()
        else:
            parse = pgv.output_parser(col.type_name, is_enum=col.type_kind == "e")
        if self.ref_counts.get(col.name, 0) > 1:
            return Expr(typ, _cached_column_eval(col.name, parse), column=col.name, raw=True,
                        node=node)  # fmt: skip
        return Expr(typ, _column_eval(col.name, parse), column=col.name, unary=parse,
                    unary_of=col.name, raw=True, node=node)  # fmt: skip

    def _A_Const(self, node: ast.A_Const) -> Expr:
        if node.isnull:
            return Expr("unknown", lambda _r, _c: None, is_const=True, node=node)
        val = node.val
        if isinstance(val, ast.Integer):
            return _const("int4", int(val.ival), node)
        if isinstance(val, ast.Float):
            text = val.fval
            if re.fullmatch(r"[0-9]+", text):
                n = int(text)
                return _const("int8" if n < 2**63 else "numeric", n if n < 2**63 else Decimal(n),
                              node)  # fmt: skip
            return _const("numeric", Decimal(text), node)
        if isinstance(val, ast.Boolean):
            return _const("bool", bool(val.boolval), node)
        if isinstance(val, ast.String):
            return Expr("unknown", lambda _r, _c: val.sval, is_const=True, value=val.sval,
                        text=val.sval, node=node)  # fmt: skip
        raise _error(f"{_construct_name(val)} constants are not supported", node)

    def _ParamRef(self, node: ast.ParamRef) -> Expr:
        n = node.number
        text = self.params.get(str(n))
        if text is None:
            raise _error(f"parameter ${n} was not provided", node)
        return Expr("unknown", lambda _r, _c: text, is_const=True, value=text, text=text,
                    param=n, node=node)  # fmt: skip

    # -- boolean structure --

    def _BoolExpr(self, node: ast.BoolExpr) -> Expr:
        if node.boolop == BoolExprType.NOT_EXPR:
            arg = self.to_bool(self.compile(node.args[0]), "NOT")
            return _apply("bool", operator.not_, [arg], node)
        what = "AND" if node.boolop == BoolExprType.AND_EXPR else "OR"
        args = [self.to_bool(self.compile(a), what) for a in node.args]
        return _and(args, node) if what == "AND" else _or(args, node)

    def _NullTest(self, node: ast.NullTest) -> Expr:
        arg = self.compile(node.arg)
        if arg.type == "unknown" and arg.param is not None:
            arg = self.coerce(arg, "text")
        f = arg.fn
        if node.nulltesttype == NullTestType.IS_NULL:
            return _bool_expr(lambda row, cache: f(row, cache) is None, node)
        return _bool_expr(lambda row, cache: f(row, cache) is not None, node)

    def _BooleanTest(self, node: ast.BooleanTest) -> Expr:
        arg = self.to_bool(self.compile(node.arg), "IS TRUE")
        f = arg.fn
        tests: dict[Any, Callable[[Any], bool]] = {
            BoolTestType.IS_TRUE: lambda v: v is True,
            BoolTestType.IS_NOT_TRUE: lambda v: v is not True,
            BoolTestType.IS_FALSE: lambda v: v is False,
            BoolTestType.IS_NOT_FALSE: lambda v: v is not False,
            BoolTestType.IS_UNKNOWN: lambda v: v is None,
            BoolTestType.IS_NOT_UNKNOWN: lambda v: v is not None,
        }
        test = tests[node.booltesttype]
        return _bool_expr(lambda row, cache: test(f(row, cache)), node)

    # -- operators --

    def _A_Expr(self, node: ast.A_Expr) -> Expr:
        names = [n.sval for n in node.name]
        if len(names) != 1:
            raise _error(f"qualified operator {'.'.join(names)} is not supported", node)
        name = names[0]
        kind = node.kind
        handlers: dict[Any, Callable[[ast.A_Expr, str], Expr]] = {
            A_Expr_Kind.AEXPR_OP: self._operator,
            A_Expr_Kind.AEXPR_OP_ANY: self._any_all,
            A_Expr_Kind.AEXPR_OP_ALL: self._any_all,
            A_Expr_Kind.AEXPR_DISTINCT: self._distinct,
            A_Expr_Kind.AEXPR_NOT_DISTINCT: self._distinct,
            A_Expr_Kind.AEXPR_NULLIF: self._nullif,
            A_Expr_Kind.AEXPR_IN: self._in,
            A_Expr_Kind.AEXPR_LIKE: self._like_expr,
            A_Expr_Kind.AEXPR_ILIKE: self._like_expr,
            A_Expr_Kind.AEXPR_BETWEEN: self._between,
            A_Expr_Kind.AEXPR_NOT_BETWEEN: self._between,
            A_Expr_Kind.AEXPR_BETWEEN_SYM: self._between,
            A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM: self._between,
        }
        handler = handlers.get(kind)
        if handler is None:
            raise _error(f"{kind.name.removeprefix('AEXPR_')} expressions are not supported",
                         node)  # fmt: skip
        return handler(node, name)

    def _operator(self, node: ast.A_Expr, name: str) -> Expr:
        if name in JSON_OPERATORS:
            raise _error(f"JSON operator {name} is not supported", node)
        if node.lexpr is None:
            return self._prefix(node, name, self.compile(node.rexpr))
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        for side in (left, right):
            if side.type in JSON_TYPES:
                raise _error(f"JSON operators are not supported ({_display(side.type)} {name})",
                             node)  # fmt: skip
        if name in COMPARISONS:
            return self.comparison(name, left, right, node)
        if name in LIKE_OPERATORS:
            ignore_case, negate = LIKE_OPERATORS[name]
            return self._like(left, right, None, ignore_case, negate, node)
        if name in ("@>", "<@", "&&"):
            return self._array_op(name, left, right, node)
        if name == "||":
            return self._concat_op(left, right, node)
        return self._arithmetic(name, left, right, node)

    def comparison(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        typ = _common_type(left.type, right.type)
        if typ is None or (_is_enum(typ) and not self.allow_enums):
            raise self._operator_error(name, left, right, node)
        if typ == "unknown":
            typ = "text"
        if name not in ("=", "<>") and (typ not in ORDERED_TYPES):
            raise self._operator_error(name, left, right, node)
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        op = _comparison(name, typ)
        if left.is_const and not right.is_const:
            left, right = right, left
            op = _comparison({"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(name, name), typ)
        index = None
        if name == "=" and right.is_const and left.column is not None and left.raw:
            index = (left.column, frozenset() if right.value is None else _keyset([right.value]))
        if right.is_const and left.unary is not None and right.value is not None:
            expr = _col_const_compare(left, right.value, op, node)
        else:
            expr = _apply("bool", op, [left, right], node)
        return replace(expr, index=index) if index and _indexable(index[1]) else expr

    def _operator_error(self, name: str, left: Expr, right: Expr, node: Any) -> WhereError:
        for side in (left, right):
            if _is_enum(side.type) and not self.allow_enums:
                return _error(f"enum values can only be compared after a cast to text "
                              f"(operator {name} on {_display(side.type)})", node)  # fmt: skip
        return _error(f"operator does not exist: {_display(left.type)} {name} "
                      f"{_display(right.type)}", node)  # fmt: skip

    def _prefix(self, node: ast.A_Expr, name: str, arg: Expr) -> Expr:
        if arg.type == "unknown":
            arg = self.coerce(arg, "numeric" if name != "~" else "int8")
        typ = arg.type
        if name == "~" and typ in INT_TYPES:
            return _apply(typ, operator.invert, [arg], node)
        if typ in NUMERIC_ORDER or (typ == "interval" and name in "+-"):
            funcs: dict[str, Callable[[Any], Any]] = {
                "+": _identity,
                "-": _neg_interval if typ == "interval" else operator.neg,
                "@": abs,
                "|/": _sqrt,
            }
            if name in funcs:
                rtype = "float8" if name == "|/" else typ
                if name == "|/":
                    arg = self.coerce(arg, "float8")
                func = funcs[name]
                if typ in INT_TYPES and name in ("-", "@"):
                    func = _checked(typ, func)
                return _apply(rtype, func, [arg], node)
        raise _error(f"operator does not exist: {name} {_display(typ)}", node)

    def _arithmetic(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        dated = self._datetime_arithmetic(name, left, right, node)
        if dated is not None:
            return dated
        lt, rt = left.type, right.type
        if lt == "unknown":
            left = self.coerce(left, rt if rt in NUMERIC_ORDER else "numeric")
        if right.type == "unknown":
            right = self.coerce(right, left.type if left.type in NUMERIC_ORDER else "numeric")
        lt, rt = left.type, right.type
        if lt not in NUMERIC_ORDER or rt not in NUMERIC_ORDER:
            raise _error(f"operator does not exist: {_display(lt)} {name} {_display(rt)}", node)
        if name in ("&", "|", "#", "<<", ">>"):
            return self._bitwise(name, left, right, node)
        if name == "^":
            typ = "numeric" if "numeric" in (lt, rt) and not FLOAT_TYPES & {lt, rt} - {
                "numeric"} else "float8"  # fmt: skip
            func: Callable[..., Any] = _numeric_pow if typ == "numeric" else _float_pow
            return _apply(typ, func, [self.coerce(left, typ), self.coerce(right, typ)], node)
        typ = _common_numeric(lt, rt)
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        arith = _arith_func(name, typ)
        if arith is None:
            raise _error(f"operator does not exist: {_display(lt)} {name} {_display(rt)}", node)
        return _apply(typ, arith, [left, right], node)

    def _datetime_arithmetic(self, name: str, left: Expr, right: Expr, node: Any) -> Expr | None:
        """Date/time operators, resolving an untyped literal like Postgres: first as the
        other operand's type (so `ts - '1 day'` fails as in Postgres), then any match."""
        lt, rt = left.type, right.type
        if not ({lt, rt} & TEMPORAL_TYPES):
            return None
        candidates = [(a, b) for (op, a, b) in _DATETIME_OPS if op == name]
        exact = [c for c in candidates if _fits(lt, c[0]) and _fits(rt, c[1])]
        chosen = None
        if exact:
            chosen = exact[0]
        elif "unknown" in (lt, rt):
            other = rt if lt == "unknown" else lt
            same = (other, other)
            if same in candidates:
                chosen = same
            else:
                fits = [c for c in candidates if (lt == "unknown" or _fits(lt, c[0]))
                        and (rt == "unknown" or _fits(rt, c[1]))]  # fmt: skip
                chosen = fits[0] if fits else None
        if chosen is None:
            raise _error(f"operator does not exist: {_display(lt)} {name} {_display(rt)}", node)
        rtype, func = _DATETIME_OPS[(name, *chosen)]
        return _apply(rtype, func, [self.coerce(left, chosen[0]), self.coerce(right, chosen[1])],
                      node)  # fmt: skip

    def _bitwise(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        if left.type not in INT_TYPES or right.type not in INT_TYPES:
            raise _error(f"operator does not exist: {_display(left.type)} {name} "
                         f"{_display(right.type)}", node)  # fmt: skip
        if name in ("<<", ">>"):
            typ = left.type
            right = self.coerce(right, "int4") if right.type == "int2" else right
            shift = operator.lshift if name == "<<" else operator.rshift
            return _apply(typ, _wrap_shift(typ, shift), [left, right], node)
        typ = _common_numeric(left.type, right.type)
        funcs = {"&": operator.and_, "|": operator.or_, "#": operator.xor}
        return _apply(typ, funcs[name], [self.coerce(left, typ), self.coerce(right, typ)], node)

    def _concat_op(self, left: Expr, right: Expr, node: Any) -> Expr:
        if _is_array(left.type) or _is_array(right.type):
            return self._array_concat(left, right, node)
        lt, rt = left.type, right.type
        if lt == rt == "unknown" or lt in STRING_TYPES or rt in STRING_TYPES:
            parts = [self._as_text(e) for e in (left, right)]
            return _apply("text", operator.add, parts, node)
        raise _error(f"operator does not exist: {_display(lt)} || {_display(rt)}", node)

    def _array_concat(self, left: Expr, right: Expr, node: Any) -> Expr:
        if _is_array(left.type) and _is_array(right.type):
            typ, (left, right) = self.unify([left, right], "array ||", node)
            return _apply_nullable(typ, _array_cat, [left, right], node)
        if _is_array(left.type):
            if right.type == "unknown" and right.text is not None and right.text.startswith("{"):
                right = self.coerce(right, left.type)
                return _apply_nullable(left.type, _array_cat, [left, right], node)
            right = self.coerce(right, _elem(left.type))
            return _apply_nullable(left.type, _array_append, [left, right], node)
        if left.type == "unknown" and left.text is not None and left.text.startswith("{"):
            left = self.coerce(left, right.type)
            return _apply_nullable(right.type, _array_cat, [left, right], node)
        left = self.coerce(left, _elem(right.type))
        return _apply_nullable(right.type, _array_prepend, [left, right], node)

    def _array_op(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        if not (_is_array(left.type) or _is_array(right.type)):
            raise self._operator_error(name, left, right, node)
        typ = _common_type(left.type, right.type)
        if typ is None or (_is_enum(_elem(typ)) and not self.allow_enums):
            raise self._operator_error(name, left, right, node)
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        if name == "@>":
            return _apply("bool", _array_contains, [left, right], node)
        if name == "<@":
            return _apply("bool", lambda a, b: _array_contains(b, a), [left, right], node)
        return _apply("bool", _array_overlaps, [left, right], node)

    def _any_all(self, node: ast.A_Expr, name: str) -> Expr:
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        is_all = node.kind == A_Expr_Kind.AEXPR_OP_ALL
        if right.type == "unknown":
            elem = left.type if left.type != "unknown" else "text"
            right = self.coerce(right, elem + "[]")
        if not _is_array(right.type):
            raise _error(f"op ANY/ALL (array) requires array on right side, not "
                         f"{_display(right.type)}", node)  # fmt: skip
        probe = Expr(_elem(right.type), lambda _r, _c: None, node=node.rexpr)
        if name in COMPARISONS:
            typ = _common_type(left.type, probe.type)
            if typ is None or (_is_enum(typ) and not self.allow_enums) or (
                    name not in ("=", "<>") and typ not in ORDERED_TYPES):  # fmt: skip
                raise self._operator_error(name, left, probe, node)
            left = self.coerce(left, typ)
            right = self.coerce(right, typ + "[]")
            op = _comparison(name, typ)
        elif name in LIKE_OPERATORS:
            ignore_case, negate = LIKE_OPERATORS[name]
            left = self.coerce(left, "text")
            right = self.coerce(right, "text[]")
            op = _like_function(ignore_case, negate)
        else:
            raise _error(f"operator {name} is not supported with ANY/ALL", node)
        expr = _apply_nullable("bool", _quantified(op, is_all), [left, right], node)
        if (not is_all and name == "=" and right.is_const and right.value is not None
                and left.column is not None and left.raw):  # fmt: skip
            keys = [v for v in _flatten(right.value) if v is not None]
            if _indexable(keys):
                return replace(expr, index=(left.column, _keyset(keys)))
        return expr

    def _distinct(self, node: ast.A_Expr, name: str) -> Expr:
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        typ = _common_type(left.type, right.type)
        if name != "=" or typ is None or (_is_enum(typ) and not self.allow_enums):
            raise self._operator_error(name, left, right, node)
        typ = "text" if typ == "unknown" else typ
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        eq = _comparison("=", typ)
        lf, rf = left.fn, right.fn
        want_distinct = node.kind == A_Expr_Kind.AEXPR_DISTINCT

        def distinct(row: Row, cache: Cache) -> bool:
            a, b = lf(row, cache), rf(row, cache)
            if a is None or b is None:
                same = a is None and b is None
            else:
                same = bool(eq(a, b))
            return same != want_distinct

        return _bool_expr(distinct, node)

    def _nullif(self, node: ast.A_Expr, name: str) -> Expr:
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        typ, (left, right) = self.unify([left, right], "NULLIF", node)
        eq = _comparison("=", typ)
        lf, rf = left.fn, right.fn

        def nullif(row: Row, cache: Cache) -> Any:
            a = lf(row, cache)
            if a is None:
                return None
            b = rf(row, cache)
            return None if b is not None and eq(a, b) else a

        return Expr(typ, nullif, node=node)

    def _in(self, node: ast.A_Expr, name: str) -> Expr:
        if isinstance(node.rexpr, ast.SubLink):
            return self._SubLink(node.rexpr)
        left = self.compile(node.lexpr)
        items = [self.compile(x) for x in node.rexpr]
        typ, converted = self.unify([left, *items], "IN", node)
        if _is_enum(typ) and not self.allow_enums:
            raise self._operator_error(name, left, items[0], node)
        left, items = converted[0], converted[1:]
        expr = _in_list(left, items, _comparison("=", typ), node)
        if name == "<>":
            return _apply("bool", operator.not_, [expr], node)
        consts = [i.value for i in items if i.is_const]
        if len(consts) == len(items) and left.column is not None and left.raw:
            keys = [v for v in consts if v is not None]
            if _indexable(keys):
                return replace(expr, index=(left.column, _keyset(keys)))
        return expr

    def _between(self, node: ast.A_Expr, name: str) -> Expr:
        value = self.compile(node.lexpr)
        lo, hi = (self.compile(x) for x in node.rexpr)
        typ, (value, lo, hi) = self.unify([value, lo, hi], "BETWEEN", node)
        if typ not in ORDERED_TYPES:
            raise self._operator_error(">=", value, lo, node)
        ge, le = _comparison(">=", typ), _comparison("<=", typ)
        kind = node.kind
        symmetric = kind in (A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        negate = kind in (A_Expr_Kind.AEXPR_NOT_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        first = _and([_apply("bool", ge, [value, lo], node), _apply("bool", le, [value, hi], node)],
                     node)  # fmt: skip
        expr = first
        if symmetric:
            second = _and([_apply("bool", ge, [value, hi], node),
                           _apply("bool", le, [value, lo], node)], node)  # fmt: skip
            expr = _or([first, second], node)
        return _apply("bool", operator.not_, [expr], node) if negate else expr

    def _like_expr(self, node: ast.A_Expr, name: str) -> Expr:
        ignore_case, negate = LIKE_OPERATORS[name]
        left = self.compile(node.lexpr)
        rnode = node.rexpr
        escape: Expr | None = None
        if isinstance(rnode, ast.FuncCall) and [n.sval for n in rnode.funcname] == [
                "pg_catalog", "like_escape"]:  # fmt: skip
            pattern = self.compile(rnode.args[0])
            escape = self.coerce(self.compile(rnode.args[1]), "text")
        else:
            pattern = self.compile(rnode)
        return self._like(left, pattern, escape, ignore_case, negate, node)

    def _like(self, left: Expr, pattern: Expr, escape: Expr | None, ignore_case: bool,
              negate: bool, node: Any) -> Expr:  # fmt: skip
        for e in (left, pattern):
            if e.type not in STRING_TYPES and e.type != "unknown":
                raise _error(f"operator does not exist: {_display(left.type)} ~~ "
                             f"{_display(pattern.type)}", node)  # fmt: skip
        left, pattern = self.coerce(left, "text"), self.coerce(pattern, "text")
        if escape is not None and not escape.is_const:
            raise _error("LIKE ... ESCAPE needs a constant escape character", node)
        esc = "\\" if escape is None else escape.value
        if escape is not None and esc is not None and len(esc) > 1:
            raise _error("invalid escape string", node)
        if pattern.is_const and pattern.value is not None:
            try:
                regex = like_regex(pattern.value, esc or None, ignore_case=ignore_case)
            except ValueError as e:
                raise _error(str(e), node) from None
            match = regex.fullmatch

            def test(text: str) -> bool:
                return (match(text) is None) if negate else (match(text) is not None)

            return _apply("bool", test, [left], node)
        return _apply("bool", _like_function(ignore_case, negate, esc or None),
                      [left, pattern], node)  # fmt: skip

    # -- other expression nodes --

    def _TypeCast(self, node: ast.TypeCast) -> Expr:
        target = self._type_name(node.typeName)
        arg = self.compile(node.arg)
        return self.cast(arg, target, node)

    def cast(self, arg: Expr, target: str, node: Any) -> Expr:
        """An explicit cast: implicit conversions, text output, text input, numeric casts."""
        src = arg.type
        if src == target:
            return replace(arg, node=node)
        if src == "unknown":
            return replace(self.coerce(arg, target), node=node)
        if target in ("text", "varchar"):
            return self._cast_to_text(arg, target, node)
        if src in STRING_TYPES:
            parser = pgv.input_parser(target)
            return replace(_apply(target, parser, [arg], node), column=None)
        if (src, target) in _EXPLICIT:
            return replace(_apply(target, _EXPLICIT[(src, target)], [arg], node), column=None)
        if (src, target) in _IMPLICIT or (_is_array(src) and _is_array(target)):
            try:
                return self.coerce(arg, target)
            except WhereError:
                pass
        raise _error(f"cannot cast type {_display(src)} to {_display(target)}", node)

    def _cast_to_text(self, arg: Expr, target: str, node: Any) -> Expr:
        src = arg.type
        if src in JSON_TYPES and not arg.raw:
            raise _error(f"cannot cast type {_display(src)} to {_display(target)}", node)
        if arg.raw and arg.column is not None:
            col = arg.column
            if src == "bool":
                func: Callable[[str], Any] = _bool_text_from_raw
            elif src == "bpchar":
                func = pgv.output_parser("bpchar")
            else:
                func = _identity
            fn = _column_eval(col, func)
            exact = src in STRING_TYPES or _is_enum(src)
            return Expr(target, fn, column=col if exact else None, unary=func, unary_of=col,
                        raw=exact, node=node)  # fmt: skip
        out = _text_output(src)
        if out is None:
            raise _error(f"cannot cast type {_display(src)} to {_display(target)}", node)
        if src == "bool":
            out = _bool_text
        return replace(_apply(target, out, [arg], node), column=None)

    def _as_text(self, expr: Expr) -> Expr:
        if expr.type in STRING_TYPES or expr.type == "unknown":
            return self.coerce(expr, "text")
        out = _text_output(expr.type)
        if out is None:
            raise _error(f"cannot convert {_display(expr.type)} to text", expr.node)
        if expr.raw and expr.column is not None:
            return Expr("text", _column_eval(expr.column, _identity), node=expr.node)
        return _apply("text", out, [expr], expr.node)

    def _type_name(self, tn: ast.TypeName) -> str:
        names = [n.sval for n in tn.names]
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        if tn.typmods:
            raise _error(f"type modifiers are not supported ({'.'.join(names)})", tn)
        if len(names) != 1 or tn.setof or tn.pct_type:
            raise _error(f"unsupported type {'.'.join(names)}", tn)
        name = names[0]
        suffix = "[]" if tn.arrayBounds else ""
        if name in CAST_TARGETS:
            return name + suffix
        if self.allow_enums:
            for col in self.columns.values():
                if col.type_kind == "e" and col.base_type.lstrip("_") == name:
                    return "enum:" + name + suffix
        raise _error(f"unsupported type {name}", tn)

    def _A_ArrayExpr(self, node: ast.A_ArrayExpr) -> Expr:
        elements = [self.compile(e) for e in (node.elements or ())]
        if not elements:
            raise _error("cannot determine type of empty array", node)
        if any(_is_array(e.type) for e in elements):
            typ, elements = self.unify(elements, "ARRAY", node)
            return _apply_nullable(typ, lambda *xs: tuple(xs), elements, node)
        typ, elements = self.unify(elements, "ARRAY", node)
        return _apply_nullable(typ + "[]", lambda *xs: tuple(xs), elements, node)

    def _A_Indirection(self, node: ast.A_Indirection) -> Expr:
        arg = self.compile(node.arg)
        for ind in node.indirection:
            if not isinstance(ind, ast.A_Indices) or not _is_array(arg.type):
                raise _error(f"{_construct_name(ind)} is not supported here", node)
            if ind.is_slice:
                bounds = [self.coerce(self.compile(b), "int4") if b is not None else None
                          for b in (ind.lidx, ind.uidx)]  # fmt: skip
                lo = bounds[0] or _const("int4", None)
                hi = bounds[1] or _const("int4", None)
                lo_none, hi_none = bounds[0] is None, bounds[1] is None
                arg = _slice_expr(arg, lo, hi, lo_none, hi_none, node)
            else:
                idx = self.coerce(self.compile(ind.uidx), "int4")
                arg = _apply_nullable(_elem(arg.type), _subscript_nullable, [arg, idx], node)
        return arg

    def _CoalesceExpr(self, node: ast.CoalesceExpr) -> Expr:
        typ, args = self.unify([self.compile(a) for a in node.args], "COALESCE", node)
        fns = [a.fn for a in args]

        def coalesce(row: Row, cache: Cache) -> Any:
            for f in fns:
                v = f(row, cache)
                if v is not None:
                    return v
            return None

        return Expr(typ, coalesce, node=node)

    def _MinMaxExpr(self, node: ast.MinMaxExpr) -> Expr:
        typ, args = self.unify([self.compile(a) for a in node.args], "GREATEST/LEAST", node)
        if typ not in ORDERED_TYPES:
            raise _error(f"could not identify a comparison function for type {_display(typ)}",
                         node)  # fmt: skip
        fns = [a.fn for a in args]
        greatest = node.op == MinMaxOp.IS_GREATEST
        better = _comparison(">" if greatest else "<", typ)

        def minmax(row: Row, cache: Cache) -> Any:
            best = None
            for f in fns:
                v = f(row, cache)
                if v is not None and (best is None or better(v, best)):
                    best = v
            return best

        return Expr(typ, minmax, node=node)

    def _FuncCall(self, node: ast.FuncCall) -> Expr:
        names = [n.sval for n in node.funcname]
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        name = ".".join(names)
        if node.over is not None:
            raise _error(f"window functions are not supported ({name})", node)
        if node.agg_star or node.agg_distinct or node.agg_order or node.agg_filter or (
                name in AGGREGATES):  # fmt: skip
            raise _error(f"aggregate functions are not supported ({name})", node)
        if node.func_variadic:
            raise _error("VARIADIC function calls are not supported", node)
        if name in NON_DETERMINISTIC:
            raise _error(f"non-deterministic function {name}() is not supported", node)
        args = [self.compile(a) for a in (node.args or ())]
        builder = _FUNCTIONS.get((name, len(args))) or _FUNCTIONS.get((name, -1))
        if builder is None:
            if name in CAST_TARGETS and len(args) == 1:
                return self.cast(args[0], name, node)
            raise _error(f"unknown or unsupported function {name}/{len(args)}", node)
        return builder(self, args, node)

    def _SubLink(self, node: ast.SubLink) -> Expr:
        if not self.allow_subqueries:
            raise _error("Subqueries are not allowed in subsets", node)
        raise _error("subqueries are not supported yet (only `value IN (SELECT ...)` will be)",
                     node)  # fmt: skip

    def _SQLValueFunction(self, node: Any) -> Expr:
        raise _error("non-deterministic functions (CURRENT_DATE, CURRENT_TIMESTAMP, ...) are "
                     "not supported", node)  # fmt: skip

    def _CaseExpr(self, node: Any) -> Expr:
        raise _error("CASE expressions are not supported", node)

    def _CollateClause(self, node: Any) -> Expr:
        raise _error("COLLATE is not supported", node)

    def _RowExpr(self, node: Any) -> Expr:
        raise _error("row expressions are only supported on the left of IN (SELECT ...)", node)


# --- function library ---------------------------------------------------------------------


def _text_func(func: Callable[[str], str]) -> Callable[[_Compiler, list[Expr], Any], Expr]:
    def build(c: _Compiler, args: list[Expr], node: Any) -> Expr:
        return _apply("text", func, [c.coerce(_textual(c, args[0]), "text")], node)

    return build


def _textual(c: _Compiler, e: Expr) -> Expr:
    if e.type not in STRING_TYPES and e.type != "unknown":
        raise _error(f"function argument must be text, not {_display(e.type)}", e.node)
    return e


def _concat_builder(c: _Compiler, args: list[Expr], node: Any) -> Expr:
    parts = [c._as_text(a) for a in args]
    fns = [p.fn for p in parts]

    def concat(row: Row, cache: Cache) -> str:
        out = []
        for f in fns:
            v = f(row, cache)
            if v is not None:
                out.append(v)
        return "".join(out)

    return Expr("text", concat, node=node)


def _like_builder(ignore_case: bool) -> Callable[[_Compiler, list[Expr], Any], Expr]:
    def build(c: _Compiler, args: list[Expr], node: Any) -> Expr:
        return c._like(args[0], args[1], None, ignore_case, False, node)

    return build


def _array_builder(kind: str) -> Callable[[_Compiler, list[Expr], Any], Expr]:
    def build(c: _Compiler, args: list[Expr], node: Any) -> Expr:
        a, b = args
        if kind == "cat":
            typ, (a, b) = c.unify([a, b], "array_cat", node)
            if not _is_array(typ):
                raise _error("array_cat needs arrays", node)
            return _apply_nullable(typ, _array_cat, [a, b], node)
        if kind == "append":
            if not _is_array(a.type):
                raise _error(f"function array_append({_display(a.type)}, ...) does not exist",
                             node)  # fmt: skip
            return _apply_nullable(a.type, _array_append, [a, c.coerce(b, _elem(a.type))], node)
        if not _is_array(b.type):
            raise _error(f"function array_prepend(..., {_display(b.type)}) does not exist", node)
        return _apply_nullable(b.type, _array_prepend, [c.coerce(a, _elem(b.type)), b], node)

    return build


def _ndims_builder(c: _Compiler, args: list[Expr], node: Any) -> Expr:
    if not _is_array(args[0].type):
        raise _error(f"function array_ndims({_display(args[0].type)}) does not exist", node)
    return _apply_nullable("int4", _array_ndims_nullable, args, node)


def _justify_builder(func: Callable[[pgv.Interval], pgv.Interval]) -> Any:
    def build(c: _Compiler, args: list[Expr], node: Any) -> Expr:
        return _apply("interval", func, [c.coerce(args[0], "interval")], node)

    return build


def _abs_builder(c: _Compiler, args: list[Expr], node: Any) -> Expr:
    arg = args[0] if args[0].type != "unknown" else c.coerce(args[0], "float8")
    if arg.type not in NUMERIC_ORDER:
        raise _error(f"function abs({_display(arg.type)}) does not exist", node)
    return _apply(arg.type, abs, [arg], node)


_FUNCTIONS: dict[tuple[str, int], Callable[[_Compiler, list[Expr], Any], Expr]] = {
    ("lower", 1): _text_func(str.lower),
    ("upper", 1): _text_func(str.upper),
    ("concat", -1): _concat_builder,
    ("like", 2): _like_builder(False),
    ("ilike", 2): _like_builder(True),
    ("array_cat", 2): _array_builder("cat"),
    ("array_append", 2): _array_builder("append"),
    ("array_prepend", 2): _array_builder("prepend"),
    ("array_ndims", 1): _ndims_builder,
    ("justify_days", 1): _justify_builder(_justify_days),
    ("justify_hours", 1): _justify_builder(_justify_hours),
    ("justify_interval", 1): _justify_builder(lambda i: _justify_hours(_justify_days(i))),
    ("abs", 1): _abs_builder,
}


# --- evaluator helpers --------------------------------------------------------------------


def _bool_expr(fn: Eval, node: Any) -> Expr:
    return Expr("bool", fn, node=node)


def _and(args: list[Expr], node: Any) -> Expr:
    fns = [a.fn for a in args]
    if len(fns) == 2:
        f1, f2 = fns

        def and2(row: Row, cache: Cache) -> Any:
            a = f1(row, cache)
            if a is False:
                return False
            b = f2(row, cache)
            if b is False:
                return False
            return None if a is None or b is None else True

        fn: Eval = and2
    else:

        def and_n(row: Row, cache: Cache) -> Any:
            result: Any = True
            for f in fns:
                v = f(row, cache)
                if v is False:
                    return False
                if v is None:
                    result = None
            return result

        fn = and_n
    indexes = [a.index for a in args if a.index is not None]
    index = min(indexes, key=lambda i: len(i[1])) if indexes else None
    return Expr("bool", fn, index=index, node=node)


def _or(args: list[Expr], node: Any) -> Expr:
    fns = [a.fn for a in args]

    def or_n(row: Row, cache: Cache) -> Any:
        result: Any = False
        for f in fns:
            v = f(row, cache)
            if v is True:
                return True
            if v is None:
                result = None
        return result

    index = None
    if all(a.index is not None for a in args) and len({a.index[0] for a in args if a.index}) == 1:
        keys: frozenset[Any] = frozenset().union(*(a.index[1] for a in args if a.index))
        index = (args[0].index[0] if args[0].index else "", keys)
    return Expr("bool", or_n, index=index, node=node)


def _in_list(left: Expr, items: list[Expr], eq: Callable[[Any, Any], Any], node: Any) -> Expr:
    lf = left.fn
    if all(i.is_const for i in items):
        values = [i.value for i in items]
        has_null = any(v is None for v in values)
        present = [v for v in values if v is not None]
        hashed = _keyset(present) if _indexable(present) else None

        def in_consts(row: Row, cache: Cache) -> Any:
            v = lf(row, cache)
            if v is None:
                return None
            if hashed is not None:
                if v in hashed:
                    return True
            elif any(eq(v, p) for p in present):
                return True
            return None if has_null else False

        return _bool_expr(in_consts, node)
    fns = [i.fn for i in items]

    def in_exprs(row: Row, cache: Cache) -> Any:
        v = lf(row, cache)
        if v is None:
            return None
        result: Any = False
        for f in fns:
            x = f(row, cache)
            if x is None:
                result = None
            elif eq(v, x):
                return True
        return result

    return _bool_expr(in_exprs, node)


def _quantified(op: Callable[[Any, Any], Any], is_all: bool) -> Callable[[Any, Any], Any]:
    """`x op ANY(arr)` / `x op ALL(arr)` with Postgres's NULL rules."""

    def quantified(value: Any, array: Any) -> Any:
        if array is None:
            return None
        items = _flatten(array)
        if not items:
            return is_all
        if value is None:
            return None
        saw_null = False
        for item in items:
            if item is None:
                saw_null = True
                continue
            hit = bool(op(value, item))
            if hit and not is_all:
                return True
            if not hit and is_all:
                return False
        return None if saw_null else is_all

    return quantified


def _apply_nullable(type_name: str, func: Callable[..., Any], args: Sequence[Expr],
                    node: Any) -> Expr:  # fmt: skip
    """Like `_apply` but `func` sees NULL arguments itself (array functions, ANY/ALL)."""
    fns = [a.fn for a in args]
    if all(a.is_const for a in args):
        try:
            return _const(type_name, func(*(a.value for a in args)), node)
        except (ArithmeticError, ValueError, TypeError) as e:
            raise _error(str(e), node) from None

    def run(row: Row, cache: Cache) -> Any:
        return func(*(f(row, cache) for f in fns))

    return Expr(type_name, run, node=node)


def _array_cat(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(a) + tuple(b)


def _array_append(a: Any, x: Any) -> Any:
    return (*(a or ()), x)


def _array_prepend(x: Any, a: Any) -> Any:
    return (x, *(a or ()))


def _array_ndims_nullable(a: Any) -> Any:
    return None if a is None else _array_ndims(a)


def _subscript_nullable(a: Any, i: Any) -> Any:
    return None if a is None or i is None else _subscript(a, i)


def _slice_expr(arg: Expr, lo: Expr, hi: Expr, lo_open: bool, hi_open: bool, node: Any) -> Expr:
    def sliced(a: Any, lo_v: Any, hi_v: Any) -> Any:
        if a is None or (lo_v is None and not lo_open) or (hi_v is None and not hi_open):
            return None
        return _slice(a, lo_v, hi_v)

    return _apply_nullable(arg.type, sliced, [arg, lo, hi], node)


def _like_function(ignore_case: bool, negate: bool, escape: str | None = "\\") -> Callable[
        [str, str], bool]:  # fmt: skip
    def like(text: str, pattern: str) -> bool:
        matched = like_regex(pattern, escape, ignore_case=ignore_case).fullmatch(text) is not None
        return matched != negate

    return like


def _col_const_compare(left: Expr, value: Any, op: Callable[[Any, Any], Any], node: Any) -> Expr:
    """`col op const` as one closure: read, parse, compare; the hot path of the router."""
    name = left.unary_of
    parse = left.unary
    assert name is not None and parse is not None

    def compare(row: Row, _cache: Cache) -> Any:
        text = row.get(name)
        if text is None:
            return None
        return op(parse(text), value)

    return Expr("bool", compare, node=node)


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _bool_text_from_raw(text: str) -> str:
    return "true" if text in ("t", "true") else "false"


def _sqrt(value: float) -> float:
    if value < 0:
        raise ValueError("cannot take square root of a negative number")
    return math.sqrt(value)


def _numeric_pow(a: Decimal, b: Decimal) -> Decimal:
    return _DECIMAL_CONTEXT.power(a, b)


def _float_pow(a: float, b: float) -> float:
    return _float_result(math.pow(a, b))


def _wrap_shift(typ: str, shift: Callable[[int, int], int]) -> Callable[[int, int], int]:
    bits = {"int2": 16, "int4": 32, "int8": 64}[typ]

    def run(a: int, n: int) -> int:
        result = shift(a, n % bits) & ((1 << bits) - 1)
        return result - (1 << bits) if result >= 1 << (bits - 1) else result

    return run


def _arith_func(name: str, typ: str) -> Callable[..., Any] | None:
    if typ in INT_TYPES:
        funcs: dict[str, Callable[..., Any]] = {
            "+": operator.add,
            "-": operator.sub,
            "*": operator.mul,
            "/": _int_div,
            "%": _int_mod,
        }
        func = funcs.get(name)
        return None if func is None else _checked(typ, func)
    if typ == "numeric":
        return {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": _num_div,
                "%": _num_mod}.get(name)  # fmt: skip
    func2: Callable[..., Any] | None = {
        "+": operator.add,
        "-": operator.sub,
        "*": operator.mul,
        "/": operator.truediv,
    }.get(name)
    if func2 is None:
        return None
    inner = func2
    if typ == "float4":
        return lambda a, b: pgv.round_float4(_float_result(inner(a, b)))
    return lambda a, b: _float_result(inner(a, b))


def _fits(actual: str, wanted: str) -> bool:
    """Whether an operand of type `actual` implicitly converts to the operator's `wanted`."""
    if actual == wanted:
        return True
    if wanted == "int4":
        return actual == "int2"
    if wanted == "float8":
        return actual in NUMERIC_ORDER
    return False


def _keyset(values: Iterable[Any]) -> frozenset[Any]:
    return frozenset(values)


def _indexable(values: Iterable[Any]) -> bool:
    """Index keys must hash consistently with `==` (no NaN, no unhashable values)."""
    try:
        for v in values:
            if v != v:
                return False
            hash(v)
    except TypeError:
        return False
    return True


def _enum_array_parser() -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return pgv.parse_array(text, _identity)

    return parse


def _column_type(col: ColumnInfo) -> str:
    if col.type_kind == "e":
        base = col.base_type.lstrip("_") if col.is_array else col.type_name
        return "enum:" + base + ("[]" if col.is_array else "")
    if col.is_array:
        return col.base_type + "[]"
    return col.type_name


def _construct_name(node: Any) -> str:
    names = {
        "CaseExpr": "CASE expression",
        "SubLink": "subquery",
        "RowExpr": "row expression",
        "A_Star": "*",
        "CollateClause": "COLLATE",
        "BitString": "bit string",
        "GroupingFunc": "GROUPING",
        "XmlExpr": "XML expression",
        "SetToDefault": "DEFAULT",
    }
    return names.get(type(node).__name__, type(node).__name__)


# --- parsing, deparsing, the public API ---------------------------------------------------


def _parse_clause(sql: str, prefix: str = PREFIX) -> Any:
    """Parse `prefix + sql` with pglast, rejecting extra statements and clauses."""
    if len(sql) > MAX_WHERE_SIZE:
        raise WhereError(f"WHERE clause is bigger than maximum size ({MAX_WHERE_SIZE} bytes)")
    try:
        stmts = parse_sql(prefix + sql)
    except ParseError as e:
        message = e.args[0] if e.args else str(e)
        loc = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) else None
        if loc is not None and loc >= len(prefix):
            raise WhereError(f"At location {loc - len(prefix)}: {message}") from None
        raise WhereError(str(message)) from None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt):
        raise WhereError("malformed query ending with SQL clauses")
    stmt = stmts[0].stmt
    extras = (
        stmt.fromClause, stmt.groupClause, stmt.havingClause, stmt.windowClause,
        stmt.limitCount, stmt.limitOffset, stmt.lockingClause, stmt.withClause,
        stmt.distinctClause, stmt.intoClause, stmt.valuesLists,
    )  # fmt: skip
    if stmt.op != SetOperation.SETOP_NONE or any(x for x in extras):
        raise WhereError("malformed query ending with SQL clauses")
    if prefix == PREFIX and (stmt.sortClause or len(stmt.targetList or ()) != 1):
        raise WhereError("malformed query ending with SQL clauses")
    return stmt


# pglast's `Visitor` looks its `visit_*` methods up with `inspect.getmembers` on every call
# and walks through a generator: two walks cost ~70 µs per clause, a third of parsing one.
# These plain walks do the same over the few nodes of a where clause.


def _child_nodes(node: Any) -> Iterable[tuple[str, Any]]:
    """(member, value) for each member of `node` holding a node or a tuple."""
    for member in node:
        value = getattr(node, member)
        if isinstance(value, (tuple, ast.Node)):
            yield member, value


def _count_columns(root: Any) -> dict[str, int]:
    """References per column name, so multiply-used columns get a per-row cache."""
    counts: dict[str, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
            continue
        if not isinstance(node, ast.Node):
            continue
        if isinstance(node, ast.ColumnRef):
            if len(node.fields) == 1 and isinstance(node.fields[0], ast.String):
                name = node.fields[0].sval
                counts[name] = counts.get(name, 0) + 1
        stack.extend(value for _, value in _child_nodes(node))
    return counts


def _substitute_params(root: Any, params: Mapping[str, str], types: Mapping[int, str]) -> None:
    """Replace each `$n` under `root` with `CAST('<value>' AS <type>)`, a constant node."""

    def cast(node: Any) -> Any:
        return _param_cast(node, params, types) if isinstance(node, ast.ParamRef) else node

    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
            continue
        if not isinstance(node, ast.Node):
            continue
        for member, value in list(_child_nodes(node)):
            if isinstance(value, ast.ParamRef):
                setattr(node, member, cast(value))
            elif isinstance(value, tuple) and any(isinstance(v, ast.ParamRef) for v in value):
                setattr(node, member, tuple(cast(v) for v in value))
            else:
                stack.append(value)


def _param_cast(node: ast.ParamRef, params: Mapping[str, str], types: Mapping[int, str]) -> Any:
    n = node.number
    typ = types.get(n, "text")
    array = typ.endswith("[]")
    base = typ[:-2] if array else typ
    base = base[5:] if base.startswith("enum:") else base
    type_name = ast.TypeName(
        names=(ast.String(sval=base),),
        typemod=-1,
        arrayBounds=(ast.Integer(ival=-1),) if array else None,
    )
    return ast.TypeCast(arg=ast.A_Const(isnull=False, val=ast.String(sval=params[str(n)])),
                        typeName=type_name)  # fmt: skip


@dataclass(frozen=True)
class Where:
    """A validated, compiled where clause (see the module docstring)."""

    source: str
    sql: str
    referenced_columns: frozenset[str]
    index: tuple[str, frozenset[Any]] | None
    _fn: Eval = field(repr=False, compare=False)

    def matches(self, row: Mapping[str, str | None]) -> bool:
        """True only when the clause is SQL-true for `row` (Postgres text values).

        An evaluation error (a value that does not parse, division by zero, overflow) makes
        the row not match; Postgres would have failed the whole query instead.
        """
        try:
            return self._fn(row, {}) is True
        except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError):
            return False


def parse_where(
    sql: str,
    params: Mapping[str, str],
    columns: Mapping[str, ColumnInfo],
    *,
    allow_enums: bool = False,
    allow_subqueries: bool = False,
) -> Where:
    """Parse and validate a shape's where clause against the table's columns."""
    stmt = _parse_clause(sql)
    clause = stmt.whereClause
    if clause is None:
        raise WhereError("malformed query ending with SQL clauses")
    compiler = _Compiler(
        params,
        columns,
        allow_enums=allow_enums,
        allow_subqueries=allow_subqueries,
        ref_counts=_count_columns(clause),
    )
    expr = compiler.compile(clause)
    if expr.type == "unknown" and expr.text is not None:
        expr = compiler.coerce(expr, "bool")
    if expr.type != "bool":
        raise WhereError("WHERE clause must return a boolean")
    if params:  # without params, a `$n` has already failed to compile
        _substitute_params(stmt, params, compiler.param_types)
    text = RawStream()(stmt.whereClause)
    fn = expr.fn
    if expr.is_const:
        value = expr.value
        fn = lambda _row, _cache: value  # noqa: E731
    return Where(
        source=text,
        sql=text,
        referenced_columns=frozenset(compiler.referenced),
        index=expr.index,
        _fn=fn,
    )


def index_key(column: ColumnInfo, text: str | None) -> object:
    """Normalise a column's text value the way `Where.index` keys are normalised."""
    if text is None:
        return None
    if column.type_kind == "e":
        return pgv.parse_array(text, _identity) if column.is_array else text
    return pgv.output_parser(column.type_name)(text)


def parse_order_by(sql: str, columns: Mapping[str, ColumnInfo]) -> str:
    """Validate a subset ORDER BY (plain columns, ASC/DESC, NULLS FIRST/LAST); canonical SQL."""
    stmt = _parse_clause(sql, "SELECT 1 ORDER BY ")
    prefix_len = len("SELECT 1 ORDER BY ")
    if stmt.whereClause is not None or not stmt.sortClause:
        raise WhereError("malformed query ending with SQL clauses")
    parts = []
    for sort in stmt.sortClause:
        node = sort.node
        loc = getattr(node, "location", None)
        at = ""
        if isinstance(loc, int) and loc >= prefix_len:
            at = f"At location {loc - prefix_len}: "
        if isinstance(node, ast.ParamRef):
            raise WhereError(f"{at}parameter ${node.number} is not supported in ORDER BY clauses")
        if not isinstance(node, ast.ColumnRef):
            raise WhereError(
                f"{at}{_construct_name(node)} expressions are not allowed in ORDER BY clauses"
            )
        names = [getattr(f, "sval", "*") for f in node.fields]
        if len(names) != 1 or names[0] not in columns:
            raise WhereError(f"{at}unknown reference {'.'.join(names)}")
        if sort.sortby_dir == SortByDir.SORTBY_USING:
            raise WhereError(f"{at}ORDER BY ... USING is not allowed in ORDER BY clauses")
        parts.append(RawStream()(sort))
    return ", ".join(parts)
