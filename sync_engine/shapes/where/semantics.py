"""Postgres's numeric and comparison semantics on Python values.

Where Python and Postgres differ (NaN is equal to itself and above every number in Postgres,
integer division truncates toward zero, integer overflow is an error), these functions follow
Postgres.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal

from sync_engine.pg import values as pgv
from sync_engine.pg.types import CHAR, FLOAT4, INT2, INT4, INT8, NUMERIC, PgType
from sync_engine.pg.values import Value

from .resolution import FLOAT_TYPES, INT_TYPES

COMPARISONS: dict[str, Callable[[Value, Value], Value]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


#: + - * and % on numeric are exact in Postgres; with this context they are in Python too
#: (no rounding, no traps: Infinity - Infinity is NaN, as in Postgres).
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[])
NUMERIC_NAN = Decimal("NaN")


def identity(value: Value) -> Value:
    return value


def nan_key(x: Value) -> tuple[int, Value]:
    return (1, 0) if x != x else (0, x)


def nan_aware(op: Callable[[Value, Value], Value]) -> Callable[[Value, Value], Value]:
    """Postgres orders NaN above every number and NaN = NaN; Python does neither."""

    def cmp(a: Value, b: Value) -> Value:
        if a != a or b != b:
            return op(nan_key(a), nan_key(b))
        return op(a, b)

    return cmp


class _NaN:
    """The one NaN of `nan_marked` values: equal to itself (by identity), as Postgres's
    NaN is to NaN, where Python's float and Decimal NaN equal nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NaN"


NAN_MARK = _NaN()


def nan_marked(value: Value) -> Value:
    """An array (nested tuples) with each NaN element replaced by `NAN_MARK`: compared
    with `==` or `in`, its elements then follow Postgres's `=` (NaN = NaN)."""
    if isinstance(value, tuple):
        return tuple(nan_marked(x) for x in value)
    return NAN_MARK if value != value else value


def char_byte(value: Value) -> int:
    """The byte a "char" value holds, from its output text ('' is the zero byte, `\\ooo` a
    byte past ASCII, else the character): charlt & co. compare it unsigned."""
    assert isinstance(value, str)
    if not value:
        return 0
    if len(value) == 4 and value[0] == "\\":
        return int(value[1:], 8)
    return ord(value)


def comparison_op(op_name: str, pg_type: PgType) -> Callable[[Value, Value], Value]:
    op = COMPARISONS[op_name]
    if pg_type == CHAR and op_name not in ("=", "<>"):
        return lambda a, b: op(char_byte(a), char_byte(b))
    if pg_type.array and pg_type.element in FLOAT_TYPES:
        # (arrays are only compared for equality: array_eq with the elements' `=`)
        return lambda a, b: op(nan_marked(a), nan_marked(b))
    return nan_aware(op) if pg_type in FLOAT_TYPES else op


def enum_comparison(op_name: str, labels: tuple[str, ...]) -> Callable[[Value, Value], Value]:
    """An ordering comparison of enum values as Postgres's `enum_lt` & co.: by the labels'
    declared order (`pg_enum.enumsortorder`, `labels` in that order), not as text.

    A value not among `labels` was added after the clause was compiled (`ALTER TYPE ...
    ADD VALUE`, which writes no row and retires no shape): where it sorts is unknown here,
    so it raises `UnrepresentableValue` and the replicator asks Postgres about the row."""
    op = COMPARISONS[op_name]
    order = {label: i for i, label in enumerate(labels)}

    def key(value: Value) -> int:
        try:
            return order[value]
        except KeyError:
            raise pgv.UnrepresentableValue(
                "an enum value the clause was compiled without (added since): its place in"
                " the enum's order is Postgres's to tell"
            ) from None

    return lambda a, b: op(key(a), key(b))


def int_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_mod(a: int, b: int) -> int:
    return a - b * int_div(a, b)


def checked_int(pg_type: PgType, func: Callable[..., int]) -> Callable[..., int]:
    check = pgv.int_range_check(pg_type)

    def run(*args: int) -> int:
        return check(func(*args))

    return run


