"""The table of supported functions: `(name, arity) -> builder(compiler, args, node)`.

Arity -1 accepts any number of arguments. Non-deterministic functions and aggregates are
named so the compiler can refuse them with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sync_engine.pg import values as pgv

from .arrays import array_append, array_cat, array_ndims_nullable, array_prepend
from .datetimes import justify_days, justify_hours, justify_interval
from .errors import error_at
from .expr import Cache, Expr, Row, apply, apply_nullable
from .semantics import checked_int
from .types import INT_TYPES, NUMERIC_ORDER, STRING_TYPES, display, elem_type, is_array

if TYPE_CHECKING:
    from .compiler import Compiler

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


def _case_func(which: str) -> Callable[[Compiler, list[Expr], Any], Expr]:
    """upper() / lower(): the collation's per-character mapping (see collation.py)."""

    def build(c: Compiler, args: list[Expr], node: Any) -> Expr:
        func = c.case_function(which, node)
        return apply("text", func, [c.coerce(_textual(c, args[0]), "text")], node)

    return build


def _textual(c: Compiler, e: Expr) -> Expr:
    if e.type not in STRING_TYPES and e.type != "unknown":
        raise error_at(f"function argument must be text, not {display(e.type)}", e.node)
    return e


def _concat_builder(c: Compiler, args: list[Expr], node: Any) -> Expr:
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

    return Expr("text", concat, node=node)


def _like_builder(ignore_case: bool) -> Callable[[Compiler, list[Expr], Any], Expr]:
    def build(c: Compiler, args: list[Expr], node: Any) -> Expr:
        # like(text, text): a char(n) argument is cast to text (padding trimmed) first
        subject = c.coerce(args[0], "text") if args[0].type == "bpchar" else args[0]
        return c.like(subject, args[1], None, ignore_case, False, node)

    return build


def _array_builder(kind: str) -> Callable[[Compiler, list[Expr], Any], Expr]:
    def build(c: Compiler, args: list[Expr], node: Any) -> Expr:
        a, b = args
        if kind == "cat":
            typ, (a, b) = c.unify([a, b], "array_cat", node)
            if not is_array(typ):
                raise error_at("array_cat needs arrays", node)
            return apply_nullable(typ, array_cat, [a, b], node)
        if kind == "append":
            if not is_array(a.type):
                raise error_at(
                    f"function array_append({display(a.type)}, ...) does not exist", node
                )
            return apply_nullable(a.type, array_append, [a, c.coerce(b, elem_type(a.type))], node)
        if not is_array(b.type):
            raise error_at(f"function array_prepend(..., {display(b.type)}) does not exist", node)
        return apply_nullable(b.type, array_prepend, [c.coerce(a, elem_type(b.type)), b], node)

    return build


def _ndims_builder(c: Compiler, args: list[Expr], node: Any) -> Expr:
    if not is_array(args[0].type):
        raise error_at(f"function array_ndims({display(args[0].type)}) does not exist", node)
    return apply_nullable("int4", array_ndims_nullable, args, node)


def _justify_builder(func: Callable[[pgv.Interval], pgv.Interval]) -> Any:
    def build(c: Compiler, args: list[Expr], node: Any) -> Expr:
        return apply("interval", func, [c.coerce(args[0], "interval")], node)

    return build


def _abs_builder(c: Compiler, args: list[Expr], node: Any) -> Expr:
    arg = args[0] if args[0].type != "unknown" else c.coerce(args[0], "float8")
    if arg.type not in NUMERIC_ORDER:
        raise error_at(f"function abs({display(arg.type)}) does not exist", node)
    func: Callable[[Any], Any] = abs
    if arg.type in INT_TYPES:
        func = checked_int(arg.type, abs)
    elif arg.type == "numeric":
        func = Decimal.copy_abs  # abs() would round to the context's 28 digits
    return apply(arg.type, func, [arg], node)


FUNCTIONS: dict[tuple[str, int], Callable[[Compiler, list[Expr], Any], Expr]] = {
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
}
