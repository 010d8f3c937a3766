"""The table of supported functions: `(name, arity) -> builder(compiler, args, node)`.

Arity -1 accepts any number of arguments. Non-deterministic functions and aggregates are
named so the compiler can refuse them with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from pglast import ast

from sync_engine.pg import values as pgv
from sync_engine.pg.types import (
    BPCHAR,
    DATE,
    FLOAT8,
    INT4,
    INTERVAL,
    NUMERIC,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
)
from sync_engine.pg.values import Value

from . import operators
from .arrays import array_append, array_cat, array_ndims_nullable, array_prepend
from .datetimes import (
    justify_days,
    justify_hours,
    justify_interval,
    local_to_tstz,
    tstz_to_local,
)
from .errors import error_at
from .expr import Cache, Expr, Row, apply, apply_nullable, const
from .resolution import INT_TYPES, NUMERIC_ORDER, STRING_TYPES
from .semantics import checked_int
from .zones import zone, zone_key

if TYPE_CHECKING:
    from .compiler import Compiler

Builder = Callable[["Compiler", list[Expr], ast.Node], Expr]
"""Checks a function call's arguments and builds its `Expr`."""

NON_DETERMINISTIC = frozenset(
    {
        "now",
        "random",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "timeofday",
        "gen_random_uuid",
        "uuid_generate_v4",
        "setseed",
        "nextval",
        "currval",
        "lastval",
        "txid_current",
        "pg_current_xact_id",
        "current_setting",
        "pg_backend_pid",
    }
)


AGGREGATES = frozenset(
    {
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "stddev",
        "variance",
        "bit_and",
        "bit_or",
    }
)


def _case_func(which: str) -> Builder:
    """upper() / lower(): the collation's per-character mapping (see collation.py)."""

    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        func = c.case_function(which, node, c.input_collation(args, node))
        return apply(TEXT, func, [c.coerce(_textual(c, args[0]), TEXT)], node)

    return build


def _textual(c: Compiler, e: Expr) -> Expr:
    if e.type not in STRING_TYPES and e.type != UNKNOWN:
        raise error_at(f"function argument must be text, not {e.type.sql_name}", e.node)
    return e


def _concat_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    if not args:  # (VARIADIC "any": one argument at least)
        raise error_at("function concat() does not exist", node)
    # concat() prints each argument with its output function: char(n) keeps its padding
    parts = [c.as_text(c.padded(a, node, "concat()")) for a in args]
    fns = [p.fn for p in parts]

    def concat(row: Row, cache: Cache) -> str:
        out = []
        for f in fns:
            v = f(row, cache)
            if v is not None:
                out.append(v)
        return "".join(out)

    return Expr(TEXT, concat, node=node)


def _like_builder(ignore_case: bool) -> Builder:
    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        # like(text, text): a char(n) argument is cast to text (padding trimmed) first
        state = c.input_collation(args, node)
        subject = c.coerce(args[0], TEXT) if args[0].type == BPCHAR else args[0]
        return operators.like(c, subject, args[1], None, ignore_case, False, node, state)

    return build


def _array_builder(kind: str) -> Builder:
    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        a, b = args
        if kind == "cat":
            typ, (a, b) = c.unify([a, b], "array_cat", node)
            if not typ.array:
                raise error_at("array_cat needs arrays", node)
            return apply_nullable(typ, array_cat, [a, b], node)
        if kind == "append":
            if not a.type.array:
                raise error_at(
                    f"function array_append({a.type.sql_name}, ...) does not exist", node
                )
            return apply_nullable(a.type, array_append, [a, c.coerce(b, a.type.element)], node)
        if not b.type.array:
            raise error_at(f"function array_prepend(..., {b.type.sql_name}) does not exist", node)
        return apply_nullable(b.type, array_prepend, [c.coerce(a, b.type.element), b], node)

    return build


def _ndims_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    if not args[0].type.array:
        raise error_at(f"function array_ndims({args[0].type.sql_name}) does not exist", node)
    return apply_nullable(INT4, array_ndims_nullable, args, node)


def _justify_builder(func: Callable[[pgv.Interval], pgv.Interval]) -> Builder:
    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        return apply(INTERVAL, func, [c.coerce(args[0], INTERVAL)], node)

    return build


def _abs_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    arg = args[0] if args[0].type != UNKNOWN else c.coerce(args[0], FLOAT8)
    if arg.type not in NUMERIC_ORDER:
        raise error_at(f"function abs({arg.type.sql_name}) does not exist", node)
    func: Callable[[Value], Value] = abs
    if arg.type in INT_TYPES:
        func = checked_int(arg.type, abs)
    elif arg.type == NUMERIC:
        func = Decimal.copy_abs  # abs() would round to the context's 28 digits
    return apply(arg.type, func, [arg], node)


def _timezone_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    """`x AT TIME ZONE 'Area/Location'` (timezone(zone, x)) for timestamp and timestamptz.

    The zone must be a constant full zone name: see datetimes.py for why abbreviations and
    POSIX specs, which Postgres reads by rules of its own, are refused rather than guessed.
    """
    zone_arg, subject = args
    if zone_arg.type not in STRING_TYPES and zone_arg.type != UNKNOWN:
        raise error_at(
            f"AT TIME ZONE takes a zone name, not {zone_arg.type.sql_name}", zone_arg.node
        )
    if not zone_arg.is_const:
        raise error_at("AT TIME ZONE needs a constant zone name", zone_arg.node)
    if subject.type in (UNKNOWN, DATE):
        subject = c.coerce(subject, TIMESTAMPTZ)  # Postgres's preferred datetime type
    if subject.type == TIMESTAMP:
        result, convert = TIMESTAMPTZ, local_to_tstz
    elif subject.type == TIMESTAMPTZ:
        result, convert = TIMESTAMP, tstz_to_local
    else:
        raise error_at(
            f"AT TIME ZONE is supported on timestamp and timestamptz, not {subject.type.sql_name}",
            node,
        )
    name = c.coerce(zone_arg, TEXT).value
    if name is None:
        return const(result, None, node)
    key = zone_key(str(name))
    if key is None:
        raise error_at(
            f'time zone "{name}" is not supported: use a full zone name such as'
            " 'America/New_York', or 'UTC'",
            zone_arg.node,
        )
    c.zones.add(key)  # Postgres must read it as the engine does (zones.ZoneAgreement)
    tz = zone(key)
    return apply(result, lambda value: convert(tz, value), [subject], node)


FUNCTIONS: dict[tuple[str, int], Builder] = {
    ("lower", 1): _case_func("lower"),
    ("upper", 1): _case_func("upper"),
    ("concat", -1): _concat_builder,
    ("like", 2): _like_builder(False),
    ("array_cat", 2): _array_builder("cat"),
    ("array_append", 2): _array_builder("append"),
    ("array_prepend", 2): _array_builder("prepend"),
    ("array_ndims", 1): _ndims_builder,
    ("justify_days", 1): _justify_builder(justify_days),
    ("justify_hours", 1): _justify_builder(justify_hours),
    ("justify_interval", 1): _justify_builder(justify_interval),
    ("abs", 1): _abs_builder,
    ("timezone", 2): _timezone_builder,
}
