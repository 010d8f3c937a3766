"""`Expr`, one typed, compiled sub-expression, and the closures that combine them.

Every `Expr.fn(row, cache)` returns the value or None for SQL NULL; `apply` folds constants
and fuses `column -> parse -> function` chains into one closure for the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from pglast import ast

from sync_engine.pg.types import BOOL, PgType
from sync_engine.pg.values import Value

from .collation import CollState
from .errors import error_at
from .index import indexable, keyset

Row = Mapping[str, "str | None"]


Cache = dict[str, Value]


Eval = Callable[[Row, Cache], Value]


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

    type: PgType
    fn: Eval
    is_const: bool = False
    value: Value = None
    column: str | None = None
    unary: Callable[[str], Value] | None = None
    unary_of: str | None = None
    raw: bool = False
    text: str | None = None
    param: int | None = None
    index: tuple[str, frozenset[Value]] | None = None
    node: ast.Node | None = None
    planner_folded: bool = False
    coll: CollState | None = None
    """The collation Postgres derives for the node this Expr was compiled from (set by
    `Compiler.compile`; None on Exprs built inside a node: see `Compiler.state_of`)."""
    bool_op: str | None = None
    """"and", "or" or "not" where Postgres's expression is that boolean operator over
    `parts` (`AND`/`OR`/`NOT`, and what it makes of BETWEEN and IN lists): which top-level
    conjuncts its planner makes of a clause (`clause._top_conjuncts`)."""
    parts: tuple[Expr, ...] = ()
    key: tuple[str, ast.Node, ast.Node] | None = None
    """For a comparison Postgres's parser builds inside another construct (each `x = item`
    of an IN list, `x >= lo` of BETWEEN): (operator, left node, right node), what `equal()`
    finds equal to a written `x = item` (`clause._Keys`)."""


def negation(expr: Expr, result: Expr) -> Expr:
    """`result`, the compiled `NOT expr`, noted as such (`Expr.bool_op`) unless a constant."""
    if result.is_const:
        return result
    new = object.__new__(type(result))
    new.__dict__.update(result.__dict__)
    new.__dict__["bool_op"] = "not"
    new.__dict__["parts"] = (expr,)
    return new


def with_node(expr: Expr, node: ast.Node | None) -> Expr:
    """`dataclasses.replace(expr, node=node)` as a copy of the instance's fields: replace
    calls `__init__` with every field, ~4 µs at each node of every clause compiled (Expr has
    no `__post_init__` and every field is an `__init__` one, so the result is the same)."""
    new = object.__new__(type(expr))
    new.__dict__.update(expr.__dict__)
    new.__dict__["node"] = node
    return new


def with_coll(expr: Expr, coll: CollState) -> Expr:
    """`dataclasses.replace(expr, coll=coll)`, as `with_node`."""
    new = object.__new__(type(expr))
    new.__dict__.update(expr.__dict__)
    new.__dict__["coll"] = coll
    return new


def with_index(expr: Expr, index: tuple[str, frozenset[Value]] | None) -> Expr:
    """`dataclasses.replace(expr, index=index)`, as `with_node`."""
    new = object.__new__(type(expr))
    new.__dict__.update(expr.__dict__)
    new.__dict__["index"] = index
    return new


def with_key(expr: Expr, key: tuple[str, ast.Node, ast.Node]) -> Expr:
    """`dataclasses.replace(expr, key=key)`, as `with_node`."""
    new = object.__new__(type(expr))
    new.__dict__.update(expr.__dict__)
    new.__dict__["key"] = key
    return new


def with_folded(expr: Expr) -> Expr:
    """`dataclasses.replace(expr, planner_folded=True)`, as `with_node`."""
    new = object.__new__(type(expr))
    new.__dict__.update(expr.__dict__)
    new.__dict__["planner_folded"] = True
    return new


def unfolded(expr: Expr) -> Expr:
    """`expr` as a constant Postgres's planner does not make (see `with_folded`)."""
    if not expr.planner_folded:
        return expr
    new = object.__new__(type(expr))
    new.__dict__.update(expr.__dict__)
    new.__dict__["planner_folded"] = False
    return new