def num_div(a: Decimal, b: Decimal) -> Decimal:
    """numeric / numeric exactly as Postgres: the quotient rounded (half away from zero) to
    the scale `select_div_scale` picks, with its rules for NaN and infinities."""
    if a.is_nan() or b.is_nan():
        return NUMERIC_NAN
    if a.is_infinite():
        if b.is_infinite():
            return NUMERIC_NAN
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return a if b > 0 else -a
    if b.is_infinite():
        return Decimal(0)
    if b == 0:
        raise ZeroDivisionError("division by zero")
    rscale = _div_scale(a, b)
    # a / b * 10^rscale, truncated, then rounded half away from zero by its remainder; in
    # Decimal arithmetic (exact: scaleb and divide_int of finite values), not through
    # Python ints, whose conversion from text stops at 4300 digits
    num = a.scaleb(rscale, EXACT)
    q = EXACT.divide_int(num, b)
    r = EXACT.subtract(num, EXACT.multiply(q, b))
    if EXACT.multiply(2, r.copy_abs()) >= b.copy_abs():
        q = EXACT.add(q, 1 if (a < 0) == (b < 0) else -1)
    if q.is_zero():
        q = Decimal(0)  # (numeric has no -0)
    return numeric_result(q.scaleb(-rscale, EXACT))


def _base10000(x: Decimal) -> tuple[int, int]:
    """(weight, first digit) of a nonzero finite numeric in Postgres's base-10000 digits."""
    weight = x.copy_abs().adjusted() // 4
    first = int(x.copy_abs().scaleb(-4 * weight, EXACT))
    return weight, first


def _dscale(x: Decimal) -> int:
    return max(0, -int(x.as_tuple().exponent))


def _div_scale(a: Decimal, b: Decimal) -> int:
    """Postgres's `select_div_scale` (numeric.c): at least 16 significant digits."""
    w1, f1 = _base10000(a) if a != 0 else (0, 0)
    w2, f2 = _base10000(b) if b != 0 else (0, 0)
    qweight = w1 - w2 - (1 if f1 <= f2 else 0)
    rscale = 16 - qweight * 4
    rscale = max(rscale, _dscale(a), _dscale(b), 0)
    return min(rscale, 1000)


def num_mod(a: Decimal, b: Decimal) -> Decimal:
    if a.is_nan() or b.is_nan():
        return NUMERIC_NAN
    if b == 0:
        raise ZeroDivisionError("division by zero")
    if a.is_infinite():
        return NUMERIC_NAN
    if b.is_infinite():
        return a
    return EXACT.remainder(a, b)


#: Postgres's numeric limits: digits before the decimal point (NUMERIC_WEIGHT_MAX's), and
#: the display scale (NUMERIC_DSCALE_MAX).
NUMERIC_MAX_DIGITS = 131072
NUMERIC_MAX_SCALE = 16383
_SMALLEST_SCALE = Decimal(1).scaleb(-NUMERIC_MAX_SCALE)


def pg_numeric(value: Decimal) -> Decimal:
    """`value` as Postgres holds a numeric: with a display scale of 0 or more. numeric_in
    reads '1e100' as a 1 and 100 zeros (scale 0), where Decimal keeps an exponent of 100,
    and the scale decides what follows: 1e100 * 1e-100 has scale 100 in Postgres ('1.000...')
    and was 1 here; 1e100 * 1.5 prints a '.0'.

    Input beyond Postgres's range ('1e131072', '1e-16384') overflows, as numeric_in does
    (the engine had taken seconds to expand '1e1000000000' and then matched rows)."""
    if value.is_finite() and (
        (value and value.adjusted() >= NUMERIC_MAX_DIGITS)
        or -int(value.as_tuple().exponent) > NUMERIC_MAX_SCALE
    ):
        raise ValueError("value overflows numeric format")  # (an input error: 22003)
    if value.is_finite() and int(value.as_tuple().exponent) > 0:
        return value.quantize(Decimal(1), context=EXACT)
    return value


