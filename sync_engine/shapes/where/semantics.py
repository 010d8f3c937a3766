"""Postgres's numeric and comparison semantics on Python values.

Where Python and Postgres differ (NaN is equal to itself and above every number in Postgres,
integer division truncates toward zero, integer overflow is an error), these functions follow
Postgres.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from sync_engine.pg import values as pgv

from .types import FLOAT_TYPES, INT_TYPES

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


DECIMAL_CONTEXT = Context(prec=60)


def identity(value: Any) -> Any:
    return value


def nan_key(x: Any) -> tuple[int, Any]:
    return (1, 0) if x != x else (0, x)


def nan_aware(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Postgres orders NaN above every number and NaN = NaN; Python does neither."""

    def cmp(a: Any, b: Any) -> Any:
        if a != a or b != b:
            return op(nan_key(a), nan_key(b))
        return op(a, b)

    return cmp


def comparison_op(op_name: str, type_name: str) -> Callable[[Any, Any], Any]:
    op = COMPARISONS[op_name]
    return nan_aware(op) if type_name in FLOAT_TYPES else op


def int_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_mod(a: int, b: int) -> int:
    return a - b * int_div(a, b)


def checked_int(type_name: str, func: Callable[..., int]) -> Callable[..., int]:
    def run(*args: int) -> int:
        return pgv.check_int_range(type_name, func(*args))

    return run


def num_div(a: Any, b: Any) -> Any:
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return DECIMAL_CONTEXT.divide(Decimal(a), Decimal(b))
    return a / b


def num_mod(a: Any, b: Any) -> Any:
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return DECIMAL_CONTEXT.remainder(Decimal(a), Decimal(b))


def float_result(value: float) -> float:
    if math.isinf(value):
        raise OverflowError("value out of range: overflow")
    return value


def round_half_away(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_int(type_name: str) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            result = value
        elif isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"cannot convert {value} to {pgv.sql_type_name(type_name)}")
            result = round_half_away(value)
        else:
            if math.isnan(value) or math.isinf(value):
                raise ValueError(f"{pgv.sql_type_name(type_name)} out of range")
            result = round(value)
        return pgv.check_int_range(type_name, result)

    return conv


def to_numeric(value: Any) -> Decimal:
    if isinstance(value, float):
        if math.isnan(value):
            return Decimal("NaN")
        return Decimal(f"{value:.15g}")
    return Decimal(value)


def to_float8(value: Any) -> float:
    return float(value)


def to_float4(value: Any) -> float:
    return pgv.round_float4(float(value))


def sqrt(value: float) -> float:
    if value < 0:
        raise ValueError("cannot take square root of a negative number")
    return math.sqrt(value)


def numeric_pow(a: Decimal, b: Decimal) -> Decimal:
    return DECIMAL_CONTEXT.power(a, b)


def float_pow(a: float, b: float) -> float:
    return float_result(math.pow(a, b))


def wrap_shift(typ: str, shift: Callable[[int, int], int]) -> Callable[[int, int], int]:
    bits = {"int2": 16, "int4": 32, "int8": 64}[typ]

    def run(a: int, n: int) -> int:
        result = shift(a, n % bits) & ((1 << bits) - 1)
        return result - (1 << bits) if result >= 1 << (bits - 1) else result

    return run


def arith_func(name: str, typ: str) -> Callable[..., Any] | None:
    if typ in INT_TYPES:
        funcs: dict[str, Callable[..., Any]] = {
            "+": operator.add,
            "-": operator.sub,
            "*": operator.mul,
            "/": int_div,
            "%": int_mod,
        }
        func = funcs.get(name)
        return None if func is None else checked_int(typ, func)
    if typ == "numeric":
        return {
            "+": operator.add,
            "-": operator.sub,
            "*": operator.mul,
            "/": num_div,
            "%": num_mod,
        }.get(name)
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
        return lambda a, b: pgv.round_float4(float_result(inner(a, b)))
    return lambda a, b: float_result(inner(a, b))