def const(
    pg_type: PgType, value: Value, node: ast.Node | None = None, *, folded: bool = False
) -> Expr:
    """A constant; `folded`: one Postgres's planner also makes before reading a row (an
    AND or OR it simplified to a constant, see `planner_const`)."""
    return Expr(
        pg_type,
        lambda _row, _cache: value,
        is_const=True,
        value=value,
        node=node,
        planner_folded=folded,
    )


def planner_const(expr: Expr) -> bool:
    """`expr` is a constant that Postgres's planner also makes before reading a row (the
    compiler marks those: folding.py), or an AND/OR the planner simplified to a constant
    (`x OR (NOT 's' ILIKE 'a' OR e IS NULL)` is true before any row, though `e IS NULL` is
    not a constant). The engine folds more (stable casts and operators, which Postgres
    leaves to run per row, in order): only these may decide an AND or an OR without
    evaluating its other arguments."""
    return expr.is_const and expr.planner_folded


def null_safe(func: Callable[..., Value], args: Sequence[Expr]) -> Expr | Eval:
    """An evaluator applying `func` to the arguments' values, NULL if any is NULL."""
    if len(args) == 1:
        (f,) = (a.fn for a in args)

        def one(row: Row, cache: Cache) -> Value:
            a = f(row, cache)
            return None if a is None else func(a)

        return one
    if len(args) == 2:
        f1, f2 = args[0].fn, args[1].fn
        if args[1].is_const:
            b = args[1].value
            if b is None and planner_const(args[1]):
                return lambda _row, _cache: None
            if b is None:  # (a NULL the planner leaves to run per row: `a` still runs)

                def after(row: Row, cache: Cache) -> Value:
                    f1(row, cache)
                    return None

                return after

            def two_const(row: Row, cache: Cache) -> Value:
                a = f1(row, cache)
                return None if a is None else func(a, b)

            return two_const

        def two(row: Row, cache: Cache) -> Value:
            # Postgres evaluates every argument before a strict function sees a NULL, so
            # an error in `b` is raised even when `a` is NULL (and so do we).
            a = f1(row, cache)
            b = f2(row, cache)
            return None if a is None or b is None else func(a, b)

        return two
    fns = [a.fn for a in args]

    def many(row: Row, cache: Cache) -> Value:
        vals = [f(row, cache) for f in fns]
        return None if None in vals else func(*vals)

    return many


#: What evaluating a Postgres expression on values can raise in Python: Postgres's data
#: errors (division by zero, overflow, bad input) and their Python spellings.
EVAL_ERRORS = (ArithmeticError, ValueError, TypeError, AttributeError, KeyError, IndexError)


#: Set while compiling what Postgres's planner never simplifies: the arguments of an AND
#: after a constant false, of an OR after a constant true (`Compiler._BoolExpr`).
UNSIMPLIFIED: ContextVar[bool] = ContextVar("UNSIMPLIFIED", default=False)


def folding_failed(pg_type: PgType, e: Exception, node: ast.Node | None) -> Expr:
    """A constant of `pg_type` whose evaluation raised `e`: a 400 (Postgres's planner fails
    the same way), except where Postgres never evaluates it (`UNSIMPLIFIED`), where it is
    an expression of that type that is never run (its type still checked by the parse)."""
    # (Python's ZeroDivisionError says "integer division or modulo by zero", decimal's
    # DivisionByZero a list of signals: Postgres says "division by zero" for every type)
    message = "division by zero" if isinstance(e, ZeroDivisionError) else str(e)
    message = message or type(e).__name__
    if not UNSIMPLIFIED.get():
        raise error_at(message, node) from None

    def never_run(_row: Row, _cache: Cache) -> Value:
        raise ValueError(message)

    return Expr(pg_type, never_run, node=node)


