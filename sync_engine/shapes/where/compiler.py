"""The compiler: walks the pglast AST once, checking each node and building its `Expr`.

Each `_<NodeType>` method handles one node type; anything without a method is refused with a
`WhereError` naming the construct.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, BoolTestType, MinMaxOp, NullTestType

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.types import (
    BOOL,
    BPCHAR,
    DATE,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    INTERVAL,
    NUMERIC,
    TEXT,
    TIMESTAMPTZ,
    UNKNOWN,
    VARCHAR,
    PgType,
)

from .arrays import (
    array_append,
    array_cat,
    array_contains,
    array_overlaps,
    array_prepend,
    flatten,
    quantified_op,
    subscript_nullable,
)
from .casts import EXPLICIT_CASTS, IMPLICIT_CASTS
from .collation import SQL_ONLY, text_rules
from .datetimes import DATETIME_OPS, neg_interval
from .errors import WhereError, error_at
from .expr import (
    Cache,
    Expr,
    Row,
    and_expr,
    apply,
    apply_nullable,
    bool_expr,
    cached_column_eval,
    col_const_compare,
    column_eval,
    const,
    in_list,
    or_expr,
    slice_expr,
)
from .functions import AGGREGATES, FUNCTIONS, NON_DETERMINISTIC
from .index import indexable, keyset
from .parse import construct_name
from .resolution import (
    CAST_TARGET_NAMES,
    FLOAT_TYPES,
    INT_TYPES,
    JSON_TYPES,
    NUMERIC_ORDER,
    ORDERED_TYPES,
    STRING_TYPES,
    TEMPORAL_TYPES,
    common_numeric,
    common_type,
    fits_operand,
)
from .semantics import (
    COMPARISONS,
    arith_func,
    checked_int,
    comparison_op,
    float_pow,
    identity,
    sqrt,
    wrap_shift,
)
from .text import (
    bool_text,
    bool_text_from_raw,
    case_mapping,
    like_function,
    like_regex,
    text_output,
)

JSON_OPERATORS = frozenset({"->", "->>", "#>", "#>>", "?", "?|", "?&", "@?", "@@", "#-"})


LIKE_OPERATORS = {
    "~~": (False, False),
    "!~~": (False, True),
    "~~*": (True, False),
    "!~~*": (True, True),
}


# Decimal's `-x` / `abs(x)` round to the context's 28 digits; numeric never rounds.
_NEGATE: dict[PgType, Callable[[Any], Any]] = {
    INTERVAL: neg_interval,
    NUMERIC: Decimal.copy_negate,
}

FLIPPED = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
"""The comparison with its operands swapped (`1 < x` is `x > 1`)."""


class Compiler:
    """Walks the pglast AST once, checking each node and building its `Expr`."""

    def __init__(
        self,
        params: Mapping[str, str],
        columns: Mapping[str, ColumnInfo],
        *,
        allow_enums: bool,
        allow_subqueries: bool,
        ref_counts: Mapping[str, int],
        live: bool = True,
    ) -> None:
        self.params = params
        self.columns = columns
        self.allow_enums = allow_enums
        self.allow_subqueries = allow_subqueries
        self.ref_counts = ref_counts
        self.param_types: dict[int, PgType] = {}
        # Only Postgres evaluates a clause that is not live (a subset query): the collation's
        # text semantics are then Postgres's own business, nothing to reproduce.
        self.text_rules = text_rules(columns.values()) if live else SQL_ONLY
        self.referenced: set[str] = set()

    # -- entry points --

    def compile(self, node: Any) -> Expr:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise error_at(f"{construct_name(node)} is not supported", node)
        try:
            expr: Expr = method(node)
        except WhereError as e:
            # Constants carry no location in pglast: report the nearest enclosing node's.
            if e.located or not isinstance(getattr(node, "location", None), int):
                raise
            raise error_at(str(e), node) from None
        return expr if expr.node is not None else replace(expr, node=node)

    def to_bool(self, expr: Expr, what: str) -> Expr:
        if expr.type == BOOL:
            return expr
        if expr.type == UNKNOWN:
            return self.coerce(expr, BOOL)
        raise error_at(
            f"argument of {what} must be type boolean, not type {expr.type.sql_name}", expr.node
        )

    # -- coercion --

    def coerce(self, expr: Expr, target: PgType) -> Expr:
        """Implicitly convert `expr` to `target` (unknown literals are parsed), or fail."""
        if expr.type == target:
            return expr
        if expr.type == UNKNOWN:
            return self._resolve_unknown(expr, target)
        if expr.type.array and target.array:
            key = (expr.type.element, target.element)
            conv = IMPLICIT_CASTS.get(key)
            if conv is None:
                raise self._no_conversion(expr, target)
            return self._map_array(expr, target, conv[0])
        conv = IMPLICIT_CASTS.get((expr.type, target))
        if conv is None:
            raise self._no_conversion(expr, target)
        func, exact = conv
        if (expr.type, target) == (DATE, TIMESTAMPTZ):
            func = EXPLICIT_CASTS[(DATE, TIMESTAMPTZ)]
        if func is identity:
            return replace(expr, type=target, raw=expr.raw and exact, fn=expr.fn)
        result = apply(target, func, [expr], expr.node)
        if exact and expr.column is not None:
            result = replace(result, column=expr.column)
        return result

    def _no_conversion(self, expr: Expr, target: PgType) -> WhereError:
        return error_at(f"cannot convert {expr.type.sql_name} to {target.sql_name}", expr.node)

    def _map_array(self, expr: Expr, target: PgType, func: Callable[[Any], Any]) -> Expr:
        def conv(a: Any) -> Any:
            return tuple(
                None if x is None else conv(x) if isinstance(x, tuple) else func(x) for x in a
            )

        return replace(apply(target, conv, [expr], expr.node), column=None)

    def _resolve_unknown(self, expr: Expr, target: PgType) -> Expr:
        """Give an untyped literal / parameter its type, parsing it with that type's rules."""
        if expr.param is not None:
            seen = self.param_types.setdefault(expr.param, target)
            if seen != target:
                raise error_at(f"type conflict for ${expr.param}", expr.node)
        if expr.text is None:
            return const(target, None, expr.node)
        if target.enum or (target.array and target.element.enum):
            if target.array:
                value: Any = pgv.parse_array(expr.text, identity)
            else:
                value = expr.text
            return const(target, value, expr.node)
        try:
            parser = pgv.input_parser(target)
            return const(target, parser(expr.text), expr.node)
        except ValueError as e:
            raise error_at(str(e), expr.node) from None

    def unify(self, exprs: Sequence[Expr], what: str, node: Any) -> tuple[PgType, list[Expr]]:
        """Convert operands to one common type (Postgres's UNION/CASE-style resolution)."""
        typ = UNKNOWN
        for e in exprs:
            common = self.common(typ, e.type, node)
            if common is None:
                raise error_at(
                    f"{what} types {typ.sql_name} and {e.type.sql_name} cannot be matched",
                    e.node or node,
                )
            typ = common
        if typ == UNKNOWN:
            typ = TEXT
        return typ, [self.coerce(e, typ) for e in exprs]

    # -- leaves --

    def _ColumnRef(self, node: ast.ColumnRef) -> Expr:
        parts = [getattr(f, "sval", "*") for f in node.fields]
        if len(parts) != 1 or parts[0] not in self.columns:
            raise error_at(f"unknown reference {'.'.join(parts)}", node)
        col = self.columns[parts[0]]
        self.referenced.add(col.name)
        typ = col.pg_type
        parse = pgv.output_parser(typ)
        if self.ref_counts.get(col.name, 0) > 1:
            return Expr(
                typ, cached_column_eval(col.name, parse), column=col.name, raw=True, node=node
            )
        return Expr(
            typ,
            column_eval(col.name, parse),
            column=col.name,
            unary=parse,
            unary_of=col.name,
            raw=True,
            node=node,
        )

    def _A_Const(self, node: ast.A_Const) -> Expr:
        if node.isnull:
            return Expr(UNKNOWN, lambda _r, _c: None, is_const=True, node=node)
        val = node.val
        if isinstance(val, ast.Integer):
            return const(INT4, int(val.ival or 0), node)  # pglast: ival 0 may read None
        if isinstance(val, ast.Float):
            # The lexer makes integers beyond int4 Floats, and `-` folds into a literal
            # (`-2147483648`); Postgres then types it int4, int8 or numeric by its range.
            text = val.fval or "0"
            if re.fullmatch(r"-?[0-9]+", text):
                n = int(text)
                if -(2**31) <= n < 2**31:
                    return const(INT4, n, node)
                if -(2**63) <= n < 2**63:
                    return const(INT8, n, node)
                return const(NUMERIC, Decimal(n), node)
            return const(NUMERIC, Decimal(text), node)
        if isinstance(val, ast.Boolean):
            return const(BOOL, bool(val.boolval), node)
        if isinstance(val, ast.String):
            return Expr(
                UNKNOWN,
                lambda _r, _c: val.sval,
                is_const=True,
                value=val.sval,
                text=val.sval,
                node=node,
            )
        raise error_at(f"{construct_name(val)} constants are not supported", node)

    def _ParamRef(self, node: ast.ParamRef) -> Expr:
        n = node.number
        text = self.params.get(str(n))
        if text is None:
            raise error_at(f"parameter ${n} was not provided", node)
        return Expr(
            UNKNOWN, lambda _r, _c: text, is_const=True, value=text, text=text, param=n, node=node
        )

    # -- boolean structure --

    def _BoolExpr(self, node: ast.BoolExpr) -> Expr:
        if node.boolop == BoolExprType.NOT_EXPR:
            arg = self.to_bool(self.compile(node.args[0]), "NOT")
            return apply(BOOL, operator.not_, [arg], node)
        what = "AND" if node.boolop == BoolExprType.AND_EXPR else "OR"
        args = [self.to_bool(self.compile(a), what) for a in node.args]
        return and_expr(args, node) if what == "AND" else or_expr(args, node)

    def _NullTest(self, node: ast.NullTest) -> Expr:
        arg = self.compile(node.arg)
        if arg.type == UNKNOWN and arg.param is not None:
            arg = self.coerce(arg, TEXT)
        f = arg.fn
        if node.nulltesttype == NullTestType.IS_NULL:
            return bool_expr(lambda row, cache: f(row, cache) is None, node)
        return bool_expr(lambda row, cache: f(row, cache) is not None, node)

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
        return bool_expr(lambda row, cache: test(f(row, cache)), node)

    # -- operators --

    def _A_Expr(self, node: ast.A_Expr) -> Expr:
        names = [n.sval for n in node.name]
        if len(names) != 1:
            raise error_at(f"qualified operator {'.'.join(names)} is not supported", node)
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
            raise error_at(
                f"{kind.name.removeprefix('AEXPR_')} expressions are not supported", node
            )
        return handler(node, name)

    def _operator(self, node: ast.A_Expr, name: str) -> Expr:
        if name in JSON_OPERATORS:
            raise error_at(f"JSON operator {name} is not supported", node)
        if node.lexpr is None:
            return self._prefix(node, name, self.compile(node.rexpr))
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        for side in (left, right):
            if side.type in JSON_TYPES:
                raise error_at(
                    f"JSON operators are not supported ({side.type.sql_name} {name})", node
                )
        if name in COMPARISONS:
            return self.comparison(name, left, right, node)
        if name in LIKE_OPERATORS:
            ignore_case, negate = LIKE_OPERATORS[name]
            return self.like(left, right, None, ignore_case, negate, node)
        if name in ("@>", "<@", "&&"):
            return self._array_op(name, left, right, node)
        if name == "||":
            return self._concat_op(left, right, node)
        return self._arithmetic(name, left, right, node)

    def comparison(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        typ = self.common(left.type, right.type, node)
        if typ is None or (typ.enum and not self.allow_enums):
            raise self._operator_error(name, left, right, node)
        if typ == UNKNOWN:
            typ = TEXT
        if name not in ("=", "<>") and (typ not in ORDERED_TYPES):
            raise self._operator_error(name, left, right, node)
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        op = self.compare_fn(name, typ, node)
        if left.is_const and not right.is_const:
            left, right = right, left
            op = self.compare_fn(
                {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(name, name), typ, node
            )
        index = None
        if name == "=" and right.is_const and left.column is not None and left.raw:
            index = (left.column, frozenset() if right.value is None else keyset([right.value]))
        if right.is_const and left.unary is not None and right.value is not None:
            expr = col_const_compare(left, right.value, op, node)
        else:
            expr = apply(BOOL, op, [left, right], node)
        return replace(expr, index=index) if index and indexable(index[1]) else expr

    def _operator_error(self, name: str, left: Expr, right: Expr, node: Any) -> WhereError:
        for side in (left, right):
            if side.type.enum and not self.allow_enums:
                return error_at(
                    f"enum values can only be compared after a cast to text "
                    f"(operator {name} on {side.type.sql_name})",
                    node,
                )
        return error_at(
            f"operator does not exist: {left.type.sql_name} {name} {right.type.sql_name}", node
        )

    def _prefix(self, node: ast.A_Expr, name: str, arg: Expr) -> Expr:
        if arg.type == UNKNOWN:
            arg = self.coerce(arg, NUMERIC if name != "~" else INT8)
        typ = arg.type
        if name == "~" and typ in INT_TYPES:
            return apply(typ, operator.invert, [arg], node)
        if typ in NUMERIC_ORDER or (typ == INTERVAL and name in "+-"):
            funcs: dict[str, Callable[[Any], Any]] = {
                "+": identity,
                "-": _NEGATE.get(typ, operator.neg),
                "@": Decimal.copy_abs if typ == NUMERIC else abs,
                "|/": sqrt,
            }
            if name in funcs:
                rtype = FLOAT8 if name == "|/" else typ
                if name == "|/":
                    arg = self.coerce(arg, FLOAT8)
                func = funcs[name]
                if typ in INT_TYPES and name in ("-", "@"):
                    func = checked_int(typ, func)
                return apply(rtype, func, [arg], node)
        raise error_at(f"operator does not exist: {name} {typ.sql_name}", node)

    def _arithmetic(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        dated = self._datetime_arithmetic(name, left, right, node)
        if dated is not None:
            return dated
        lt, rt = left.type, right.type
        if lt == UNKNOWN:
            left = self.coerce(left, rt if rt in NUMERIC_ORDER else NUMERIC)
        if right.type == UNKNOWN:
            right = self.coerce(right, left.type if left.type in NUMERIC_ORDER else NUMERIC)
        lt, rt = left.type, right.type
        if lt not in NUMERIC_ORDER or rt not in NUMERIC_ORDER:
            raise error_at(f"operator does not exist: {lt.sql_name} {name} {rt.sql_name}", node)
        if name in ("&", "|", "#", "<<", ">>"):
            return self._bitwise(name, left, right, node)
        if name == "^":
            typ = (
                NUMERIC
                if NUMERIC in (lt, rt) and not FLOAT_TYPES & {lt, rt} - {NUMERIC}
                else FLOAT8
            )
            if typ == NUMERIC:
                # power_var picks its result scale by rules the engine does not reproduce
                raise error_at("operator ^ on numeric is not supported (cast to float8)", node)
            return apply(typ, float_pow, [self.coerce(left, typ), self.coerce(right, typ)], node)
        typ = common_numeric(lt, rt)
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        arith = arith_func(name, typ)
        if arith is None:
            raise error_at(f"operator does not exist: {lt.sql_name} {name} {rt.sql_name}", node)
        return apply(typ, arith, [left, right], node)

    def _datetime_arithmetic(self, name: str, left: Expr, right: Expr, node: Any) -> Expr | None:
        """Date/time operators, resolving an untyped literal like Postgres: first as the
        other operand's type (so `ts - '1 day'` fails as in Postgres), then any match."""
        lt, rt = left.type, right.type
        if not ({lt, rt} & TEMPORAL_TYPES):
            return None
        candidates = [(a, b) for (op, a, b) in DATETIME_OPS if op == name]
        exact = [c for c in candidates if fits_operand(lt, c[0]) and fits_operand(rt, c[1])]
        chosen = None
        if exact:
            chosen = exact[0]
        elif UNKNOWN in (lt, rt):
            other = rt if lt == UNKNOWN else lt
            same = (other, other)
            if same in candidates:
                chosen = same
            else:
                fits = [
                    c
                    for c in candidates
                    if (lt == UNKNOWN or fits_operand(lt, c[0]))
                    and (rt == UNKNOWN or fits_operand(rt, c[1]))
                ]
                chosen = fits[0] if fits else None
        if chosen is None:
            raise error_at(f"operator does not exist: {lt.sql_name} {name} {rt.sql_name}", node)
        rtype, func = DATETIME_OPS[(name, *chosen)]
        return apply(
            rtype, func, [self.coerce(left, chosen[0]), self.coerce(right, chosen[1])], node
        )

    def _bitwise(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        if left.type not in INT_TYPES or right.type not in INT_TYPES:
            raise error_at(
                f"operator does not exist: {left.type.sql_name} {name} {right.type.sql_name}", node
            )
        if name in ("<<", ">>"):
            typ = left.type
            right = self.coerce(right, INT4) if right.type == INT2 else right
            shift = operator.lshift if name == "<<" else operator.rshift
            return apply(typ, wrap_shift(typ, shift), [left, right], node)
        typ = common_numeric(left.type, right.type)
        funcs = {"&": operator.and_, "|": operator.or_, "#": operator.xor}
        return apply(typ, funcs[name], [self.coerce(left, typ), self.coerce(right, typ)], node)

    def _concat_op(self, left: Expr, right: Expr, node: Any) -> Expr:
        if left.type.array or right.type.array:
            return self._array_concat(left, right, node)
        lt, rt = left.type, right.type
        if lt == rt == UNKNOWN or lt in STRING_TYPES or rt in STRING_TYPES:
            # textanycat / anytextcat: the other operand goes through its ::text cast
            # (bool reads "true", not concat()'s "t")
            parts = [
                self.as_text(e) if e.type in STRING_TYPES or e.type == UNKNOWN
                else self._cast_to_text(e, TEXT, node)
                for e in (left, right)
            ]  # fmt: skip
            return apply(TEXT, operator.add, parts, node)
        raise error_at(f"operator does not exist: {lt.sql_name} || {rt.sql_name}", node)

    def _array_concat(self, left: Expr, right: Expr, node: Any) -> Expr:
        if left.type.array and right.type.array:
            typ, (left, right) = self.unify([left, right], "array ||", node)
            return apply_nullable(typ, array_cat, [left, right], node)
        # An untyped literal (or NULL) beside an array is read as that array type, as
        # Postgres's operator resolution does (so `ia || '5'` fails like in Postgres).
        if left.type.array:
            if right.type == UNKNOWN:
                right = self.coerce(right, left.type)
                return apply_nullable(left.type, array_cat, [left, right], node)
            right = self.coerce(right, left.type.element)
            return apply_nullable(left.type, array_append, [left, right], node)
        if left.type == UNKNOWN:
            left = self.coerce(left, right.type)
            return apply_nullable(right.type, array_cat, [left, right], node)
        left = self.coerce(left, right.type.element)
        return apply_nullable(right.type, array_prepend, [left, right], node)

    def _array_op(self, name: str, left: Expr, right: Expr, node: Any) -> Expr:
        if not (left.type.array or right.type.array):
            raise self._operator_error(name, left, right, node)
        typ = self.common(left.type, right.type, node)
        if typ is None or (typ.element.enum and not self.allow_enums):
            raise self._operator_error(name, left, right, node)
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        if typ.element in STRING_TYPES:
            self.require_text_equality(name, node)
        if name == "@>":
            return apply(BOOL, array_contains, [left, right], node)
        if name == "<@":
            return apply(BOOL, lambda a, b: array_contains(b, a), [left, right], node)
        return apply(BOOL, array_overlaps, [left, right], node)

    def _any_all(self, node: ast.A_Expr, name: str) -> Expr:
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        is_all = node.kind == A_Expr_Kind.AEXPR_OP_ALL
        if right.type == UNKNOWN:
            elem = left.type if left.type != UNKNOWN else TEXT
            right = self.coerce(right, elem.array_of())
        if not right.type.array:
            raise error_at(
                f"op ANY/ALL (array) requires array on right side, not {right.type.sql_name}", node
            )
        probe = Expr(right.type.element, lambda _r, _c: None, node=node.rexpr)
        if name in COMPARISONS:
            typ = self.common(left.type, probe.type, node)
            if (
                typ is None
                or (typ.enum and not self.allow_enums)
                or (name not in ("=", "<>") and typ not in ORDERED_TYPES)
            ):
                raise self._operator_error(name, left, probe, node)
            left = self.coerce(left, typ)
            right = self.coerce(right, typ.array_of())
            op = self.compare_fn(name, typ, node)
        elif name in LIKE_OPERATORS:
            ignore_case, negate = LIKE_OPERATORS[name]
            left = self.coerce(self._like_subject(left, node), TEXT)
            right = self.coerce(right, TEXT.array_of())
            op = like_function(self.fold(ignore_case, node), negate)
        else:
            raise error_at(f"operator {name} is not supported with ANY/ALL", node)
        expr = apply_nullable(BOOL, quantified_op(op, is_all), [left, right], node)
        if (
            not is_all
            and name == "="
            and right.is_const
            and right.value is not None
            and left.column is not None
            and left.raw
        ):
            keys = [v for v in flatten(right.value) if v is not None]
            if indexable(keys):
                return replace(expr, index=(left.column, keyset(keys)))
        return expr

    def _distinct(self, node: ast.A_Expr, name: str) -> Expr:
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        typ = self.common(left.type, right.type, node)
        if name != "=" or typ is None or (typ.enum and not self.allow_enums):
            raise self._operator_error(name, left, right, node)
        typ = TEXT if typ == UNKNOWN else typ
        left, right = self.coerce(left, typ), self.coerce(right, typ)
        eq = self.compare_fn("=", typ, node)
        lf, rf = left.fn, right.fn
        want_distinct: bool = node.kind == A_Expr_Kind.AEXPR_DISTINCT

        def distinct(row: Row, cache: Cache) -> bool:
            a, b = lf(row, cache), rf(row, cache)
            if a is None or b is None:
                same = a is None and b is None
            else:
                same = bool(eq(a, b))
            return same != want_distinct

        return bool_expr(distinct, node)

    def _nullif(self, node: ast.A_Expr, name: str) -> Expr:
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        typ, (left, right) = self.unify([left, right], "NULLIF", node)
        eq = self.compare_fn("=", typ, node)
        lf, rf = left.fn, right.fn

        def nullif(row: Row, cache: Cache) -> Any:
            a, b = lf(row, cache), rf(row, cache)  # both evaluated, as in Postgres
            if a is None:
                return None
            return None if b is not None and eq(a, b) else a

        return Expr(typ, nullif, node=node)

    def _in(self, node: ast.A_Expr, name: str) -> Expr:
        if isinstance(node.rexpr, ast.SubLink):
            return self._SubLink(node.rexpr)
        left = self.compile(node.lexpr)
        items = [self.compile(x) for x in node.rexpr]
        typ, converted = self.unify([left, *items], "IN", node)
        if typ.enum and not self.allow_enums:
            raise self._operator_error(name, left, items[0], node)
        left, items = converted[0], converted[1:]
        expr = in_list(left, items, self.compare_fn("=", typ, node), node)
        if name == "<>":
            return apply(BOOL, operator.not_, [expr], node)
        consts = [i.value for i in items if i.is_const]
        if len(consts) == len(items) and left.column is not None and left.raw:
            keys = [v for v in consts if v is not None]
            if indexable(keys):
                return replace(expr, index=(left.column, keyset(keys)))
        return expr

    def _between(self, node: ast.A_Expr, name: str) -> Expr:
        value = self.compile(node.lexpr)
        lo, hi = (self.compile(x) for x in node.rexpr)
        typ, (value, lo, hi) = self.unify([value, lo, hi], "BETWEEN", node)
        if typ not in ORDERED_TYPES:
            raise self._operator_error(">=", value, lo, node)
        ge, le = self.compare_fn(">=", typ, node), self.compare_fn("<=", typ, node)
        kind = node.kind
        symmetric = kind in (A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        negate = kind in (A_Expr_Kind.AEXPR_NOT_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        first = and_expr(
            [apply(BOOL, ge, [value, lo], node), apply(BOOL, le, [value, hi], node)], node
        )
        expr = first
        if symmetric:
            second = and_expr(
                [apply(BOOL, ge, [value, hi], node), apply(BOOL, le, [value, lo], node)], node
            )
            expr = or_expr([first, second], node)
        return apply(BOOL, operator.not_, [expr], node) if negate else expr

    def _like_expr(self, node: ast.A_Expr, name: str) -> Expr:
        ignore_case, negate = LIKE_OPERATORS[name]
        left = self.compile(node.lexpr)
        rnode = node.rexpr
        escape: Expr | None = None
        if isinstance(rnode, ast.FuncCall) and [n.sval for n in rnode.funcname] == [
            "pg_catalog",
            "like_escape",
        ]:
            pattern = self.compile(rnode.args[0])
            escape = self.coerce(self.compile(rnode.args[1]), TEXT)
        else:
            pattern = self.compile(rnode)
        return self.like(left, pattern, escape, ignore_case, negate, node)

    def like(
        self,
        left: Expr,
        pattern: Expr,
        escape: Expr | None,
        ignore_case: bool,
        negate: bool,
        node: Any,
    ) -> Expr:
        for e in (left, pattern):
            if e.type not in STRING_TYPES and e.type != UNKNOWN:
                raise error_at(
                    f"operator does not exist: {left.type.sql_name} ~~ {pattern.type.sql_name}",
                    node,
                )
        left = self._like_subject(left, node)
        left, pattern = self.coerce(left, TEXT), self.coerce(pattern, TEXT)
        if escape is not None and not escape.is_const:
            raise error_at("LIKE ... ESCAPE needs a constant escape character", node)
        esc = "\\" if escape is None else escape.value
        if escape is not None and esc is not None and len(esc) > 1:
            raise error_at("invalid escape string", node)
        self.require_text_equality("LIKE", node)
        fold = self.fold(ignore_case, node)
        if pattern.is_const and pattern.value is not None:
            try:
                regex = like_regex(pattern.value, esc or None, fold=fold)
            except ValueError as e:
                raise error_at(str(e), node) from None
            match = regex.fullmatch

            def test(text: str) -> bool:
                return (match(text) is None) if negate else (match(text) is not None)

            if fold is not None:
                # ASCII text: case-insensitive matching of the lowered pattern restricted to
                # ASCII letters is exactly "lower the text, then match"; no copy per row.
                ascii_match = re.compile(regex.pattern, re.DOTALL | re.IGNORECASE | re.ASCII)
                fast, folded = ascii_match.fullmatch, fold

                def test_folded(text: str) -> bool:
                    m = fast(text) if text.isascii() else match(folded(text))
                    return (m is None) if negate else (m is not None)

                return apply(BOOL, test_folded, [left], node)
            return apply(BOOL, test, [left], node)
        return apply(BOOL, like_function(fold, negate, esc or None), [left, pattern], node)

    def _like_subject(self, left: Expr, node: Any) -> Expr:
        """The text LIKE matches: a char(n) column keeps its padding (bpcharlike matches
        `'ab  '`, so `'ab  '::char(4) LIKE 'ab'` is false), unlike its cast to text."""
        return self.padded(left, node, "LIKE")

    def padded(self, expr: Expr, node: Any, what: str) -> Expr:
        """A char(n) column's value with its padding, as text (what its output function
        prints); other expressions unchanged. The engine keeps char(n) values trimmed, so a
        char(n) expression that is not a plain column is refused where padding matters."""
        if expr.type != BPCHAR:
            return expr
        if not (expr.raw and expr.column is not None):
            raise error_at(f"{what} on a char(n) expression is not supported", node)
        col = expr.column
        return Expr(TEXT, column_eval(col, identity), unary=identity, unary_of=col, node=node)

    # -- collation-dependent text semantics (see collation.py) --

    def fold(self, ignore_case: bool, node: Any) -> Callable[[str], str] | None:
        """ILIKE's `lower`, or None for LIKE; refused where the collation's is unknown."""
        if not ignore_case:
            return None
        return self.case_function("lower", node, "ILIKE")

    def case_function(self, which: str, node: Any, what: str = "") -> Callable[[str], str]:
        kind = self.text_rules.case_map
        if kind is None:
            raise error_at(
                f"{what or which + '()'} is not supported under {self.text_rules.blocker} "
                "(live filtering reproduces case mapping only for C, POSIX and C.UTF-8 ctypes)",
                node,
            )
        return case_mapping(kind, which)

    def require_text_ordering(self, op: str, typ: PgType, node: Any) -> None:
        if typ in STRING_TYPES and not self.text_rules.ordering:
            raise error_at(
                f"text comparison {op} is not supported under {self.text_rules.blocker} "
                "(live filtering orders text by code point: C, POSIX and C.UTF-8 collations)",
                node,
            )

    def common(self, a: PgType, b: PgType, node: Any) -> PgType | None:
        """`common_type`, refusing char(n) beside varchar: Postgres compares those as
        char(n) in an operator (`'ab '::varchar = 'ab  '::char(4)` is true) but as varchar
        in an IN list of constants, which the engine does not tell apart."""
        pair = {a.element if a.array else a, b.element if b.array else b}
        if pair == {BPCHAR, VARCHAR}:
            raise error_at(
                "comparing char(n) with varchar is not supported (cast one side to text)", node
            )
        return common_type(a, b)

    def compare_fn(self, name: str, typ: PgType, node: Any) -> Callable[[Any, Any], Any]:
        """The comparison `name` on `typ`, refused on text where the collation forbids it."""
        base = typ.element if typ.array else typ
        if base in STRING_TYPES:
            if name in ("=", "<>"):
                self.require_text_equality(name, node)
            else:
                self.require_text_ordering(name, base, node)
        return comparison_op(name, typ)

    def require_text_equality(self, op: str, node: Any) -> None:
        if not self.text_rules.equality:
            raise error_at(
                f"text {op} is not supported under {self.text_rules.blocker} "
                "(live filtering compares text byte for byte: deterministic collations only)",
                node,
            )

    # -- other expression nodes --

    def _TypeCast(self, node: ast.TypeCast) -> Expr:
        target = self._type_name(node.typeName)
        arg = self.compile(node.arg)
        return self.cast(arg, target, node)

    def cast(self, arg: Expr, target: PgType, node: Any) -> Expr:
        """An explicit cast: implicit conversions, text output, text input, numeric casts."""
        src = arg.type
        if src == target:
            return replace(arg, node=node)
        if src == UNKNOWN:
            return replace(self.coerce(arg, target), node=node)
        if target in (TEXT, VARCHAR):
            return self._cast_to_text(arg, target, node)
        if src in STRING_TYPES:
            parser = pgv.input_parser(target)
            return replace(apply(target, parser, [arg], node), column=None)
        if (src, target) in EXPLICIT_CASTS:
            return replace(apply(target, EXPLICIT_CASTS[(src, target)], [arg], node), column=None)
        if (src, target) in IMPLICIT_CASTS or (src.array and target.array):
            try:
                return self.coerce(arg, target)
            except WhereError:
                pass
        raise error_at(f"cannot cast type {src.sql_name} to {target.sql_name}", node)

    def _cast_to_text(self, arg: Expr, target: PgType, node: Any) -> Expr:
        src = arg.type
        if src in JSON_TYPES and not arg.raw:
            raise error_at(f"cannot cast type {src.sql_name} to {target.sql_name}", node)
        if arg.raw and arg.column is not None:
            col = arg.column
            if src == BOOL:
                func: Callable[[str], Any] = bool_text_from_raw
            elif src == BPCHAR:
                func = pgv.output_parser(BPCHAR)
            else:
                func = identity
            fn = column_eval(col, func)
            exact = src in STRING_TYPES or src.enum
            return Expr(
                target,
                fn,
                column=col if exact else None,
                unary=func,
                unary_of=col,
                raw=exact,
                node=node,
            )
        out = text_output(src)
        if out is None:
            raise error_at(f"cannot cast type {src.sql_name} to {target.sql_name}", node)
        if src == BOOL:
            out = bool_text
        return replace(apply(target, out, [arg], node), column=None)

    def as_text(self, expr: Expr) -> Expr:
        if expr.type in STRING_TYPES or expr.type == UNKNOWN:
            return self.coerce(expr, TEXT)
        out = text_output(expr.type)
        if out is None:
            raise error_at(f"cannot convert {expr.type.sql_name} to text", expr.node)
        if expr.raw and expr.column is not None:
            return Expr(TEXT, column_eval(expr.column, identity), node=expr.node)
        return apply(TEXT, out, [expr], expr.node)

    def _type_name(self, tn: ast.TypeName) -> PgType:
        names = [n.sval for n in tn.names]
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        if tn.typmods:
            raise error_at(f"type modifiers are not supported ({'.'.join(names)})", tn)
        if len(names) != 1 or tn.setof or tn.pct_type:
            raise error_at(f"unsupported type {'.'.join(names)}", tn)
        name = names[0]
        if name in CAST_TARGET_NAMES:
            typ = PgType(name)
        elif self.allow_enums and any(
            col.is_enum and col.base_type == name for col in self.columns.values()
        ):
            typ = PgType(name, enum=True)
        else:
            raise error_at(f"unsupported type {name}", tn)
        return typ.array_of() if tn.arrayBounds else typ

    def _A_ArrayExpr(self, node: ast.A_ArrayExpr) -> Expr:
        elements = [self.compile(e) for e in (node.elements or ())]
        if not elements:
            raise error_at("cannot determine type of empty array", node)
        if any(e.type.array for e in elements):
            typ, elements = self.unify(elements, "ARRAY", node)
            return apply_nullable(typ, lambda *xs: tuple(xs), elements, node)
        typ, elements = self.unify(elements, "ARRAY", node)
        return apply_nullable(typ.array_of(), lambda *xs: tuple(xs), elements, node)

    def _A_Indirection(self, node: ast.A_Indirection) -> Expr:
        arg = self.compile(node.arg)
        for ind in node.indirection:
            if not isinstance(ind, ast.A_Indices) or not arg.type.array:
                raise error_at(f"{construct_name(ind)} is not supported here", node)
            if ind.is_slice:
                bounds = [
                    self.coerce(self.compile(b), INT4) if b is not None else None
                    for b in (ind.lidx, ind.uidx)
                ]
                lo = bounds[0] or const(INT4, None)
                hi = bounds[1] or const(INT4, None)
                lo_none, hi_none = bounds[0] is None, bounds[1] is None
                arg = slice_expr(arg, lo, hi, lo_none, hi_none, node)
            else:
                idx = self.coerce(self.compile(ind.uidx), INT4)
                arg = apply_nullable(arg.type.element, subscript_nullable, [arg, idx], node)
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
            raise error_at(
                f"could not identify a comparison function for type {typ.sql_name}", node
            )
        fns = [a.fn for a in args]
        greatest = node.op == MinMaxOp.IS_GREATEST
        better = self.compare_fn(">" if greatest else "<", typ, node)

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
            raise error_at(f"window functions are not supported ({name})", node)
        if (
            node.agg_star
            or node.agg_distinct
            or node.agg_order
            or node.agg_filter
            or (name in AGGREGATES)
        ):
            raise error_at(f"aggregate functions are not supported ({name})", node)
        if node.func_variadic:
            raise error_at("VARIADIC function calls are not supported", node)
        if name in NON_DETERMINISTIC:
            raise error_at(f"non-deterministic function {name}() is not supported", node)
        args = [self.compile(a) for a in (node.args or ())]
        builder = FUNCTIONS.get((name, len(args))) or FUNCTIONS.get((name, -1))
        if builder is None:
            if name in CAST_TARGET_NAMES and len(args) == 1:
                return self.cast(args[0], PgType(name), node)
            raise error_at(f"unknown or unsupported function {name}/{len(args)}", node)
        return builder(self, args, node)

    def _SubLink(self, node: ast.SubLink) -> Expr:
        if not self.allow_subqueries:
            raise error_at("Subqueries are not allowed in subsets", node)
        raise error_at(
            "subqueries are not supported yet (only `value IN (SELECT ...)` will be)", node
        )

    def _SQLValueFunction(self, node: Any) -> Expr:
        raise error_at(
            "non-deterministic functions (CURRENT_DATE, CURRENT_TIMESTAMP, ...) are not supported",
            node,
        )

    def _CaseExpr(self, node: Any) -> Expr:
        raise error_at("CASE expressions are not supported", node)

    def _CollateClause(self, node: Any) -> Expr:
        raise error_at("COLLATE is not supported", node)

    def _RowExpr(self, node: Any) -> Expr:
        raise error_at("row expressions are only supported on the left of IN (SELECT ...)", node)
