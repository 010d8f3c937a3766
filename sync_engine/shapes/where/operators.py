"""Operator expressions (pglast `A_Expr`): what each operator accepts and how it evaluates.

Comparisons, arithmetic (numeric, date/time, bitwise), `||`, the array operators, ANY/ALL,
IS [NOT] DISTINCT FROM, NULLIF, IN, BETWEEN and LIKE / ILIKE. Each function takes the
`Compiler` for what is shared (compiling operands, coercion, the collation's text rules) and
returns the operator's `Expr`; `A_EXPR_HANDLERS` says which expression kinds exist at all
(`constructs.py` refuses the others without a schema).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from pglast import ast
from pglast.enums import A_Expr_Kind

from sync_engine.pg.types import (
    BOOL,
    BPCHAR,
    BYTEA,
    CHAR,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    INTERVAL,
    JSONB,
    NAME,
    NUMERIC,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
    VARCHAR,
    PgType,
)
from sync_engine.pg.values import Value

from .arrays import (
    array_append,
    array_cat,
    array_contains,
    array_overlaps,
    array_prepend,
    flatten,
    quantified_op,
)
from .collation import CONFLICT, CollState
from .datetimes import DATETIME_OPS, neg_interval
from .errors import (
    NOT_EVALUATED,
    POSTGRES_OPERATORS,
    WhereError,
    error_at,
    json_operator,
    no_operator,
    no_operator_text,
    no_prefix_operator,
)
from .expr import (
    Cache,
    Expr,
    Row,
    and_expr,
    apply,
    apply_nullable,
    bool_expr,
    col_const_compare,
    const,
    in_list,
    negation,
    or_expr,
    planner_const,
    with_index,
    with_key,
)
from .folding import mark, reads_zone, strict_folds
from .index import indexable, keyset
from .jsonfields import field_jsonb, field_text
from .parse import walk
from .resolution import (
    FLOAT_TYPES,
    INT_TYPES,
    JSON_TYPES,
    NUMERIC_ORDER,
    ORDERED_TYPES,
    STRING_TYPES,
    TEMPORAL_TYPES,
    TEXT_EQUAL_TYPES,
    common_numeric,
    evaluated,
    fits_operand,
)
from .semantics import COMPARISONS, arith_func, checked_int, float_pow, identity, sqrt, wrap_shift
from .text import like_function, like_pattern

if TYPE_CHECKING:
    from .compiler import Compiler

JSON_OPERATORS = frozenset({"->", "->>", "#>", "#>>", "?", "?|", "?&", "@?", "@@", "#-"})
"""Refused with their own message: the engine does not evaluate JSON (but these:)."""
JSON_FIELD_OPERATORS = frozenset({"->", "->>"})
"""`jsonb -> key` and `jsonb ->> key` of a jsonb column (jsonfields.py)."""

LIKE_OPERATORS = {
    "~~": (False, False),
    "!~~": (False, True),
    "~~*": (True, False),
    "!~~*": (True, True),
}
"""LIKE's operator names: (ignore case, negate)."""

ARRAY_OPERATORS = frozenset({"@>", "<@", "&&"})

BITWISE_OPERATORS = frozenset({"&", "|", "#", "<<", ">>"})

ARITHMETIC_OPERATORS = frozenset({"+", "-", "*", "/", "%", "^", *BITWISE_OPERATORS})

BINARY_OPERATORS = frozenset(
    {*COMPARISONS, *LIKE_OPERATORS, *ARRAY_OPERATORS, "||", *ARITHMETIC_OPERATORS}
)
"""Every binary operator the engine evaluates (on some types)."""

REGEX_OPERATORS = frozenset({"~", "~*", "!~", "!~*"})
"""Postgres's regular expressions (ARE), which Python's `re` does not reproduce: refused."""

PREFIX_OPERATORS = frozenset({"+", "-", "@", "|/", "~"})

# Decimal's `-x` / `abs(x)` round to the context's 28 digits; numeric never rounds.
_NEGATE: dict[PgType, Callable[[Value], Value]] = {
    INTERVAL: neg_interval,
    NUMERIC: Decimal.copy_negate,
}

FLIPPED = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
"""The comparison with its operands swapped (`1 < x` is `x > 1`)."""


def compile_operator(c: Compiler, node: ast.A_Expr) -> Expr:
    names = [n.sval for n in node.name]
    if len(names) != 1:
        raise error_at(f"qualified operator {'.'.join(names)} is not supported", node)
    name = names[0]
    kind = node.kind
    handler = A_EXPR_HANDLERS.get(kind)
    if handler is None:
        raise error_at(f"{kind.name.removeprefix('AEXPR_')} expressions are not supported", node)
    return handler(c, node, name)


