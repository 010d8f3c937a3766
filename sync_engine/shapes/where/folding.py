"""Which constant parts of a clause Postgres's planner folds before reading a row.

eval_const_expressions turns into a constant: literals (the parser already reads a string
literal cast to any type, `'2024-01-01'::date`, into one); an operator, function, cast,
BETWEEN, IN, ANY/ALL, IS [NOT] DISTINCT FROM, NULLIF, ARRAY[...], subscript, GREATEST/LEAST,
IS [NOT] NULL and IS TRUE ... whose inputs are all such constants, when it is immutable;
COALESCE up to its first non-NULL constant; a strict one with a NULL constant input (NULL,
whatever its other inputs and its volatility); an AND or OR its constants decide
(`expr.and_expr` / `or_expr`). Stable parts are left to run per row, in order: they read a
setting (TimeZone for timestamptz beside a date or timestamp and for `timestamptz +
interval`, DateStyle and IntervalStyle for date/time input and output; array input and
output, concat()). It matters where a constant decides an AND or OR: `x OR <true>` is true
on every row without evaluating x only when the planner folded `<true>`.

`planner_folds(node, children)` says whether the planner folds `node`, given the compiled
`Expr` of each child node the compiler compiled (their types before any implicit coercion).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pglast import ast
from pglast.enums import A_Expr_Kind

from sync_engine.pg.types import (
    DATE,
    INTERVAL,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
    PgType,
)

from .expr import Expr, with_folded
from .resolution import STRING_TYPES

#: Types whose text input reads a setting (DateStyle, IntervalStyle, TimeZone): date_in,
#: time_in, ... are stable (pg_proc.provolatile 's'), as is array_in.
_STABLE_INPUT = frozenset({DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL})
#: Types whose text output does (time_out is immutable), and array_out.
_STABLE_OUTPUT = frozenset({DATE, TIMESTAMP, TIMESTAMPTZ, INTERVAL})

#: Functions the engine evaluates that are immutable in Postgres (pg_proc.provolatile 'i');
#: concat() is stable (it calls output functions), timezone() is handled apart.
_IMMUTABLE_FUNCTIONS = frozenset(
    {
        "lower",
        "upper",
        "like",
        "abs",
        "array_cat",
        "array_append",
        "array_prepend",
        "array_ndims",
        "justify_days",
        "justify_hours",
        "justify_interval",
        "like_escape",
        "length",
        "char_length",
        "character_length",
        "octet_length",
    }
)
#: Of those (and the casts), the strict ones: a NULL constant argument makes them NULL.
_STRICT_FUNCTIONS = frozenset(
    {"lower", "upper", "like", "abs", "array_ndims", "justify_days", "justify_hours",
     "justify_interval", "timezone", "like_escape", "length", "char_length",
     "character_length", "octet_length"}
)  # fmt: skip


def _base(t: PgType) -> PgType:
    return t.element if t.array else t


def reads_zone(types: Sequence[PgType]) -> bool:
    """A timestamptz beside a date or timestamp: the conversion between them (a cast or
    a cross-type operator such as date_lt_timestamptz) reads TimeZone."""
    bases = {_base(t) for t in types}
    return TIMESTAMPTZ in bases and bool(bases & {DATE, TIMESTAMP, TIME})


def cast_immutable(src: PgType, target: PgType) -> bool:
    """Whether a cast from `src` to `target` of a constant is folded (immutable)."""
    if src == target or src == UNKNOWN:
        return True
    if src.array and target.array:
        return cast_immutable(src.element, target.element)
    if target in STRING_TYPES:
        return not (src in _STABLE_OUTPUT or src.array or src.enum)
    if src in STRING_TYPES:
        return not (target in _STABLE_INPUT or target.array or target.enum)
    return not reads_zone([src, target])


def folded(e: Expr | None) -> bool:
    """`e` is a constant the planner made (or a literal)."""
    return e is not None and e.is_const and e.planner_folded


def coerced_folds(e: Expr | None, target: PgType) -> bool:
    """`e`, converted to `target` (an implicit coercion), is a constant the planner made: a
    NULL constant always is (every cast is strict)."""
    return folded(e) and (e is not None and (e.value is None or cast_immutable(e.type, target)))


def strict_folds(result: Expr, operands: Sequence[Expr], immutable: bool) -> bool:
    """A strict operator or function `result` of `operands`: a constant the planner makes
    when an operand is a NULL constant (whatever its volatility), or when all are constants
    and it is immutable."""
    if not result.is_const:
        return False
    if result.value is None and any(folded(o) and o.value is None for o in operands):
        return True
    return immutable and all(folded(o) for o in operands)


def mark(expr: Expr, folds: bool) -> Expr:
    """`expr`, marked as a constant the planner makes when `folds`."""
    return with_folded(expr) if folds and expr.is_const else expr


def _names(node: ast.FuncCall) -> list[str]:
    names = [getattr(n, "sval", "") for n in node.funcname]
    return names[1:] if len(names) == 2 and names[0] == "pg_catalog" else names


def planner_folds(node: ast.Node, expr: Expr, children: Mapping[int, Expr]) -> bool:
    """Whether Postgres's planner turns `node` (compiled to `expr`) into a constant, given
    the `Expr` the compiler built for each child node (by id)."""
    if isinstance(node, ast.A_Const | ast.ParamRef):
        return True  # (a parameter is a literal in `Where.sql`)

    def get(n: ast.Node | None) -> Expr | None:
        return None if n is None else children.get(id(n))

    def kids(ns: Sequence[ast.Node | None]) -> list[Expr] | None:
        got = [get(n) for n in ns if n is not None]
        return None if any(e is None for e in got) else [e for e in got if e is not None]

    if isinstance(node, ast.TypeCast):
        arg = get(node.arg)
        return arg is not None and strict_folds(expr, [arg], cast_immutable(arg.type, expr.type))
    if isinstance(node, ast.NullTest | ast.BooleanTest):
        return folded(get(node.arg))
    if isinstance(node, ast.BoolExpr):
        return all(folded(get(a)) for a in node.args)
    if isinstance(node, ast.A_ArrayExpr | ast.MinMaxExpr):
        items = kids(
            list((node.elements if isinstance(node, ast.A_ArrayExpr) else node.args) or ())
        )
        element = expr.type.element if expr.type.array else expr.type
        return items is not None and all(
            coerced_folds(e, expr.type if e.type.array else element) for e in items
        )
    if isinstance(node, ast.A_Indirection):
        bounds = [
            x for i in node.indirection if isinstance(i, ast.A_Indices) for x in (i.lidx, i.uidx)
        ]
        return folded(get(node.arg)) and all(x is None or folded(get(x)) for x in bounds)
    if isinstance(node, ast.CoalesceExpr):
        # NULL constants are dropped; the first other argument, if a constant, is the answer
        for a in node.args:
            e = get(a)
            if not coerced_folds(e, expr.type):
                return False
            if e is not None and e.value is not None:
                return True
        return True
    if isinstance(node, ast.FuncCall):
        return _function_folds(node, expr, kids(list(node.args or ())))
    if isinstance(node, ast.A_Expr):
        rights = list(node.rexpr) if isinstance(node.rexpr, list | tuple) else [node.rexpr]
        if isinstance(node.rexpr, ast.FuncCall) and node.kind in _LIKE_KINDS:
            rights = list(node.rexpr.args)  # LIKE ... ESCAPE: like_escape(pattern, escape)
        operands = kids([node.lexpr, *rights])
        return operands is not None and _operator_folds(node, expr, operands)
    return False


def _function_folds(node: ast.FuncCall, expr: Expr, args: list[Expr] | None) -> bool:
    if args is None:
        return False
    names = _names(node)
    name = names[-1] if len(names) == 1 else ""
    types = [a.type for a in args]
    if name == "timezone":  # immutable, but a date is first cast to timestamptz
        return strict_folds(expr, args, len(types) == 2 and types[1] != DATE)
    if name == "length" and len(args) == 2:  # length(bytea, name) is stable
        return strict_folds(expr, args, False)
    if name in _STRICT_FUNCTIONS:
        return strict_folds(expr, args, not reads_zone(types))
    if name in _IMMUTABLE_FUNCTIONS:  # array functions: not strict
        return all(folded(a) for a in args) and not reads_zone(types)
    if len(args) == 1 and name not in ("concat",):  # a cast written as a function: int8(x)
        return strict_folds(expr, args, cast_immutable(types[0], expr.type))
    return False


_LIKE_KINDS = (A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE)


def _operator_folds(node: ast.A_Expr, expr: Expr, operands: list[Expr]) -> bool:
    kind = node.kind
    name = getattr(node.name[0], "sval", "") if len(node.name) == 1 else ""
    types = [o.type for o in operands]
    immutable = not reads_zone(types)
    if kind in (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT):
        # all constants: a NULL decides it without calling `=`
        return all(folded(o) for o in operands) and (
            immutable or any(o.value is None for o in operands)
        )
    if kind == A_Expr_Kind.AEXPR_NULLIF:
        return all(folded(o) for o in operands) and (
            immutable or any(o.value is None for o in operands)
        )
    if kind in (A_Expr_Kind.AEXPR_OP, *_LIKE_KINDS):
        if name in ("+", "-") and TIMESTAMPTZ in types and INTERVAL in types:
            immutable = False  # timestamptz_pl_interval reads TimeZone (months, days)
        if name == "||" and not any(t.array for t in types):
            # textanycat / anytextcat: the other operand goes through its output function
            immutable = immutable and all(cast_immutable(t, TEXT) for t in types)
        return strict_folds(expr, operands, immutable)
    # ANY / ALL, IN, BETWEEN: all constants, immutable (the engine marks the parts of IN
    # and BETWEEN that decide them: operators.py)
    return all(folded(o) for o in operands) and immutable