def apply(
    pg_type: PgType, func: Callable[..., Value], args: Sequence[Expr], node: ast.Node | None
) -> Expr:
    """A strict (NULL in, NULL out) function of `args`, folded when all are constant.

    A constant NULL argument makes it a constant NULL, as Postgres's planner folds a strict
    function with a NULL constant input (evaluate_function) before any row is read: the
    other arguments are never evaluated, so `NULL::int4 / t::int4` is NULL even on rows
    where t is no integer (the engine raised there and called the row no match). Only a
    NULL the planner makes: a stable one (`'infinity'::timestamptz::time`, which reads
    TimeZone) is NULL only when the row runs, after the other arguments ran (and failed,
    `(tz - tz)` on an infinite tz)."""
    if any(planner_const(a) and a.value is None for a in args):
        return const(pg_type, None, node)
    if all(a.is_const for a in args):
        vals = [a.value for a in args]
        if any(v is None for v in vals):
            return const(pg_type, None, node)
        try:
            return const(pg_type, func(*vals), node)
        except EVAL_ERRORS as e:
            return folding_failed(pg_type, e, node)
    if len(args) == 1 and args[0].unary is not None:
        inner = args[0].unary
        name = args[0].unary_of
        assert name is not None

        def unary(text: str) -> Value:
            value = inner(text)  # None when an inner step yields NULL (infinity::time)
            return None if value is None else func(value)

        return Expr(pg_type, column_eval(name, unary), unary=unary, unary_of=name, node=node)
    fn = null_safe(func, args)
    assert callable(fn)
    return Expr(pg_type, fn, node=node)


def column_eval(name: str, parse: Callable[[str], Value]) -> Eval:
    def get(row: Row, _cache: Cache) -> Value:
        text = row.get(name)
        return None if text is None else parse(text)

    return get


def cached_column_eval(name: str, parse: Callable[[str], Value]) -> Eval:
    """Column value parsed at most once per row, for columns referenced several times."""

    def get(row: Row, cache: Cache) -> Value:
        try:
            return cache[name]
        except KeyError:
            text = row.get(name)
            value = cache[name] = None if text is None else parse(text)
            return value

    return get


def bool_expr(fn: Eval, node: ast.Node | None) -> Expr:
    return Expr(BOOL, fn, node=node)


def _alone(expr: Expr, parts: list[Expr], node: ast.Node | None, op: str) -> Expr:
    """The AND / OR at `node` that the planner's simplification left with one argument
    `expr`: its structure keeps `parts`, its arguments to Postgres (a constant the planner
    leaves to run per row among them, which the engine dropped), so that
    `clause._top_conjuncts` finds it (`(a AND true) OR (b AND a)` is `a AND (true OR b)`)."""
    new = with_node(expr, node)
    new.__dict__["bool_op"] = op
    new.__dict__["parts"] = tuple(parts)
    return new


def and_expr(args: list[Expr], node: ast.Node | None) -> Expr:
    # Postgres's planner simplifies AND before any row is read (eval_const_expressions,
    # simplify_and_arguments): a constant false makes it false, so the other arguments are
    # never evaluated (a row on which one would fail still gets false), and constant trues
    # are dropped (a constant has nothing to fail on a row, so dropping one is always safe).
    if any(a.value is False and planner_const(a) for a in args):
        return const(BOOL, False, node, folded=True)
    if all(planner_const(a) for a in args):  # only trues and NULLs
        return const(BOOL, None if any(a.value is None for a in args) else True, node, folded=True)
    # (a dropped constant the planner leaves to run per row keeps the rest from being one
    # of its constants: `stable_true AND NULL` stays an AND in Postgres, not NULL)
    stable = any(a.is_const and a.value is True and not planner_const(a) for a in args)
    # (Postgres's arguments: it keeps a stable constant the engine drops)
    parts = [a for a in args if not (planner_const(a) and a.value is True)]
    args = [a for a in args if not (a.is_const and a.value is True)] or [const(BOOL, True)]
    if len(args) == 1:
        return _alone(unfolded(args[0]) if stable else args[0], parts, node, "and")
    fns = [a.fn for a in args]
    if len(fns) == 2:
        f1, f2 = fns

        def and2(row: Row, cache: Cache) -> Value:
            a = f1(row, cache)
            if a is False:
                return False
            b = f2(row, cache)
            if b is False:
                return False
            return None if a is None or b is None else True

        fn: Eval = and2
    else:

        def and_n(row: Row, cache: Cache) -> Value:
            result: Value = True
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
    return Expr(BOOL, fn, index=index, node=node, bool_op="and", parts=tuple(parts))