def _operator(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    if name in JSON_FIELD_OPERATORS and node.lexpr is not None:
        return _json_field(c, node, name)
    if name in JSON_OPERATORS:
        raise error_at(f"JSON operator {name} is not supported", node)
    if node.lexpr is None:
        return _prefix(c, node, name, c.compile(node.rexpr))
    if name in REGEX_OPERATORS:
        raise error_at(
            f"regular expression operator {name} is not supported (LIKE and ILIKE are)", node
        )
    if name not in BINARY_OPERATORS:
        raise error_at(f"operator {name} is not supported", node)
    left, right = c.compile(node.lexpr), c.compile(node.rexpr)
    for side in (left, right):
        if side.type in JSON_TYPES:
            lt, rt = left.type.sql_name, right.type.sql_name
            raise json_operator(lt, name, rt, side.type.sql_name, node)
    if name in COMPARISONS:
        return comparison(c, name, left, right, node)
    if name in LIKE_OPERATORS:
        ignore_case, negate = LIKE_OPERATORS[name]
        return like(c, left, right, None, ignore_case, negate, node)
    if name in ARRAY_OPERATORS:
        return _array_op(c, name, left, right, node)
    if name == "||":
        return _concat(c, left, right, node)
    return _arithmetic(c, name, left, right, node)


def _json_field(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    """`x -> key` / `x ->> key` where x is a jsonb column or such a field of one, and key
    text (an untyped literal or parameter too) or an integer index (jsonfields.py)."""
    left, right = c.compile(node.lexpr), c.compile(node.rexpr)
    if left.type != JSONB or (left.is_const and left.value is not None):
        raise error_at(
            f"JSON operator {name} is supported on a jsonb column (or a field of one) only,"
            f" not on {'a constant' if left.is_const else left.type.sql_name}",
            node,
        )
    if right.type in (UNKNOWN, TEXT, VARCHAR, BPCHAR):
        right, fn = c.coerce(right, TEXT), (field_jsonb if name == "->" else field_text)
    elif right.type in (INT2, INT4):
        right, fn = c.coerce(right, INT4), (field_jsonb if name == "->" else field_text)
    else:
        raise error_at(f"operator does not exist: jsonb {name} {right.type.sql_name}", node)
    result = JSONB if name == "->" else TEXT
    return replace(apply(result, fn, [left, right], node), column=None, raw=False)


def comparison(c: Compiler, name: str, left: Expr, right: Expr, node: ast.Node) -> Expr:
    _same_array_types(c, name, left, right, node)
    state = c.input_collation([left, right], node)
    typ = c.common(left.type, right.type, node)
    if typ is None or c.enum_refused(typ):
        raise _operator_error(c, name, left, right, node)
    if typ == UNKNOWN:
        typ = TEXT
    if name not in ("=", "<>") and not c.ordered(typ):
        # (Postgres has these, enum arrays too (`ea < ea`, where "operator does not exist"
        # was not its answer); not the engine)
        if typ.array and (typ.element in ORDERED_TYPES or typ.element.enum):
            raise error_at(
                f"comparing arrays with {name} is not supported (compare their elements)", node
            )
        raise _operator_error(c, name, left, right, node)
    left, right = c.coerce(left, typ), c.coerce(right, typ)
    op = c.compare_fn(name, typ, node, state)
    if left.is_const and not right.is_const:
        left, right = right, left
        op = c.compare_fn(FLIPPED.get(name, name), typ, node, state)
    index = None
    if name == "=" and right.is_const and left.column is not None and left.raw:
        index = (left.column, frozenset() if right.value is None else keyset([right.value]))
    if right.is_const and left.unary is not None and right.value is not None:
        expr = col_const_compare(left, right.value, op, node)
    else:
        expr = apply(BOOL, op, [left, right], node)
    return with_index(expr, index) if index and indexable(index[1]) else expr


#: The comparisons that order their operands (not `=` / `<>`).
ORDERING = frozenset({"<", "<=", ">", ">="})


def _operator_error(c: Compiler, name: str, left: Expr, right: Expr, node: ast.Node) -> WhereError:
    for side in (left, right):
        refusal = c.domain_refusal(side.type, node)
        if refusal is not None:
            return refusal
        if c.enum_refused(side.type):
            if name in ORDERING:
                # (e::text < 'x' is no substitute: an enum orders by its labels' declared
                # order, pg_enum.enumsortorder, which the engine does not follow)
                return error_at(
                    f"ordering enum values ({side.type.sql_name} {name}) is not supported:"
                    " an enum is ordered by its labels' declared order, not as text",
                    node,
                )
            return error_at(
                f"enum values can only be compared after a cast to text "
                f"(operator {name} on {side.type.sql_name}: e::text = 'label')",
                node,
            )
    for side in (left, right):
        if not evaluated(side.type):
            # (Postgres may well have it: `ttz < '12:00+02'` said "operator does not exist:
            # timetz < unknown", though Postgres orders timetz values)
            typ = side.type.sql_name
            only = side.type.element in TEXT_EQUAL_TYPES and name not in ("=", "<>")
            hint = f" (it compares {typ} values with = and <> only)" if only else ""
            # (not beside an untyped literal: it may be no value of the type, `bt < '12'`,
            # which Postgres rejects)
            if (
                left.type == right.type
                and side.type.element in TEXT_EQUAL_TYPES
                and name in ORDERING | {"=", "<>"}
            ):
                # (each of these types has a btree operator class: Postgres compares and
                # orders two values of it, `bt < bt` included)
                return error_at(f"operator {name} on {typ} values is {NOT_EVALUATED}{hint}", node)
            return error_at(
                f"operator {name} on {typ} values is not supported here: the engine does not"
                f" evaluate {typ}" + hint,
                node,
            )
    return no_operator(left.type.sql_name, name, right.type.sql_name, node)


def _prefix(c: Compiler, node: ast.A_Expr, name: str, arg: Expr) -> Expr:
    if arg.type == UNKNOWN:
        # Postgres: `- '1'` and `~ '1'` are ambiguous, `@ '1'`, `+ '1'` and `|/ '1'` float8
        # (the engine had read numeric: `@ '0.1' * 3 = 0.3` was true, false in Postgres)
        if name in ("-", "~"):
            raise error_at(f"operator is not unique: {name} unknown", node)
        arg = c.coerce(arg, FLOAT8)
    if arg.type == TIME and name == "-":
        arg = c.coerce(arg, INTERVAL)  # (- interval, time -> interval being implicit)
    typ = arg.type
    if name == "~" and typ in INT_TYPES:
        return apply(typ, operator.invert, [arg], node)
    if typ in NUMERIC_ORDER or (typ == INTERVAL and name == "-"):  # no `+ interval`
        funcs: dict[str, Callable[[Value], Value]] = {
            "+": identity,
            "-": _NEGATE.get(typ, operator.neg),
            "@": Decimal.copy_abs if typ == NUMERIC else abs,
            "|/": sqrt,
        }
        if name in funcs:
            rtype = FLOAT8 if name == "|/" else typ
            if name == "|/":
                arg = c.coerce(arg, FLOAT8)
            func = funcs[name]
            if typ in INT_TYPES and name in ("-", "@"):
                func = checked_int(typ, func)
            return apply(rtype, func, [arg], node)
    raise no_prefix_operator(name, typ.sql_name, node)


def _arithmetic(c: Compiler, name: str, left: Expr, right: Expr, node: ast.Node) -> Expr:
    dated = _datetime_arithmetic(c, name, left, right, node)
    if dated is not None:
        return dated
    lt, rt = left.type, right.type
    if lt == rt == UNKNOWN:
        if name != "^":  # (Postgres has one `^` on float8 and one on numeric: float8 wins)
            raise error_at(f"operator is not unique: unknown {name} unknown", node)
        left, right = c.coerce(left, FLOAT8), c.coerce(right, FLOAT8)
    known = rt if lt == UNKNOWN else lt if rt == UNKNOWN else None
    if known is not None and known != UNKNOWN and known not in NUMERIC_ORDER:
        # (`ip << '10.0.0.0/8'` is inet's "is contained by", not a shift: reading the
        # literal as the engine's integer said "invalid input syntax for type integer")
        raise error_at(f"operator {name} on {known.sql_name} is not supported", node)
    if name in ("<<", ">>") and UNKNOWN in (lt, rt):
        # int2/int4/int8 << int4: an unknown shift count is int4; an unknown shifted value
        # takes the count's type only where that is int4 (Postgres: `'1' << i2` is not
        # unique, `'1' << i8` does not exist)
        if rt == UNKNOWN:
            right = c.coerce(right, INT4)
        elif rt == INT4:
            left = c.coerce(left, INT4)
        else:
            problem = "is not unique" if rt == INT2 else "does not exist"
            raise error_at(f"operator {problem}: unknown {name} {rt.sql_name}", node)
    if name == "^" and known in NUMERIC_ORDER:
        # Postgres has `^` on float8 and on numeric only: an unknown operand is read as
        # numeric beside a numeric, else as float8 (beside float4 or an integer too; the
        # engine read '0.1' ^ f4 as float4 0.1 and '0.5' ^ i4 as an integer, a 400)
        to = NUMERIC if known == NUMERIC else FLOAT8
        left, right = (c.coerce(left, to), right) if lt == UNKNOWN else (left, c.coerce(right, to))
    lt = left.type
    if lt == UNKNOWN:
        left = c.coerce(left, rt if rt in NUMERIC_ORDER else NUMERIC)
    if right.type == UNKNOWN:
        right = c.coerce(right, left.type if left.type in NUMERIC_ORDER else NUMERIC)
    lt, rt = left.type, right.type
    if lt not in NUMERIC_ORDER or rt not in NUMERIC_ORDER:
        raise no_operator(lt.sql_name, name, rt.sql_name, node)
    if name in BITWISE_OPERATORS:
        return _bitwise(c, name, left, right, node)
    if name == "^":
        typ = NUMERIC if NUMERIC in (lt, rt) and not FLOAT_TYPES & {lt, rt} - {NUMERIC} else FLOAT8
        if typ == NUMERIC:
            # power_var picks its result scale by rules the engine does not reproduce
            raise error_at(f"operator ^ on numeric is {NOT_EVALUATED} (cast to float8)", node)
        return apply(typ, float_pow, [c.coerce(left, typ), c.coerce(right, typ)], node)
    typ = common_numeric(lt, rt)
    left, right = c.coerce(left, typ), c.coerce(right, typ)
    arith = arith_func(name, typ)
    if arith is None:
        raise no_operator(lt.sql_name, name, rt.sql_name, node)
    return apply(typ, arith, [left, right], node)


def unknown_datetime_operands(
    name: str, lt: PgType, rt: PgType
) -> tuple[PgType, PgType] | Literal[False] | None:
    """`known op unknown` or `unknown op known` with a date/time type: the operand types
    Postgres's operator resolution picks (checked against it: the same type where it has
    such an operator, else interval), None where it finds the operator not unique, False
    where the engine has no rule of its own here."""
    known = rt if lt == UNKNOWN else lt
    if name not in ("+", "-") or known not in TEMPORAL_TYPES:
        return False
    if name == "-" or known == INTERVAL:
        return None if known == DATE and name == "+" else (known, known)
    if known == DATE:
        return None  # date + integer, date + interval, date + time: ambiguous
    return (known, INTERVAL) if rt == UNKNOWN else (INTERVAL, known)


def _datetime_arithmetic(
    c: Compiler, name: str, left: Expr, right: Expr, node: ast.Node
) -> Expr | None:
    """Date/time operators, resolving an untyped literal like Postgres: first as the
    other operand's type (so `ts - '1 day'` fails as in Postgres), then any match."""
    lt, rt = left.type, right.type
    if not ({lt, rt} & TEMPORAL_TYPES):
        return None
    candidates = [(a, b) for (op, a, b) in DATETIME_OPS if op == name]
    exact = [c for c in candidates if fits_operand(lt, c[0]) and fits_operand(rt, c[1])]
    chosen = None
    pair = unknown_datetime_operands(name, lt, rt) if UNKNOWN in (lt, rt) else False
    if pair is None:
        raise error_at(f"operator is not unique: {lt.sql_name} {name} {rt.sql_name}", node)
    if isinstance(pair, tuple):
        # Postgres's choice: `tm - '1'` is time - time, `tm + '2024-01-01'` time + interval
        # (the engine had read '1' as an interval, '2024-01-01' as a date)
        chosen = pair
    elif exact:
        chosen = exact[0]
    elif TIME in (lt, rt) and UNKNOWN not in (lt, rt):
        chosen = _time_as_interval(candidates, lt, rt, name, node)
    elif UNKNOWN in (lt, rt):
        other = rt if lt == UNKNOWN else lt
        same = (other, other)
        if same in candidates:
            chosen = same
        else:
            fits = [
                c
                for c in candidates
                if (lt == UNKNOWN or fits_operand(lt, c[0], time_as_interval=True))
                and (rt == UNKNOWN or fits_operand(rt, c[1], time_as_interval=True))
            ]
            chosen = fits[0] if fits else None
    if chosen is None:
        raise no_operator(lt.sql_name, name, rt.sql_name, node)
    rtype, func = DATETIME_OPS[(name, *chosen)]
    return apply(rtype, func, [c.coerce(left, chosen[0]), c.coerce(right, chosen[1])], node)


def _time_as_interval(
    candidates: list[tuple[PgType, PgType]], lt: PgType, rt: PgType, name: str, node: ast.Node
) -> tuple[PgType, PgType] | None:
    """The operator Postgres resolves a time operand to through its implicit time ->
    interval cast, where none takes the time as it is: `tm * 2` and `tm / 2` are interval *
    / float8, `iv - tm` interval - interval; the most operands of their own type wins,
    and a tie is "not unique" (`tm + tm`: time + interval or interval + time)."""
    fits = [
        pair
        for pair in candidates
        if fits_operand(lt, pair[0], time_as_interval=True)
        and fits_operand(rt, pair[1], time_as_interval=True)
    ]
    if not fits:
        return None
    best = max((lt == a) + (rt == b) for a, b in fits)
    top = [(a, b) for a, b in fits if (lt == a) + (rt == b) == best]
    if len(top) > 1:
        raise error_at(f"operator is not unique: {lt.sql_name} {name} {rt.sql_name}", node)
    return top[0]


def _bitwise(c: Compiler, name: str, left: Expr, right: Expr, node: ast.Node) -> Expr:
    if left.type not in INT_TYPES or right.type not in INT_TYPES:
        raise no_operator(left.type.sql_name, name, right.type.sql_name, node)
    if name in ("<<", ">>"):
        typ = left.type
        if right.type == INT8:  # the count is int4 (an int2 one converts)
            raise error_at(f"operator does not exist: {typ.sql_name} {name} bigint", node)
        right = c.coerce(right, INT4) if right.type == INT2 else right
        shift = operator.lshift if name == "<<" else operator.rshift
        return apply(typ, wrap_shift(typ, shift), [left, right], node)
    typ = common_numeric(left.type, right.type)
    funcs = {"&": operator.and_, "|": operator.or_, "#": operator.xor}
    return apply(typ, funcs[name], [c.coerce(left, typ), c.coerce(right, typ)], node)


def _concat(c: Compiler, left: Expr, right: Expr, node: ast.Node) -> Expr:
    if left.type.array or right.type.array:
        return _array_concat(c, left, right, node)
    lt, rt = left.type, right.type
    other = rt if lt == UNKNOWN else lt
    if other == BYTEA:
        if {lt, rt} - {UNKNOWN, BYTEA} <= STRING_TYPES:
            # (bytea || bytea, and text || bytea: Postgres's text concatenation)
            raise error_at(f"bytea || is {NOT_EVALUATED}", node)
        raise error_at("bytea || is not supported", node)
    if CHAR in (lt, rt) and {lt, rt} <= {CHAR, UNKNOWN, *STRING_TYPES}:
        # "char" converts to text implicitly and is anynonarray too: text || text,
        # anynonarray || text and text || anynonarray all fit (Postgres: not unique)
        raise error_at(f"operator is not unique: {lt.sql_name} || {rt.sql_name}", node)
    if CHAR in (lt, rt):
        # beside any other scalar only textanycat / anytextcat fit: "char" as text
        # (char_text, its output text), the other through its ::text cast
        left, right = c.text_of_char(left), c.text_of_char(right)
        lt, rt = left.type, right.type
    # An untyped literal beside any other type is text (anytextcat / textanycat: `r4 || ''`
    # is '1.5'; the engine had said no such operator existed)
    if UNKNOWN in (lt, rt) or lt in STRING_TYPES or rt in STRING_TYPES:
        # textanycat / anytextcat: the other operand goes through its ::text cast
        # (bool reads "true", not concat()'s "t")
        def text_of(e: Expr) -> Expr:
            if planner_const(e) and e.value is None:
                # (a NULL constant of any type: the strict operator is NULL before any row,
                # the other operand never evaluated; `t || NULL::time` lost the mark)
                return const(TEXT, None, e.node, folded=True)
            if e.type in STRING_TYPES or e.type == UNKNOWN:
                return c.as_text(e)
            return c.cast_to_text(e, TEXT, node)

        return apply(TEXT, operator.add, [text_of(left), text_of(right)], node)
    for side in (lt, rt):  # (`dta || dta`: Postgres concatenates the base arrays)
        if (refusal := c.domain_refusal(side, node)) is not None:
            raise refusal
    raise no_operator(lt.sql_name, "||", rt.sql_name, node)


def _array_concat(c: Compiler, left: Expr, right: Expr, node: ast.Node) -> Expr:
    for side in (left.type, right.type):  # (`dta || text[]`: a domain over text[])
        if not side.array and (refusal := c.domain_refusal(side, node)) is not None:
            raise refusal
    if left.type.array and right.type.array:
        if (left.type.sql_name, "||", right.type.sql_name) in POSTGRES_OPERATORS:
            # (time[] || timetz[]: Postgres converts time to timetz; the engine does not)
            raise no_operator(left.type.sql_name, "||", right.type.sql_name, node)
        typ, (left, right) = c.unify([left, right], "array ||", node)
        return apply_nullable(typ, array_cat, [left, right], node)

    # An untyped literal (or NULL) beside an array is read as that array type, as
    # Postgres's operator resolution does (so `ia || '5'` fails like in Postgres).
    def missing() -> str:
        return no_operator_text(left.type.sql_name, "||", right.type.sql_name)

    if left.type.array:
        if right.type == UNKNOWN:
            right = c.coerce(right, left.type)
            return apply_nullable(left.type, array_cat, [left, right], node)
        elem = compatible_element(c, [left.type.element, right.type], node, missing)
        left, right = c.coerce(left, elem.array_of()), c.coerce(right, elem)
        return apply_nullable(elem.array_of(), array_append, [left, right], node)
    if left.type == UNKNOWN:
        left = c.coerce(left, right.type)
        return apply_nullable(right.type, array_cat, [left, right], node)
    elem = compatible_element(c, [left.type, right.type.element], node, missing)
    left, right = c.coerce(left, elem), c.coerce(right, elem.array_of())
    return apply_nullable(elem.array_of(), array_prepend, [left, right], node)


def _same_array_types(c: Compiler, name: str, left: Expr, right: Expr, node: ast.Node) -> None:
    """The array operators are `anyarray op anyarray`: two arrays must be of one type, with
    no conversion (`a2a = a8a`, `vca @> ARRAY['a']`, `r8a && ARRAY[n]` do not exist in
    Postgres; the engine had compared them as the common type)."""
    if left.type.array and right.type.array and left.type != right.type:
        raise _operator_error(c, name, left, right, node)


def compatible_element(
    c: Compiler, types: list[PgType], node: ast.Node, what: Callable[[], str]
) -> PgType:
    """The element type of an `anycompatible` / `anycompatiblearray` call (array_append,
    array_prepend, `||`): the common type of the arrays' element types and the scalars, in
    argument order (`cc || txa` is character[], `a8 || a2a` bigint[]); untyped literals
    take it. `what` names the call for the error."""
    typ = UNKNOWN
    for t in types:
        if t == UNKNOWN:
            continue
        common = c.common(typ, t, node, of_list=True)
        if common is None:
            raise error_at(what(), node)
        typ = common
    return TEXT if typ == UNKNOWN else typ


def _array_op(c: Compiler, name: str, left: Expr, right: Expr, node: ast.Node) -> Expr:
    if not (left.type.array or right.type.array):
        raise _operator_error(c, name, left, right, node)
    _same_array_types(c, name, left, right, node)
    typ = c.common(left.type, right.type, node)
    if typ is None or c.enum_refused(typ):
        raise _operator_error(c, name, left, right, node)
    state = c.input_collation([left, right], node)
    if typ.element in JSON_TYPES:  # (their elements' `=` is not their text's)
        # (an untyped literal side may hold no JSON, which Postgres rejects: not said valid)
        lt, rt = left.type.sql_name, right.type.sql_name
        raise json_operator(lt, name, rt, f"{typ.element.sql_name}[]", node)
    left, right = c.coerce(left, typ), c.coerce(right, typ)
    c.compare_fn("=", typ, node, state)  # (refuses elements whose `=` is not their text's)
    if typ.element in STRING_TYPES:
        c.require_text_equality(name, node, state)
    if name == "@>":
        return apply(BOOL, array_contains, [left, right], node)
    if name == "<@":
        return apply(BOOL, lambda a, b: array_contains(b, a), [left, right], node)
    return apply(BOOL, array_overlaps, [left, right], node)


def _any_all(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    left, right = c.compile(node.lexpr), c.compile(node.rexpr)
    state = c.input_collation([left, right], node)
    is_all = node.kind == A_Expr_Kind.AEXPR_OP_ALL
    if right.type == UNKNOWN:
        elem = left.type if left.type != UNKNOWN else TEXT
        right = c.coerce(right, elem.array_of())
    if not right.type.array:
        # (a domain over an array is an array to Postgres: "requires array" was not its word)
        raise c.domain_refusal(right.type, node) or error_at(
            f"op ANY/ALL (array) requires array on right side, not {right.type.sql_name}", node
        )
    probe = Expr(right.type.element, lambda _r, _c: None, node=node.rexpr)
    if name in COMPARISONS:
        typ = c.common(left.type, probe.type, node)
        if typ is None or c.enum_refused(typ) or (name not in ("=", "<>") and not c.ordered(typ)):
            raise _operator_error(c, name, left, probe, node)
        left = c.coerce(left, typ)
        right = c.coerce(right, typ.array_of())
        op = c.compare_fn(name, typ, node, state)
    elif name in LIKE_OPERATORS:
        ignore_case, negate = LIKE_OPERATORS[name]
        left = c.coerce(_like_subject(c, left, node), TEXT)
        right = c.coerce(right, TEXT.array_of())
        _refuse_open_escapes(c, node.rexpr, right, node)
        if state.strength == CONFLICT and not _columns_only(c, node.rexpr, right):
            # (the planner estimates each element the array folds to: see `like`)
            c.rules(state, "LIKE with patterns that are not columns", node)
        op = like_function(c.fold(ignore_case, node, state), negate)
    else:
        raise error_at(f"operator {name} is not supported with ANY/ALL", node)
    expr = apply_nullable(BOOL, quantified_op(op, is_all), [left, right], node)
    if is_all and right.is_const and right.value is not None and not flatten(right.value):
        # (true whatever the left side, unless it fails: an index scan may drop it, as
        # implied by its index condition: `clause._implied_by_index`)
        expr = with_key(expr, (f"{name} ALL empty", node.lexpr, node.rexpr))
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


def _columns_only(c: Compiler, rnode: ast.Node, right: Expr) -> bool:
    """Whether the patterns of `x LIKE ANY / ALL (<right>)` are columns: an array column,
    or `ARRAY[...]` of columns (nothing the planner can make a constant)."""
    if right.column is not None:
        return True
    while isinstance(rnode, ast.TypeCast):
        rnode = rnode.arg
    if not isinstance(rnode, ast.A_ArrayExpr) or not rnode.elements:
        return False
    compiled = [c.compiled.get(id(el)) for el in rnode.elements]
    return all(e is not None and e.column is not None for e in compiled)


def _refuse_open_escapes(c: Compiler, rnode: ast.Node, right: Expr, node: ast.Node) -> None:
    """A 400 for `x LIKE ANY / ALL (<patterns>)` when a constant pattern ends in the escape
    character, as for `x LIKE '<pattern>'`: Postgres's planner estimates each constant
    element of the array (scalararraysel) by running the LIKE on the column's statistics,
    and fails before any row when one of those reaches the pattern's end, so its answer
    depends on ANALYZE (`t LIKE ANY(ARRAY['a\\'])` failed on a table whose rows never
    reach it). The engine accepted these and matched per row."""
    patterns: list[Value] = []
    if right.is_const and right.value is not None:
        patterns = flatten(right.value)
    else:
        while isinstance(rnode, ast.TypeCast):
            rnode = rnode.arg
        if isinstance(rnode, ast.A_ArrayExpr):
            for el in rnode.elements or ():
                e = c.compiled.get(id(el))
                if e is not None and e.is_const:
                    patterns.extend(flatten(e.value) if e.type.array else [e.value])
    for pattern in patterns:
        if isinstance(pattern, str):
            try:
                like_pattern(pattern)
            except ValueError as e:
                raise error_at(str(e), node) from None


def _distinct(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    left, right = c.compile(node.lexpr), c.compile(node.rexpr)
    _same_array_types(c, "=", left, right, node)
    state = c.input_collation([left, right], node)
    typ = c.common(left.type, right.type, node)
    if name != "=" or typ is None or c.enum_refused(typ):
        raise _operator_error(c, name, left, right, node)
    typ = TEXT if typ == UNKNOWN else typ
    stable = _stable_equality(left.type, right.type)
    left, right = c.coerce(left, typ), c.coerce(right, typ)
    eq = c.compare_fn("=", typ, node, state)
    lf, rf = left.fn, right.fn
    want_distinct: bool = node.kind == A_Expr_Kind.AEXPR_DISTINCT
    if left.is_const and right.is_const and not stable:
        # a constant, as Postgres's planner makes it (its `=` immutable; see _nullif)
        a, b = left.value, right.value
        same = a is None and b is None if a is None or b is None else bool(eq(a, b))
        return const(BOOL, same != want_distinct, node)

    def distinct(row: Row, cache: Cache) -> bool:
        a, b = lf(row, cache), rf(row, cache)
        if a is None or b is None:
            same = a is None and b is None
        else:
            same = bool(eq(a, b))
        return same != want_distinct

    return bool_expr(distinct, node)


#: Pairs of types with an `=` of their own (int24eq, float48eq, date_eq_timestamp, ...):
#: `a = b` on them converts neither argument, so NULLIF(a, b) answers a as it is.
CROSS_TYPE_EQUALS = frozenset(
    (a, b)
    for group in (
        (INT2, INT4, INT8),
        (FLOAT4, FLOAT8),
        (DATE, TIMESTAMP, TIMESTAMPTZ),
        (NAME, TEXT),
    )
    for a in group
    for b in group
    if a != b
) | {(FLOAT4, t) for t in (INT2, INT4, INT8, NUMERIC)}
"""(and float4 = an integer or numeric is float48eq, which converts only the right side:
NULLIF(f4, i4) is real, not double precision, so its text is '0.1', not
'0.10000000149011612'; the other way round both go to float8)"""


def _answers_as_is(a: PgType, b: PgType) -> bool:
    """Whether NULLIF(a, b) answers its first argument with its own type: `a = b` is an
    operator of a's type (a cross-type one, `name = name`, `name = text` with varchar or
    char(n) read as text, or an array type's own `=`). NULLIF(nm, v::varchar) is name and
    NULLIF(va, va) varchar[] in Postgres: typed text / text[], the engine accepted
    `ARRAY['a'] = ARRAY[NULLIF(nm, v)]`, which Postgres refuses (text[] = name[])."""
    if (a, b) in CROSS_TYPE_EQUALS:
        return True
    if a == NAME:
        return b in (NAME, TEXT, VARCHAR, BPCHAR)
    return a.array and a == b


def _stable_equality(a: PgType, b: PgType) -> bool:
    """Whether `a = b` reads a setting in Postgres (a date or timestamp against a timestamptz
    reads TimeZone): such an `=` of constants is left by the planner to run per row."""
    return TIMESTAMPTZ in (a, b) and a != b


def _nullif(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    left, right = c.compile(node.lexpr), c.compile(node.rexpr)
    _same_array_types(c, "=", left, right, node)
    state = c.input_collation([left, right], node)
    # NULLIF(a, b) is `a = b` with its operator resolved as for `=` (not as a list), and
    # answers that operator's first argument: a converted to the operator's type, unless
    # the pair has an `=` of its own. NULLIF(ch, t) compares, and answers, as text;
    # NULLIF(i2, 65535) is int2 (so `@` of it overflows at -32768, as in Postgres).
    typ = c.common(left.type, right.type, node)
    if typ is None:
        raise _operator_error(c, "=", left, right, node)
    if typ == UNKNOWN:
        typ = TEXT
    answer = left if _answers_as_is(left.type, right.type) else None
    stable = _stable_equality(left.type, right.type)
    if planner_const(left) and left.value is None:
        # NULLIF(NULL, b) is NULL before any row, b never evaluated (seed 283 of the
        # constants test: b was a timestamptz + interval, which the planner leaves per row)
        return const(typ if answer is None else answer.type, None, node, folded=True)
    left, right = c.coerce(left, typ), c.coerce(right, typ)
    eq = c.compare_fn("=", typ, node, state)
    if left.is_const and right.is_const and not stable:
        # Postgres's planner evaluates a NULLIF of constants (its `=` immutable: not one of
        # a date or timestamp with a timestamptz, which reads TimeZone) before any row, so
        # NULLIF(7, 7) = i4 * i2 is NULL without i4 * i2 ever overflowing (seed 2238)
        a, b = left.value, right.value
        value = None if a is None or (b is not None and eq(a, b)) else a
        if answer is not None and value is not None:
            value = answer.value
        return const(typ if answer is None else answer.type, value, node)
    lf, rf = left.fn, right.fn
    if answer is not None:
        # The comparison is the common type's (the same verdict as the cross-type `=`:
        # these conversions are exact), the answer the first argument's own value.
        af = answer.fn

        def nullif_as_is(row: Row, cache: Cache) -> Value:
            a, b = af(row, cache), rf(row, cache)  # both evaluated, as in Postgres
            if a is None:
                return None
            return None if b is not None and eq(lf(row, cache), b) else a

        return Expr(answer.type, nullif_as_is, node=node)

    def nullif(row: Row, cache: Cache) -> Value:
        a, b = lf(row, cache), rf(row, cache)  # both evaluated, as in Postgres
        if a is None:
            return None
        return None if b is not None and eq(a, b) else a

    return Expr(typ, nullif, node=node)


def _in(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    """`x IN (...)` as Postgres's transformAExprIn builds it: with more than one constant
    item, those are one `x = ANY(ARRAY[...])` typed by the list rule (`Compiler.unify`, the
    left side first); every other item is its own `x = item`, its operator resolved for
    that pair alone (`' ' IN (t, ch)` compares ch as char(n)); all OR'ed in that order."""
    if isinstance(node.rexpr, ast.SubLink):
        return c.compile(node.rexpr)
    left = c.compile(node.lexpr)
    items = [c.compile(x) for x in node.rexpr]
    try:
        return _in_items(c, node, name, left, items)
    except WhereError:
        if name == "<>":
            # (NOT IN is `x <> item` AND ... to Postgres, its refusals name `<>`: `ia NOT IN
            # (ua, NULL)` is "operator does not exist: integer[] <> uuid[]", not `=`)
            for item in items:
                comparison(c, "<>", left, item, node)
        raise


def _in_items(c: Compiler, node: ast.A_Expr, name: str, left: Expr, items: list[Expr]) -> Expr:
    # "constant" is Postgres's: reads no column (contain_vars_of_level), however the engine
    # folds it: coalesce('ä', a) is its own `x = item` (seed 30 of the collation test: as
    # a list element, its collation was not compared with x's)
    var_free = [not _reads_columns(x) for x in node.rexpr]
    consts = [i for i, free in zip(items, var_free, strict=True) if free]
    parts: list[Expr] = []
    singles = items
    if len(consts) > 1 and _list_types_match(c, [left, *consts], node):
        in_consts, op_type = _in_constants(c, left, consts, node)
        parts.append(in_consts)
        if left.param is not None and left.type == UNKNOWN:
            # (make_scalar_array_op coerces an untyped `$n` in place, and the other items'
            # `=` copy it typed: `$1 IN (abs(f4), 1.5, 1.5)` is numeric = ANY(...) OR
            # numeric = real; an untyped literal is copied untyped, each item typing it)
            left = c.coerce(left, op_type)
        singles = [i for i, free in zip(items, var_free, strict=True) if not free]
    single_nodes = [x for x, free in zip(node.rexpr, var_free, strict=True) if not free]
    if len(singles) == len(items):
        single_nodes = list(node.rexpr)
    parts += [
        with_key(
            _folded_comparison(comparison(c, "=", left, i, node), left, i),
            ("=", node.lexpr, item_node),
        )
        for i, item_node in zip(singles, single_nodes, strict=True)
    ]
    expr = parts[0] if len(parts) == 1 else or_expr(parts, node)
    return _negated(expr, node) if name == "<>" else expr


def _list_types_match(c: Compiler, exprs: list[Expr], node: ast.Node) -> bool:
    """Whether the left side and the constants of an IN are one `= ANY(ARRAY[...])`: they
    have a common type, and it is not an array. Where they have none (`c1 IN ('a'::text,
    'b')`: "char" beside text), transformAExprIn asks
    select_common_type without a context, which then answers "none" instead of failing,
    and every item is its own `x = item` (c1 = 'a'::text is text = text)."""
    typ = UNKNOWN
    for e in exprs:
        common = c.common(typ, e.type, node, of_list=True)
        if common is None:
            return False
        typ = common
    # (nor is there an array of arrays for `= ANY`: arrays are compared each with its own
    # `=`, so `ia IN ('{1}'::int4[], '{}'::int8[])` is "operator does not exist: integer[] =
    # bigint[]" as in Postgres, where the engine compared them as int8[]: a 200 whose
    # snapshot then failed)
    return not typ.array


def _reads_columns(node: ast.Node) -> bool:
    return any(isinstance(n, ast.ColumnRef) for n in walk(node))


def _in_constants(
    c: Compiler, left: Expr, consts: list[Expr], node: ast.A_Expr
) -> tuple[Expr, PgType]:
    """`left = ANY(ARRAY[consts])` as transformAExprIn builds it, and the type its `=`
    compares as (what an untyped `$n` on the left is then typed)."""
    state = c.input_collation([left, *consts], node)
    typ, converted = c.unify([left, *consts], "IN", node)
    if c.enum_refused(typ):
        raise _operator_error(c, "=", left, consts[0], node)
    folds = all(planner_const(e) for e in (left, *consts)) and not reads_zone(
        [e.type for e in (left, *consts)]
    )
    # The array takes the list's type; the left side does not (transformAExprIn): its `=`
    # with the elements is resolved as an operator, so 16777217 IN (16777217::float4, 1.5)
    # compares 16777217 with the float4 16777216 as float8 (false), as numeric IN (...,
    # float4) does (the engine converted the left side to float4 too: seed 363)
    op_type = c.common(left.type, typ, node) or typ
    op_type = typ if op_type == UNKNOWN else op_type
    left = c.coerce(left, op_type)
    items = [c.coerce(i, op_type) for i in converted[1:]]
    expr = in_list(left, items, c.compare_fn("=", op_type, node, state), node)
    if folds:  # `x = ANY(ARRAY[...])` of constants, immutable: the planner's constant
        return const(BOOL, expr.fn({}, {}), node, folded=True), op_type
    # (the IN's text names its constants: what `equal()` finds equal in another IN alike)
    expr = with_key(expr, ("= ANY", node.lexpr, node))
    keys = [i.value for i in items if i.value is not None]
    if all(i.is_const for i in items) and left.column is not None and left.raw and indexable(keys):
        return replace(expr, index=(left.column, keyset(keys))), op_type
    return expr, op_type


def _between(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    """transformAExprBetween: `x >= lo AND x <= hi` (with SYMMETRIC, OR the swapped pair),
    each comparison's operator resolved for its own pair, as if written out; each a
    constant where Postgres's planner folds it, so it may decide the AND / OR (seed 2411:
    `'ab' BETWEEN SYMMETRIC 'ß' AND 'ab'` is true before any row)."""
    value = c.compile(node.lexpr)
    lo, hi = (c.compile(x) for x in node.rexpr)
    kind = node.kind
    symmetric = kind in (A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
    negate = kind in (A_Expr_Kind.AEXPR_NOT_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)

    lo_node, hi_node = node.rexpr

    def compare(op: str, bound: Expr, bound_node: ast.Node) -> Expr:
        # (each comparison has its own copy of `x`: a `$n` the first typed is that type in
        # the next, as in Postgres; see Compiler.typed_param)
        left = c.typed_param(value)
        expr = _folded_comparison(comparison(c, op, left, bound, node), left, bound)
        return with_key(expr, (op, node.lexpr, bound_node))

    first = and_expr([compare(">=", lo, lo_node), compare("<=", hi, hi_node)], node)
    expr = first
    if symmetric:
        second = and_expr([compare(">=", hi, hi_node), compare("<=", lo, lo_node)], node)
        expr = or_expr([first, second], node)
    return _negated(expr, node) if negate else expr


def _folded_comparison(expr: Expr, left: Expr, right: Expr) -> Expr:
    """A comparison (strict) of `left` and `right`, marked where the planner folds it."""
    return mark(expr, strict_folds(expr, [left, right], not reads_zone([left.type, right.type])))


def _negated(expr: Expr, node: ast.Node) -> Expr:
    """NOT `expr`: a planner's constant when `expr` is one."""
    return mark(negation(expr, apply(BOOL, operator.not_, [expr], node)), planner_const(expr))


def _like_expr(c: Compiler, node: ast.A_Expr, name: str) -> Expr:
    ignore_case, negate = LIKE_OPERATORS[name]
    left = c.text_of_char(c.compile(node.lexpr))  # (textlike: "char" converts implicitly)
    rnode = node.rexpr
    escape: Expr | None = None
    if isinstance(rnode, ast.FuncCall) and [n.sval for n in rnode.funcname] == [
        "pg_catalog",
        "like_escape",
    ]:
        pattern = c.text_of_char(c.compile(rnode.args[0]))
        escape = c.text_of_char(c.compile(rnode.args[1]))
        state = c.input_collation([left, pattern, escape], node)
        escape = c.coerce(escape, TEXT)
    else:
        pattern = c.text_of_char(c.compile(rnode))
        state = c.input_collation([left, pattern], node)
    return like(c, left, pattern, escape, ignore_case, negate, node, state)


def like(
    c: Compiler,
    left: Expr,
    pattern: Expr,
    escape: Expr | None,
    ignore_case: bool,
    negate: bool,
    node: ast.Node,
    state: CollState | None = None,
) -> Expr:
    """LIKE / ILIKE under the collation `state` (by default, `left`'s and `pattern`'s)."""
    left, pattern = c.text_of_char(left), c.text_of_char(pattern)  # (textlike)
    if state is None:
        state = c.input_collation([left, pattern], node)
    for e in (left, pattern):
        if e.type == BYTEA:
            # (Postgres has LIKE on bytea, byte by byte: "operator does not exist" was false)
            raise error_at("LIKE on bytea is not supported here (LIKE on text is)", node)
    for e in (left, pattern):
        if e.type not in STRING_TYPES and e.type != UNKNOWN:
            raise error_at(
                f"operator does not exist: {left.type.sql_name} ~~ {pattern.type.sql_name}",
                node,
            )
    left = _like_subject(c, left, node)
    left, pattern = c.coerce(left, TEXT), c.coerce(pattern, TEXT)
    if escape is not None and not escape.is_const:
        raise error_at("LIKE ... ESCAPE needs a constant escape character", node)
    esc = "\\" if escape is None else escape.value
    if escape is not None and esc is None:
        # like_escape(pattern, NULL) is NULL (strict), and so is LIKE of it: the engine
        # read ESCAPE NULL as "no escape character" and matched `a LIKE 'a' ESCAPE NULL`.
        # The planner folds it (a strict function of a NULL constant) before any row, and
        # then the LIKE, and what is strict around it: `(t LIKE 'x' ESCAPE NULL) = (1 /
        # (id - 1) = 1)` never divides (the engine said row 1 failed; wide fuzz seed 72250)
        pattern = const(TEXT, None, pattern.node, folded=True)
    if escape is not None and esc is not None and len(esc) > 1:
        raise error_at("invalid escape string", node)
    c.require_text_equality("LIKE", node, state)
    if state.strength == CONFLICT and pattern.column is None:
        # LIKE runs without a collation, but Postgres's planner estimates `col LIKE <a
        # constant>` with the column's statistics, comparing the pattern's prefix under the
        # operation's collation: none here, and once the table is analyzed the query fails
        # ("could not determine which collation to use for string comparison"), also where
        # only the planner makes the pattern a constant (`coalesce('a', ucs)`). A snapshot
        # made before ANALYZE succeeded, a later one failed (collation fuzz seed 12).
        c.rules(state, "LIKE with a pattern that is not a column", node)
    fold = c.fold(ignore_case, node, state)
    if pattern.is_const and pattern.value is not None:
        try:
            compiled = like_pattern(pattern.value, esc or None, fold=fold)
            # ASCII text: case-insensitive matching of the lowered pattern restricted to
            # ASCII letters is exactly "lower the text, then match"; no copy per row.
            ascii_ci = (
                None
                if fold is None
                else like_pattern(
                    pattern.value, esc or None, fold=fold, flags=re.IGNORECASE | re.ASCII
                )
            )
        except ValueError as e:
            raise error_at(str(e), node) from None
        match = compiled.matches

        def test(text: str) -> bool:
            return match(text) != negate

        if fold is not None and ascii_ci is not None:
            fast, folded = ascii_ci.matches, fold

            def test_folded(text: str) -> bool:
                return (fast(text) if text.isascii() else match(folded(text))) != negate

            return apply(BOOL, test_folded, [left], node)
        return apply(BOOL, test, [left], node)
    return apply(BOOL, like_function(fold, negate, esc or None), [left, pattern], node)


def _like_subject(c: Compiler, left: Expr, node: ast.Node) -> Expr:
    """The text LIKE matches: a char(n) column keeps its padding (bpcharlike matches
    `'ab  '`, so `'ab  '::char(4) LIKE 'ab'` is false), unlike its cast to text."""
    return c.padded(left, node, "LIKE")


A_EXPR_HANDLERS: dict[A_Expr_Kind, Callable[[Compiler, ast.A_Expr, str], Expr]] = {
    A_Expr_Kind.AEXPR_OP: _operator,
    A_Expr_Kind.AEXPR_OP_ANY: _any_all,
    A_Expr_Kind.AEXPR_OP_ALL: _any_all,
    A_Expr_Kind.AEXPR_DISTINCT: _distinct,
    A_Expr_Kind.AEXPR_NOT_DISTINCT: _distinct,
    A_Expr_Kind.AEXPR_NULLIF: _nullif,
    A_Expr_Kind.AEXPR_IN: _in,
    A_Expr_Kind.AEXPR_LIKE: _like_expr,
    A_Expr_Kind.AEXPR_ILIKE: _like_expr,
    A_Expr_Kind.AEXPR_BETWEEN: _between,
    A_Expr_Kind.AEXPR_NOT_BETWEEN: _between,
    A_Expr_Kind.AEXPR_BETWEEN_SYM: _between,
    A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM: _between,
}