def numeric_typmod(precision: int, scale: int) -> Callable[[Decimal], Decimal]:
    """numeric(value, typmod), the cast to numeric(p, s) (apply_typmod): rounded half away
    from zero to `scale` digits after the point (a negative scale rounds to 10^-scale, shown
    with none), NaN kept, and an error ("numeric field overflow") for an infinity or a
    non-zero value of more than p - s digits before the point once rounded (0.001 has -2 of
    them: numeric(3,5) holds it and not 0.01)."""
    limit = precision - scale
    quantum = Decimal(1).scaleb(-scale)

    def fit(value: Decimal) -> Decimal:
        if value.is_nan():
            return value
        # (rounding adds at most a digit and never makes zero of a value this large)
        if value.is_infinite() or (value and value.adjusted() + 1 > limit):
            raise OverflowError("numeric field overflow")
        rounded = value.quantize(quantum, rounding=ROUND_HALF_UP, context=EXACT)
        if rounded and rounded.adjusted() + 1 > limit:
            raise OverflowError("numeric field overflow")
        return pg_numeric(rounded) if scale < 0 else rounded

    return fit


def numeric_result(value: Decimal) -> Decimal:
    """Postgres's numeric range: at most 131072 digits before the decimal point."""
    if value.is_finite() and value and value.adjusted() >= 131072:
        raise OverflowError("value overflows numeric format")
    return value


def _exact(op: Callable[[Context, Decimal, Decimal], Decimal]) -> Callable[..., Decimal]:
    def run(a: Decimal, b: Decimal) -> Decimal:
        return numeric_result(op(EXACT, a, b))

    return run


def numeric_mul(a: Decimal, b: Decimal) -> Decimal:
    """numeric `*`: exact, then rounded (half away from zero) to Postgres's largest display
    scale, as numeric_mul does (`'1e-10000' * '1e-10000'` is 0 in Postgres)."""
    product = EXACT.multiply(a, b)
    if product.is_finite() and -int(product.as_tuple().exponent) > NUMERIC_MAX_SCALE:
        product = product.quantize(_SMALLEST_SCALE, rounding=ROUND_HALF_UP, context=EXACT)
    return numeric_result(product)


def _float_op(name: str, float4: bool) -> Callable[[float, float], float]:
    """float4/float8 `+ - * /` with Postgres's overflow and underflow errors."""
    ops: dict[str, Callable[[float, float], float]] = {
        "+": operator.add,
        "-": operator.sub,
        "*": operator.mul,
        "/": _float_div,
    }
    op = ops[name]

    def run(a: float, b: float) -> float:
        result = op(a, b)
        if float4:
            result = pgv.round_float4(result, check=False)
        if math.isinf(result) and not math.isinf(a) and not math.isinf(b):
            raise OverflowError("value out of range: overflow")
        if (
            result == 0.0
            and a != 0.0
            and (b != 0.0 if name == "*" else name == "/" and not math.isinf(b))
        ):
            raise OverflowError("value out of range: underflow")
        return result

    return run


def _float_div(a: float, b: float) -> float:
    if b == 0.0:
        if math.isnan(a):
            return math.nan  # float8_div: NaN / 0 is NaN, not an error
        raise ZeroDivisionError("division by zero")
    return a / b


def round_half_away(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP, context=EXACT))


def to_int(pg_type: PgType) -> Callable[[Value], int]:
    check = pgv.int_range_check(pg_type)

    def conv(value: Value) -> int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            result = value
        elif isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"cannot convert {value} to {pg_type.sql_name}")
            result = round_half_away(value)
        else:
            if math.isnan(value) or math.isinf(value):
                raise ValueError(f"{pg_type.sql_name} out of range")
            result = round(value)
        return check(result)

    return conv


def to_numeric(value: Value) -> Decimal:
    """int / float8 -> numeric; float8 goes through `%.15g` text as in Postgres."""
    if isinstance(value, float):
        if math.isnan(value):
            return NUMERIC_NAN
        return pg_numeric(Decimal(f"{value:.15g}"))
    return Decimal(value)