def or_expr(args: list[Expr], node: ast.Node | None) -> Expr:
    # As `and_expr`: a constant true makes it true before any row is read, so the other
    # arguments are never evaluated (`x / 0 = 1 OR true` is true on every row, as in
    # Postgres); constant falses are dropped (simplify_or_arguments).
    if any(a.value is True and planner_const(a) for a in args):
        return const(BOOL, True, node, folded=True)
    if all(planner_const(a) for a in args):  # only falses and NULLs
        return const(BOOL, None if any(a.value is None for a in args) else False, node, folded=True)
    # (a dropped constant the planner leaves to run per row keeps the rest from being one
    # of its constants: `stable_true AND NULL` stays an AND in Postgres, not NULL)
    stable = any(a.is_const and a.value is False and not planner_const(a) for a in args)
    parts = [a for a in args if not (planner_const(a) and a.value is False)]
    args = [a for a in args if not (a.is_const and a.value is False)] or [const(BOOL, False)]
    if len(args) == 1:
        return _alone(unfolded(args[0]) if stable else args[0], parts, node, "or")
    fns = [a.fn for a in args]

    def or_n(row: Row, cache: Cache) -> Value:
        result: Value = False
        for f in fns:
            v = f(row, cache)
            if v is True:
                return True
            if v is None:
                result = None
        return result

    index = None
    if all(a.index is not None for a in args) and len({a.index[0] for a in args if a.index}) == 1:
        keys: frozenset[Value] = frozenset().union(*(a.index[1] for a in args if a.index))
        index = (args[0].index[0] if args[0].index else "", keys)
    return Expr(BOOL, or_n, index=index, node=node, bool_op="or", parts=tuple(parts))


def in_list(
    left: Expr, items: list[Expr], eq: Callable[[Value, Value], Value], node: ast.Node | None
) -> Expr:
    """`x IN (...)` evaluated in Postgres's order (transformAExprIn): with more than one
    constant item, those form one `= ANY(array)` tested first; the items that read columns
    follow one by one (`OR x = item`), stopping at the first true; each evaluated in full."""
    lf = left.fn
    consts = [i for i in items if i.is_const]
    if len(consts) > 1:
        values = [i.value for i in consts]
        has_null = any(v is None for v in values)
        present = [v for v in values if v is not None]
        hashed = keyset(present) if indexable(present) else None
        rest = [i.fn for i in items if not i.is_const]

        def in_consts(v: Value) -> Value:
            if v is None:
                return None
            if hashed is not None:
                if v in hashed:
                    return True
            elif any(eq(v, p) for p in present):
                return True
            return None if has_null else False

        if not rest:

            def only_consts(row: Row, cache: Cache) -> Value:
                return in_consts(lf(row, cache))

            return bool_expr(only_consts, node)
        first = in_consts
    else:
        first = None
        rest = [i.fn for i in items]

    def in_exprs(row: Row, cache: Cache) -> Value:
        v = lf(row, cache)
        result: Value = False if first is None else first(v)
        if result is True:
            return True
        for f in rest:
            x = f(row, cache)
            if v is None or x is None:
                result = None
            elif eq(v, x):
                return True
        return result

    return bool_expr(in_exprs, node)


def apply_nullable(
    pg_type: PgType, func: Callable[..., Value], args: Sequence[Expr], node: ast.Node | None
) -> Expr:
    """Like `apply` but `func` sees NULL arguments itself (array functions, ANY/ALL)."""
    fns = [a.fn for a in args]
    if all(a.is_const for a in args):
        try:
            return const(pg_type, func(*(a.value for a in args)), node)
        except EVAL_ERRORS as e:
            return folding_failed(pg_type, e, node)

    def run(row: Row, cache: Cache) -> Value:
        return func(*(f(row, cache) for f in fns))

    return Expr(pg_type, run, node=node)


def col_const_compare(
    left: Expr, value: Value, op: Callable[[Value, Value], Value], node: ast.Node | None
) -> Expr:
    """`col op const` as one closure: read, parse, compare; the hot path of the router."""
    name = left.unary_of
    parse = left.unary
    assert name is not None and parse is not None

    def compare(row: Row, _cache: Cache) -> Value:
        text = row.get(name)
        if text is None:
            return None
        parsed = parse(text)
        return None if parsed is None else op(parsed, value)

    return Expr(BOOL, compare, node=node)