def float4_to_numeric(value: float) -> Decimal:
    """float4 -> numeric goes through `%.6g` text (FLT_DIG digits)."""
    if math.isnan(value):
        return NUMERIC_NAN
    return pg_numeric(Decimal(f"{value:.6g}"))


def to_float8(value: Value) -> float:
    if isinstance(value, Decimal) and value.is_finite():
        # numeric -> float8 is float8in(numeric_out), and numeric_out has no "-0": a
        # numeric zero is never negative (-(0::numeric), 0 * -1, '-0'::numeric are 0)
        return pgv.parse_float8(str(value.copy_abs() if value.is_zero() else value))
    return float(value)


def to_float4(value: Value) -> float:
    if isinstance(value, Decimal) and value.is_finite():
        return pgv.parse_float4(str(value.copy_abs() if value.is_zero() else value))
    result = float(value)
    narrowed = pgv.round_float4(result)
    if isinstance(value, int) and not isinstance(value, bool):
        narrowed = pgv.narrow_exactly(result, value)  # ((float) of an int64: one rounding)
    if narrowed == 0.0 and result != 0.0:
        raise OverflowError("value out of range: underflow")
    return narrowed


def sqrt(value: float) -> float:
    if value < 0:
        raise ValueError("cannot take square root of a negative number")
    return math.sqrt(value)


def float_pow(a: float, b: float) -> float:
    """float8 ^ float8 following Postgres's `dpow`, special cases and errors included."""
    if math.isnan(a):
        return 1.0 if b == 0.0 else math.nan
    if math.isnan(b):
        return 1.0 if a == 1.0 else math.nan
    if a == 0.0 and b < 0.0:
        raise ValueError("zero raised to a negative power is undefined")
    # (C's floor(±Inf) is ±Inf: an infinite power passes; Python's math.floor raises on it,
    # and (-8) ^ 'Infinity' failed where Postgres answers Infinity)
    if a < 0.0 and math.isfinite(b) and math.floor(b) != b:
        raise ValueError("a negative number raised to a non-integer power yields a complex result")
    if math.isinf(a) or math.isinf(b):
        return math.pow(a, b)  # C99 / POSIX special values, as Postgres spells them out
    try:
        result = math.pow(a, b)
    except OverflowError:
        raise OverflowError("value out of range: overflow") from None
    if math.isinf(result):
        raise OverflowError("value out of range: overflow")
    if result == 0.0 and a != 0.0:
        raise OverflowError("value out of range: underflow")
    # A subnormal result is returned as it is: glibc's pow() sets ERANGE only when the
    # result underflows to zero, so Postgres's "ERANGE and finite" branch does not fire.
    return result


def wrap_shift(typ: PgType, shift: Callable[[int, int], int]) -> Callable[[int, int], int]:
    """int2shl & co. are C's `a << n`: an int2 is promoted to int first, and the machine
    takes the count modulo the width it shifts in (32 for int2 and int4, 64 for int8)."""
    bits = {INT2: 16, INT4: 32, INT8: 64}[typ]
    width = 64 if typ == INT8 else 32

    def run(a: int, n: int) -> int:
        result = shift(a, n % width) & ((1 << bits) - 1)
        return result - (1 << bits) if result >= 1 << (bits - 1) else result

    return run


def arith_func(name: str, typ: PgType) -> Callable[..., Value] | None:
    if typ in INT_TYPES:
        funcs: dict[str, Callable[..., Value]] = {
            "+": operator.add,
            "-": operator.sub,
            "*": operator.mul,
            "/": int_div,
            "%": int_mod,
        }
        func = funcs.get(name)
        return None if func is None else checked_int(typ, func)
    if typ == NUMERIC:
        return {
            "+": _exact(Context.add),
            "-": _exact(Context.subtract),
            "*": numeric_mul,
            "/": num_div,
            "%": num_mod,
        }.get(name)
    if name in ("+", "-", "*", "/"):
        return _float_op(name, typ == FLOAT4)
    return None
