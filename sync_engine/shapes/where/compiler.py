"""The compiler: walks the pglast AST once, checking each node and building its `Expr`.

Each `_<NodeType>` method handles one node type; anything without a method is refused with a
`WhereError` naming the construct. Operator expressions are compiled in `operators.py`; the
methods here are what every node shares: coercion to a type, casts, and the collation's
text rules.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import date
from decimal import Decimal, InvalidOperation

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, BoolTestType, MinMaxOp, NullTestType

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo, ColumnMap
from sync_engine.pg.types import (
    BOOL,
    BPCHAR,
    CHAR,
    DATE,
    FLOAT4,
    FLOAT8,
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

from . import operators
from .arrays import MAX_DIMENSIONS, array_element, array_of_arrays, array_slices
from .casts import (
    ARRAY_BOUNDS_REFUSED,
    ARRAY_SPACE_REFUSED,
    EXPLICIT_CASTS,
    IMPLICIT_CASTS,
    bounds_refused,
    datetime_input,
    has_array_bounds,
    interval_literal,
    regular_array,
    text_input_cast,
    trailing_comma,
    unicode_space,
)
from .collation import (
    CONFLICT,
    DEFAULT_IMPLICIT,
    EXPLICIT,
    IMPLICIT,
    NAMED,
    NO_COLLATION,
    SQL_ONLY,
    UCS_BASIC,
    CollState,
    ExplicitMismatch,
    Ident,
    TextRules,
    collations,
    column_ident,
    merge_all,
)
from .constructs import (
    UNLIMITED,
    constant_refusal,
    numeric_typmod,
    string_length,
    type_refusal,
    typmods_refused,
)
from .errors import WhereError, error_at, not_evaluated
from .expr import (
    EVAL_ERRORS,
    UNSIMPLIFIED,
    Cache,
    Expr,
    Row,
    and_expr,
    apply,
    apply_nullable,
    bool_expr,
    cached_column_eval,
    column_eval,
    const,
    folding_failed,
    negation,
    or_expr,
    planner_const,
    with_coll,
    with_folded,
    with_node,
)
from .folding import coerced_folds, mark, planner_folds
from .functions import AGGREGATES, FUNCTIONS, NON_DETERMINISTIC
from .parse import child_nodes, construct_name
from .resolution import (
    CAST_TARGET_NAMES,
    JSON_TYPES,
    NUMERIC_ORDER,
    ORDERED_TYPES,
    STRING_TYPES,
    TEXT_EQUAL_TYPES,
    common_type,
    compared_as_text,
    evaluated,
    select_common,
)
from .semantics import comparison_op, enum_comparison, identity, pg_numeric
from .semantics import numeric_typmod as numeric_typmod_fn
from .text import INET, bool_text, bool_text_from_raw, case_mapping, inet_text, text_output

#: The types whose literals the engine reads in ISO 8601 only (Postgres reads more).
_CLOCK_TYPES = frozenset({DATE, TIME, TIMESTAMP, TIMESTAMPTZ})
#: What in such a literal Postgres may well read where the engine does not: month and day
#: names, AM/PM, eras, special words, zone names and abbreviations, `/` dates, compact
#: dates, Julian days (the engine's "invalid input syntax" would then not be Postgres's).
_POSTGRES_READS = re.compile(
    r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|mon|tue|wed|thu|fri|sat|sun"
    r"|am|pm|bc|ad|epoch|allballs|today|tomorrow|yesterday|now|utc|gmt|z|est|edt|cst|cdt"
    r"|mst|mdt|pst|pdt|cet|cest|bst)[a-z]*\b|[a-z]/[a-z]|\d/\d|^\s*\d{8}\b|^\s*j\d"
    # ('infinity+05:30' and '-infinity UTC' are infinity to Postgres: a zone after the word
    # is read and dropped; '+infinity' is Postgres 15's "invalid input syntax")
    r"|^\s*-?infinity(?=\s*[+-]?\w)"
)


#: What glibc's strtod reads in a float literal where the engine's reader does not: hex
#: ('0x10' is 16, '0x1p3' 8) and 'nan(...)'. Postgres 15's float8in and float4in take them.
#: A signed NaN ('-nan', '+NaN') too: strtod reads it, and Postgres prints NaN. In an array
#: literal, at any element.
_STRTOD_READS = re.compile(
    r"(?:^|[{,])\s*(?:[+-]?(?:0x|nan\()|[+-]nan\s*(?:$|[},]))", re.IGNORECASE
)

#: What Postgres's date/time input carries over where the engine's reader stops: a 60th
#: second (23:59:60 is the next minute) and 24:00 (the next day's midnight) after a date.
_CLOCK_CARRIES = re.compile(r"(?<![\d:])(?:24:00(?::00)?|\d\d?:\d\d:60)(?![\d:.])")

#: A text that starts as the ISO date or time of day Postgres reads first, whatever follows
#: (an offset as +0530, a zone glued to the clock, seven fractional digits, a 'T' before a
#: time): Postgres may read the rest where the engine does not, so "invalid" is not known.
_ISO_DATE_START = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})(?![\d-])")
_ISO_TIME_START = re.compile(r"\s*T?(\d{1,2}):([0-5]\d)(?!\d)", re.IGNORECASE)


def _starts_as_postgres_reads(text: str, target: PgType) -> bool:
    """Whether `text` starts with a valid ISO date (or, for a time, time of day): then what
    the engine cannot read after it is not known to be invalid to Postgres."""
    m = _ISO_DATE_START.match(text)
    if m is not None:
        try:
            date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return False
        return True
    m = _ISO_TIME_START.match(text)
    return target.element == TIME and m is not None and int(m[1]) <= 24


#: Casts Postgres has (pg_cast) between types the engine knows, which it does not evaluate.
_OTHER_POSTGRES_CASTS = frozenset(
    (PgType(a), PgType(b))
    for a, b in (
        ("char", "int4"), ("int4", "char"), ("interval", "time"), ("timetz", "time"),
        ("bit", "int4"), ("bit", "int8"), ("int4", "bit"), ("int8", "bit"),
        ("bit", "varbit"), ("varbit", "bit"),
        *(("jsonb", t) for t in ("int2", "int4", "int8", "numeric", "float4", "float8", "bool")),
    )
)  # fmt: skip


def _postgres_casts(src: PgType, target: PgType) -> bool:
    """Whether Postgres has an explicit cast from `src` to `target` (so "cannot cast type"
    is not its answer): an array's is its elements' (`fa::numeric[]`, `ea::text[]`), any
    type to or from a string type through its text (CoerceViaIO), pg_cast's own."""
    if src.array or target.array:
        return src.array and target.array and _postgres_casts(src.element, target.element)
    return (
        src == target
        or src in STRING_TYPES
        or target in STRING_TYPES
        or (src, target) in EXPLICIT_CASTS
        or (src, target) in IMPLICIT_CASTS
        or (src, target) in _OTHER_POSTGRES_CASTS
        or (src in NUMERIC_ORDER and target in NUMERIC_ORDER)
    )


def enum_labels(columns: Mapping[str, ColumnInfo]) -> dict[str, tuple[str, ...]]:
    """The labels of the table's enum columns, by column (`ColumnMap.enum_labels`); none
    for a plain mapping of columns."""
    return columns.enum_labels if isinstance(columns, ColumnMap) else {}


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
        self.live = live
        self.collations = collations(columns.values())
        # each compiled node's collation (by id), as Postgres derives it (collation.py)
        self.states: dict[int, CollState] = {}
        self.referenced: set[str] = set()
        self.zones: set[str] = set()  # AT TIME ZONE's zones (zone files' names)
        # every node compiled so far (by id), for what the planner folds (folding.py)
        self.compiled: dict[int, Expr] = {}
        # nodes the compiler made (a simple CASE's `x = v`): kept so that no other node
        # takes their ids while `compiled` and `states` hold them
        self.synthesized: list[ast.Node] = []

    # -- entry points --

    def compile(self, node: ast.Node) -> Expr:
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
        expr = expr if expr.node is not None else with_node(expr, node)
        if not expr.planner_folded and planner_folds(node, expr, self.compiled):
            expr = self._planner_constant(expr, node)
        state = self._derive(node, expr)
        self.states[id(node)] = state
        if state is not NO_COLLATION:
            expr = with_coll(expr, state)
        self.compiled[id(node)] = expr
        return expr

    def _planner_constant(self, expr: Expr, node: ast.Node) -> Expr:
        """`expr` as the constant Postgres's planner makes of it (see folding.py): its
        inputs are all constants, so it reads no row."""
        if expr.is_const:
            return with_folded(expr)
        try:
            value = expr.fn({}, {})
        except EVAL_ERRORS as e:
            return folding_failed(expr.type, e, node)
        return const(expr.type, value, expr.node, folded=True)

    def to_bool(self, expr: Expr, what: str) -> Expr:
        if expr.type == BOOL:
            return expr
        if expr.type == UNKNOWN:
            return self.coerce(expr, BOOL)
        raise error_at(
            f"argument of {what} must be type boolean, not type {expr.type.sql_name}", expr.node
        )

    # -- enums --

    def enum_labels(self, typ: PgType) -> tuple[str, ...] | None:
        """The labels of the enum `typ` is (or is an array of), in their declared order,
        as the table's columns of that enum know them; None when no column tells them
        (a table recorded before they were) or two columns' enums of that name differ."""
        base = typ.element
        if not base.enum:
            return None
        known = enum_labels(self.columns)
        found = {
            known.get(c.name)
            for c in self.columns.values()
            if c.is_enum and c.base_type == base.name
        }
        if len(found) != 1:
            return None
        return found.pop()

    def enum_refused(self, typ: PgType) -> bool:
        """Whether values of `typ` (an enum, or an array of one) cannot be compared here: the
        engine compares enum values only knowing the enum's labels (their declared order,
        and which labels exist), unless only Postgres evaluates the clause (`allow_enums`)."""
        return typ.element.enum and not self.allow_enums and self.enum_labels(typ) is None

    def ordered(self, typ: PgType) -> bool:
        """Whether `<`, GREATEST & co. exist on `typ` for the engine: the ordered scalar
        types, and an enum whose labels it knows (ordered as declared)."""
        if typ in ORDERED_TYPES:
            return True
        return typ.enum and not typ.array and not self.enum_refused(typ)

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
            # (date -> timestamptz is midnight in the session's zone, as for a scalar: the
            # elements were naive datetimes, equal to no timestamptz, so `'2024-01-01
            # 00:00+00'::timestamptz = ANY(ARRAY[d])` missed the rows Postgres matches)
            if key == (DATE, TIMESTAMPTZ):
                return self._map_array(expr, target, EXPLICIT_CASTS[key])
            return self._map_array(expr, target, conv[0])
        conv = IMPLICIT_CASTS.get((expr.type, target))
        if conv is None:
            raise self._no_conversion(expr, target)
        if target == NAME and not self.collations.utf8:
            raise error_at(
                "converting text to name is not supported here (the database encoding, which"
                " decides where Postgres cuts it, is not known to be UTF8)",
                expr.node,
            )
        func, exact = conv
        if (expr.type, target) == (DATE, TIMESTAMPTZ):
            func = EXPLICIT_CASTS[(DATE, TIMESTAMPTZ)]
        if func is identity:
            return replace(expr, type=target, raw=expr.raw and exact, fn=expr.fn)
        result = apply(target, func, [expr], expr.node)
        if exact and expr.column is not None:
            result = replace(result, column=expr.column)
        # A constant the planner made stays one through an immutable implicit cast (and a
        # NULL through any: casts are strict): `NULL::int4 < f8 * num` is float8 `<` of a
        # NULL constant, NULL before any row, `f8 * num` never evaluated (the engine
        # evaluated it, it overflowed, and the row did not match; seed 7007)
        return mark(result, coerced_folds(expr, target))

    def text_of_char(self, expr: Expr) -> Expr:
        """A "char" operand as text (its implicit cast, char_text) where only a text
        parameter takes it (LIKE, lower(), length()...); any other operand unchanged."""
        if expr.type != CHAR:
            return expr
        # (a non-collatable type cast to text takes the database's default collation)
        return with_coll(self.coerce(expr, TEXT), DEFAULT_IMPLICIT)

    def _no_conversion(self, expr: Expr, target: PgType) -> WhereError:
        return error_at(f"cannot convert {expr.type.sql_name} to {target.sql_name}", expr.node)

    def _map_array(self, expr: Expr, target: PgType, func: Callable[[Value], Value]) -> Expr:
        def conv(a: Value) -> Value:
            return tuple(
                None if x is None else conv(x) if isinstance(x, tuple) else func(x) for x in a
            )

        result = replace(apply(target, conv, [expr], expr.node), column=None)
        return mark(result, coerced_folds(expr, target))

    def _resolve_unknown(self, expr: Expr, target: PgType) -> Expr:
        """Give an untyped literal / parameter its type, parsing it with that type's rules."""
        if expr.param is not None:
            seen = self.param_types.setdefault(expr.param, target)
            if seen != target:
                # (Postgres's words; IN types its left side once per item: `$1 IN (vc, ch)`)
                raise error_at(
                    f"inconsistent types deduced for parameter ${expr.param}"
                    f" ({seen.sql_name} versus {target.sql_name})",
                    expr.node,
                )
        # (Postgres's parser reads an untyped literal into a constant of the type the
        # context gives it, whatever the volatility of the type's input function: the
        # result is as much the planner's constant as the literal was; `t || NULL` is
        # textcat of a NULL constant, NULL before any row: seed 7014)
        folded = expr.planner_folded
        if expr.text is None:
            return const(target, None, expr.node, folded=folded)
        if target.array and not target.element.enum:
            try:
                pgv.input_parser(target.element)
            except ValueError:
                # (an array of a type the engine reads as its text, a domain or inet: its
                # elements would compare as text, `'{true}'` unlike a row's `{t}`)
                raise error_at(f"unsupported type {target.sql_name}", expr.node) from None
        if target.array and has_array_bounds(expr.text):
            raise error_at(ARRAY_BOUNDS_REFUSED, expr.node)
        if target.array and unicode_space(expr.text):
            raise error_at(ARRAY_SPACE_REFUSED, expr.node)
        if target.array and trailing_comma(expr.text):
            raise error_at(f'malformed array literal: "{expr.text[:40]}"', expr.node)
        if target.element.enum and self.enum_refused(target):
            # Postgres checks the label against the enum's (which the engine does not know
            # here): an unknown one would fail only when the snapshot runs
            raise error_at(
                f"a literal of enum type {target.element.name}"
                " is not supported (compare the enum cast to text: e::text = 'label')",
                expr.node,
            )
        try:
            parser: Callable[[str], Value]
            if target.enum and not target.array:
                parser = identity
            elif target.array and target.element.enum:
                parser = functools.partial(pgv.parse_array, element=identity)
            elif target == INTERVAL:
                parser = interval_literal
            elif target.array and target.element == INTERVAL:
                parser = functools.partial(pgv.parse_array, element=interval_literal)
            else:
                parser = datetime_input(target)
            value = parser(expr.text)
            if target.array and not regular_array(value):
                # ('{{1},2}', '{a,{b},c}': Postgres refuses them; the engine matched rows)
                raise ValueError(f'malformed array literal: "{expr.text[:40]}"')
            if target.element.enum:
                self._check_labels(target, value)
            if target.element == NAME:
                value = self._name_input(value, expr.node)
            elif target.element == CHAR:
                value = self._char_input(value, expr.node)
            return const(target, value, expr.node, folded=folded)
        except ValueError as e:
            refusal = self.domain_refusal(target, expr.node)
            if refusal is not None:
                raise refusal from None
            message = str(e)
            if target.element in _CLOCK_TYPES and pgv.has_non_c_space(expr.text):
                pass  # (Postgres's own "invalid input syntax": NBSP is no space to it)
            elif target.element in _CLOCK_TYPES and _CLOCK_CARRIES.search(expr.text):
                # ('2024-01-01 24:00' and '12:00:60' are valid to Postgres, which carries
                # them over: the engine said "invalid input syntax" / "out of range")
                message = (
                    f'{target.sql_name} literal "{expr.text[:60]}" is not supported: Postgres'
                    " carries a 60th second and 24:00 over to the next minute or day; write"
                    " the time it carries to"
                )
            elif target.element in _CLOCK_TYPES and _starts_as_postgres_reads(expr.text, target):
                # ('2024-01-01 12:00:00+0530' is a valid date and time to Postgres, and
                # '2024-01-01 12:00:00UTC': the engine said "invalid input syntax")
                message = (
                    f'{target.sql_name} literal "{expr.text[:60]}" is not supported: write it'
                    " in ISO 8601 as Postgres prints it (2024-01-31, 13:45:00,"
                    " 2024-01-31 13:45:00+01, 2024-01-31 13:45:00.123456+05:30)"
                )
            elif (
                target.element in _CLOCK_TYPES
                and message.startswith("invalid input syntax")
                and _POSTGRES_READS.search(expr.text)
            ):
                # Postgres reads far more ('Jan 1 2024', zone names, 'epoch'); what the
                # engine does not read is not "invalid" (it said so of 'Jan 1 2024')
                message = (
                    f'{target.sql_name} literal "{expr.text[:60]}" is not supported: write it'
                    " in ISO 8601 (2024-01-31, 13:45:00, 2024-01-31 13:45:00+01)"
                )
            elif (
                target.element in (FLOAT4, FLOAT8)
                and message.startswith("invalid input syntax")
                and _STRTOD_READS.search(expr.text)
            ):
                # ('0x10'::float8 is 16 to Postgres, '-nan' NaN: "invalid" was not its answer)
                message = (
                    f'{target.sql_name} literal "{expr.text[:60]}" is not supported: write it'
                    " in decimal (16, 1.5e3)"
                )
            elif message.startswith("unsupported type") and not evaluated(target):
                # (timetz, inet, ranges, ...: "unsupported type timetz" did not say what)
                message = (
                    f"a {target.sql_name} literal is not supported here: the engine does not"
                    f" read {target.sql_name} input"
                    + (
                        f" (it compares {target.sql_name} columns with = and <> only, and any"
                        " value cast to text)"
                        if target.element in TEXT_EQUAL_TYPES
                        else " (IS NULL and a cast to text are supported)"
                    )
                )
            raise error_at(message, expr.node) from None

    def _check_labels(self, target: PgType, value: Value) -> None:
        """enum_in's check of a literal of an enum (or of each element of an array of one):
        Postgres refuses a label its enum does not have when it plans the snapshot."""
        labels = self.enum_labels(target)
        if labels is None:  # (allow_enums: Postgres alone evaluates, and checks)
            return
        stack = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, tuple):
                stack.extend(v)
            elif v is not None and v not in labels:
                raise ValueError(
                    f'invalid input value for enum {target.element.name}: "{str(v)[:60]}"'
                )

    def domain_refusal(self, typ: PgType, node: ast.Node | None) -> WhereError | None:
        """The 400 for a value of a domain the engine does not read as its base type (over
        char(n), an enum, a text array, ...), naming the domain and what works instead;
        None when `typ` is no such domain. It had said "unsupported type dch" or, for an
        operator, "operator does not exist: dtxa @> unknown" (Postgres has it)."""
        if typ.array or typ.enum:
            return None
        for col in self.columns.values():
            if col.type_kind == "d" and not col.is_array and col.type_name == typ.name:
                base = col.domain_base or "?"
                base = base[1:] + "[]" if base.startswith("_") else base
                base = "character(n)" if base == "bpchar" else base
                return error_at(
                    f"values of domain {typ.name} (over {base}) are not supported here, but"
                    f" for IS NULL and a cast to text ({col.name}::text)",
                    node,
                )
        return None

    def _char_input(self, value: Value, node: ast.Node | None) -> Value:
        """charin of a literal, as the output text its byte has (how a row's "char" value
        reads): a `\\ooo` octal escape, else the first byte ('abc' is 'a', '' the zero
        byte); a byte with the high bit set prints as `\\ooo`, the zero byte as ''. The
        first byte of a non-ASCII character is known only in a UTF8 database."""
        if isinstance(value, tuple):
            return tuple(self._char_input(x, node) for x in value)
        if not isinstance(value, str):
            return value
        if re.fullmatch(r"\\[0-7]{3}", value):
            byte = int(value[1:], 8) & 0xFF
        elif not value:
            byte = 0
        elif value[0].isascii():
            byte = ord(value[0])
        elif self.collations.utf8:
            byte = value[0].encode()[0]
        else:
            raise error_at(
                'a non-ASCII "char" literal is not supported here (the database encoding '
                "is not known to be UTF8)",
                node,
            )
        if byte == 0:
            return ""
        return f"\\{byte:03o}" if byte >= 0x80 else chr(byte)

    def _name_input(self, value: Value, node: ast.Node | None) -> Value:
        """namein of a literal (an array's elements too): cut to NAMEDATALEN - 1 = 63 bytes
        in the database's encoding, at a character boundary (`nm = '<70 letters>'` equals
        the name of their first 63). Known exactly for ASCII and in a UTF8 database; a
        longer non-ASCII literal elsewhere is refused."""
        if isinstance(value, tuple):
            return tuple(self._name_input(x, node) for x in value)
        if not isinstance(value, str) or len(value) <= 15:  # (at most 4 bytes a character)
            return value
        if value.isascii():
            return value[:63]
        if not self.collations.utf8:
            raise error_at(
                "a name literal longer than 15 non-ASCII characters is not supported here "
                "(the database encoding, which decides where Postgres cuts it, is not known "
                "to be UTF8)",
                node,
            )
        cut = value.encode()[:63].decode(errors="ignore")  # (a split character is dropped)
        return cut

    def unify(self, exprs: Sequence[Expr], what: str, node: ast.Node) -> tuple[PgType, list[Expr]]:
        """Convert a list of values to one type (Postgres's `select_common_type`, as for
        UNION, CASE and COALESCE; see `select_common`)."""
        typ = UNKNOWN
        for e in exprs:
            common = self.common(typ, e.type, node, of_list=True)
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
        if col.generated and self.live:
            # (every change would lack it: the shape could only be rotated on each one)
            raise error_at(
                f"column {col.name} is a generated column, which PostgreSQL 15 does not"
                " replicate: a shape's where cannot read it",
                node,
            )
        self.referenced.add(col.name)
        typ = col.value_type
        parse = pgv.output_parser(typ)
        if typ.array:
            parse = bounds_refused(parse)
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
            if re.fullmatch(r"-?[0-9]{1,25}", text):
                n = int(text)
                if -(2**31) <= n < 2**31:
                    return const(INT4, n, node)
                if -(2**63) <= n < 2**63:
                    return const(INT8, n, node)
            # (more digits are numeric: and Python's int() refuses over 4300 of them)
            try:
                return const(NUMERIC, pg_numeric(Decimal(text)), node)
            except (InvalidOperation, ValueError):
                raise error_at("value overflows numeric format", node) from None
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
        raise constant_refusal(val, node)

    def _ParamRef(self, node: ast.ParamRef) -> Expr:
        n = node.number
        text = self.params.get(str(n))
        if text is None:
            raise error_at(f"parameter ${n} was not provided", node)
        expr = Expr(
            UNKNOWN, lambda _r, _c: text, is_const=True, value=text, text=text, param=n, node=node
        )
        return self.typed_param(expr)

    def typed_param(self, expr: Expr) -> Expr:
        """A `$n` whose type an earlier use decided, as a value of that type; another (or
        one not yet typed) as it is. Postgres types a parameter from its first use (the
        variable-parameter hooks of parse analysis) and reads each later `$n` as a value
        of that type: `i4 = $1 OR i8 = $1` is int4 = int4 OR int8 = int4, and `$1 BETWEEN
        i4 AND i8` (`$1 >= i4 AND $1 <= i8`, a copy of `$1` each) likewise. Each reference
        was untyped here, and typing the second as int8 was a 400 "type conflict for $1".
        Only the same unresolved node coerced to two types is Postgres's "inconsistent types
        deduced" (IN's left side against columns of two types): still the conflict."""
        if expr.param is None or expr.type != UNKNOWN:
            return expr
        typ = self.param_types.get(expr.param)
        return expr if typ is None else self._resolve_unknown(expr, typ)

    # -- boolean structure --

    def _BoolExpr(self, node: ast.BoolExpr) -> Expr:
        if node.boolop == BoolExprType.NOT_EXPR:
            arg = self.to_bool(self.compile(node.args[0]), "NOT")
            result = negation(arg, apply(BOOL, operator.not_, [arg], node))
            if arg.planner_folded and result.is_const:  # (see expr.planner_const)
                return const(BOOL, result.value, node, folded=True)
            return result
        what = "AND" if node.boolop == BoolExprType.AND_EXPR else "OR"
        decides = what == "OR"  # (the constant that decides it: false for AND, true for OR)
        args: list[Expr] = []
        for i, a in enumerate(node.args):
            arg = self.to_bool(self.compile(a), what)
            args.append(arg)
            if arg.value is decides and planner_const(arg):
                # Postgres's planner simplifies the arguments in order and stops at this
                # constant (simplify_and_arguments / simplify_or_arguments): those after it
                # are parsed (their types, literals, names checked) but never simplified,
                # so a constant among them that would fail, `false AND 2147483647 + 1 > 0`,
                # fails nothing (the engine refused it, "integer out of range").
                for rest in self._unsimplified(node.args[i + 1 :]):
                    self.to_bool(rest, what)
                break
        return and_expr(args, node) if what == "AND" else or_expr(args, node)

    def _unsimplified(self, nodes: Sequence[ast.Node]) -> list[Expr]:
        """`nodes` compiled as Postgres parses what its planner never simplifies: names,
        types and literals checked, constants that fail on evaluation no error
        (`expr.UNSIMPLIFIED`). Their values never matter: a constant before them decides."""
        token = UNSIMPLIFIED.set(True)
        try:
            return [self.compile(n) for n in nodes]
        finally:
            UNSIMPLIFIED.reset(token)

    def _NullTest(self, node: ast.NullTest) -> Expr:
        arg = self.compile(node.arg)
        if arg.type == UNKNOWN and arg.param is not None:
            arg = self.coerce(arg, TEXT)
        if self.live and self._row_valued(arg.type):
            # Postgres tests a composite's fields: ROW(NULL, NULL) IS NULL is true, and
            # IS NOT NULL false of ROW(1, NULL); the engine tested the value (its text `(,)`
            # is there), and live rows disagreed with the snapshot's.
            what = "IS NULL" if node.nulltesttype == NullTestType.IS_NULL else "IS NOT NULL"
            raise error_at(
                f"{what} of a composite value ({arg.type.name}) is not supported here:"
                f" Postgres tests each of its fields (ROW(NULL, NULL) IS NULL is true)",
                node,
            )
        f = arg.fn
        if node.nulltesttype == NullTestType.IS_NULL:
            return bool_expr(lambda row, cache: f(row, cache) is None, node)
        return bool_expr(lambda row, cache: f(row, cache) is not None, node)

    def _row_valued(self, typ: PgType) -> bool:
        """Whether values of `typ` are composites (or of a domain over one), whose IS [NOT]
        NULL tests their fields; an array of them is tested as a value. Decided by the type
        (pg_type.typtype 'c', or 'd' over 'c'), whichever column it is the scalar type of:
        an element of an array of composites (`cs[1]`, `COALESCE(cs[1], cs[2])`) has it too.
        (It had matched non-array columns only, and `cs[1] IS NULL` was evaluated by the
        datum live while Postgres tested its fields.) A where names no other composite
        type: casts to one and field selection are refused."""
        if typ.array or typ.enum:
            return False
        return any(
            col.base_type == typ.name
            and (col.type_kind == "c" or (col.type_kind == "d" and col.domain_base_kind == "c"))
            for col in self.columns.values()
        )

    def _BooleanTest(self, node: ast.BooleanTest) -> Expr:
        # (Postgres names the test written: "argument of IS NOT FALSE must be type boolean")
        what = "IS " + BoolTestType(node.booltesttype).name.removeprefix("IS_").replace("_", " ")
        arg = self.to_bool(self.compile(node.arg), what)
        f = arg.fn
        tests: dict[BoolTestType, Callable[[Value], bool]] = {
            BoolTestType.IS_TRUE: lambda v: v is True,
            BoolTestType.IS_NOT_TRUE: lambda v: v is not True,
            BoolTestType.IS_FALSE: lambda v: v is False,
            BoolTestType.IS_NOT_FALSE: lambda v: v is not False,
            BoolTestType.IS_UNKNOWN: lambda v: v is None,
            BoolTestType.IS_NOT_UNKNOWN: lambda v: v is not None,
        }
        test = tests[node.booltesttype]
        return bool_expr(lambda row, cache: test(f(row, cache)), node)

    # -- operators (operators.py) --

    def _A_Expr(self, node: ast.A_Expr) -> Expr:
        return operators.compile_operator(self, node)

    def padded(self, expr: Expr, node: ast.Node, what: str) -> Expr:
        """A char(n) column's value with its padding, as text (what its output function
        prints); other expressions unchanged. The engine keeps char(n) values trimmed, so a
        char(n) expression that is not a plain column is refused where padding matters."""
        if expr.type != BPCHAR:
            return expr
        if not (expr.raw and expr.column is not None):
            raise error_at(f"{what} on a char(n) expression is not supported", node)
        col = expr.column
        return Expr(TEXT, column_eval(col, identity), unary=identity, unary_of=col, node=node)

    # -- collations (see collation.py) --

    def _derive(self, node: ast.Node, expr: Expr) -> CollState:
        """The collation of `node` (compiled to `expr`), from its inputs' as
        assign_collations_walker derives it: a column's own, an explicit COLLATE's, else
        the inputs' merged (which raises on two different explicit ones), else for a text
        result the default. An untyped literal counts as default text wherever it is used
        (as a number it meets no operation that reads a collation)."""
        if isinstance(node, ast.ColumnRef):
            ident = column_ident(self.columns[node.fields[0].sval])  # (checked: one field)
            return NO_COLLATION if ident is None else CollState(IMPLICIT, ident)
        if isinstance(node, (ast.A_Const, ast.ParamRef)):  # (no inputs)
            return DEFAULT_IMPLICIT if _collatable(expr.type) else NO_COLLATION
        if isinstance(node, ast.CaseExpr):  # (the results', not the conditions' nor x's)
            outputs = [w.result for w in node.args] + [node.defresult]
            states = [self.states.get(id(n)) for n in outputs if n is not None]
            inputs = self._merged([s for s in states if s and s is not NO_COLLATION], node)
        else:
            inputs = self._merged(self._input_states(node), node)
        if isinstance(node, ast.CollateClause):
            return CollState(EXPLICIT, self._named_collation(node))
        if not _collatable(expr.type):
            return NO_COLLATION
        return inputs if inputs.strength > 0 else DEFAULT_IMPLICIT

    def _input_states(self, node: ast.Node) -> list[CollState]:
        """The states of the nearest compiled nodes under `node`."""
        out = []
        stack: list[object] = [v for _, v in child_nodes(node)]
        stack.reverse()
        while stack:  # (in the clause's order: an error names the first one first)
            n = stack.pop()
            if isinstance(n, tuple):
                stack.extend(reversed(n))
            elif isinstance(n, ast.Node):
                state = self.states.get(id(n))
                if state is None:
                    stack.extend(reversed([v for _, v in child_nodes(n)]))
                elif state is not NO_COLLATION:
                    out.append(state)
        return out

    def _merged(self, states: Sequence[CollState], node: ast.Node) -> CollState:
        try:
            return merge_all(states)
        except ExplicitMismatch as e:
            raise error_at(
                "collation mismatch between explicit collations "
                f"{self._quoted(e.a)} and {self._quoted(e.b)}",
                node,
            ) from None

    def _quoted(self, ident: Ident | None) -> str:
        return next((f'"{n}"' for n, oid in NAMED.items() if oid == ident), f'"{ident}"')

    def state_of(self, expr: Expr) -> CollState:
        """The collation `expr` carries: its own, or that of the node it was compiled from
        (an operand converted inside an operator keeps its node)."""
        if expr.coll is not None:
            return expr.coll
        if expr.node is not None:
            state = self.states.get(id(expr.node))
            if state is not None:
                return state
        if expr.type in STRING_TYPES or expr.type == UNKNOWN:
            return DEFAULT_IMPLICIT  # (text an operator made of a non-text operand)
        return NO_COLLATION

    def input_collation(self, operands: Sequence[Expr], node: ast.Node) -> CollState:
        """The collation an operation on `operands` uses (their states merged)."""
        return self._merged([self.state_of(e) for e in operands], node)

    def rules(self, state: CollState, what: str, node: ast.Node) -> TextRules:
        """The text rules of the collation `what` uses; refused on a conflict, where
        Postgres cannot tell which collation to use either."""
        if not self.live:
            # (only Postgres evaluates the clause, and it raises a conflict of implicit
            # collations only when it runs the comparison: never where its planner folds it
            # away, `LEAST(tde, tu) <= NULL`, nor on a shape without rows; it was a 400 there)
            return SQL_ONLY
        if state.strength == CONFLICT:
            raise self._conflict(state, what, node)
        return self.collations.rules(state.ident)

    def _conflict(self, state: CollState, what: str, node: ast.Node) -> WhereError:
        names = self.collations.name(state.ident), self.collations.name(state.other)
        return error_at(
            f"could not determine which collation to use for {what}: its operands have "
            f"different implicit collations ({names[0]} and {names[1]}); "
            "use the COLLATE clause to set the collation explicitly",
            node,
        )

    def _named_collation(self, node: ast.CollateClause) -> Ident:
        names = [n.sval for n in node.collname]
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        oid = NAMED.get(names[0]) if len(names) == 1 else None
        if oid is not None:
            return oid
        if names == [UCS_BASIC] and self.collations.utf8:
            return UCS_BASIC
        raise error_at(
            f'COLLATE "{".".join(names)}" is not supported (only "C", "POSIX", "default" and,'
            ' in a UTF8 database, "ucs_basic" are)',
            node,
        )

    def _CollateClause(self, node: ast.CollateClause) -> Expr:
        self._named_collation(node)
        arg = self.compile(node.arg)
        if not _collatable(arg.type):
            raise error_at(f"collations are not supported by type {arg.type.sql_name}", node)
        return with_node(arg, node)

    # -- collation-dependent text semantics --

    def fold(
        self, ignore_case: bool, node: ast.Node, state: CollState
    ) -> Callable[[str], str] | None:
        """ILIKE's `lower`, or None for LIKE; refused where the collation's is unknown."""
        if not ignore_case:
            return None
        return self.case_function("lower", node, state, "ILIKE")

    def case_function(
        self, which: str, node: ast.Node, state: CollState, what: str = ""
    ) -> Callable[[str], str]:
        what = what or which + "()"
        rules = self.rules(state, what if what == "ILIKE" else f"{what} function", node)
        kind = rules.case_map
        if kind is None:
            raise error_at(
                f"{what} is not supported under {rules.blocker} "
                "(live filtering reproduces case mapping only for C, POSIX and C.UTF-8 ctypes)",
                node,
            )
        return case_mapping(kind, which)

    def require_text_ordering(self, op: str, state: CollState, node: ast.Node) -> None:
        rules = self.rules(state, "string comparison", node)
        if not rules.ordering:
            raise error_at(
                f"text comparison {op} is not supported under {rules.blocker} "
                "(live filtering orders text by code point: C, POSIX and C.UTF-8 collations)",
                node,
            )

    def common(
        self, a: PgType, b: PgType, node: ast.Node, *, of_list: bool = False
    ) -> PgType | None:
        """The type an operator compares `a` and `b` as (`common_type`), or with `of_list`
        the type a list of values takes (`select_common`); refusing char(n) beside varchar,
        which Postgres compares as char(n) in an operator (`'ab '::varchar = 'ab  '::char(4)`
        is true) but as varchar in a list starting with the varchar."""
        pair = {a.element if a.array else a, b.element if b.array else b}
        if pair == {BPCHAR, VARCHAR}:
            raise error_at(
                "comparing char(n) with varchar is not supported (cast one side to text)", node
            )
        return select_common(a, b) if of_list else common_type(a, b)

    def compare_fn(
        self, name: str, typ: PgType, node: ast.Node, state: CollState
    ) -> Callable[[Value, Value], Value]:
        """The comparison `name` on `typ` under the collation `state` (its operands',
        `input_collation`), refused on text where the collation forbids it,
        and on json and jsonb (jsonb's `=` is not their text's: `'{"a":1}'` equals
        `'{"a": 1}'`; json has none): IN, NULLIF, IS DISTINCT FROM and ANY compared their
        text."""
        base = typ.element if typ.array else typ
        if base in JSON_TYPES:
            # (not said valid in Postgres: an operand may be a literal that is no JSON,
            # `'a' = ANY(jba)`, which Postgres rejects; `js = js2` says so, operators.py)
            raise error_at(f"JSON operators are not supported ({base.sql_name} {name})", node)
        if not compared_as_text(typ):
            raise self.domain_refusal(base, node) or error_at(
                f"comparing {base.sql_name} values ({name}) is not supported here: the engine"
                f" does not evaluate {base.sql_name}, and Postgres's = on it is not equality"
                " of the values' text",
                node,
            )
        if base in STRING_TYPES:
            if name in ("=", "<>"):
                self.require_text_equality(name, node, state)
            else:
                self.require_text_ordering(name, state, node)
        if base.enum and not typ.array and name not in ("=", "<>"):
            labels = self.enum_labels(base)
            if labels is not None:
                return enum_comparison(name, labels)
        return comparison_op(name, typ)

    def require_text_equality(self, op: str, node: ast.Node, state: CollState) -> None:
        """Byte equality (`=`, or LIKE, which needs no collation: a conflict is fine)."""
        if op == "LIKE" and state.strength == CONFLICT:
            return
        rules = self.rules(state, "string comparison", node)
        if not rules.equality:
            raise error_at(
                f"text {op} is not supported under {rules.blocker} "
                "(live filtering compares text byte for byte: deterministic collations only)",
                node,
            )

    # -- other expression nodes --

    def _TypeCast(self, node: ast.TypeCast) -> Expr:
        if isinstance(node.arg, ast.A_ArrayExpr) and not node.arg.elements:
            # `ARRAY[]::int4[]`: the cast gives the empty array its type (it was "cannot
            # determine type of empty array", Postgres's words for ARRAY[] alone)
            target = self._type_name(node.typeName)
            if target.array:
                return const(target, (), node)
        sized = string_length(node.typeName)
        if sized is not None:
            arg = self.compile(node.arg)
            return self._cast_to_length(arg, *sized, node)
        precision = numeric_typmod(node.typeName)
        if precision is not None:
            target = NUMERIC.array_of() if node.typeName.arrayBounds else NUMERIC
            return self._cast_to(node, target, precision)
        return self._cast_to(node, self._type_name(node.typeName))

    def _cast_to(
        self, node: ast.TypeCast, target: PgType, precision: tuple[int, int] | None = None
    ) -> Expr:
        """The cast `node` to `target` (to numeric(p, s) or an array of it: `precision`)."""
        if (
            target.array
            and isinstance(node.arg, ast.A_ArrayExpr)
            and not any(isinstance(e, ast.A_ArrayExpr) for e in node.arg.elements)
        ):
            return self._array_as(node.arg, target, node, precision)
        arg = self.cast(self.compile(node.arg), target, node)
        return arg if precision is None else self._cast_to_precision(arg, *precision, node)

    def _cast_to_precision(self, expr: Expr, precision: int, scale: int, node: ast.Node) -> Expr:
        """`x::numeric(p, s)` (`decimal(p, s)`, `numeric(p)`, arrays of them): the cast to
        numeric, then Postgres's typmod coercion numeric(numeric, int4) (an array's on each
        element): rounded to the scale, "numeric field overflow" past the precision
        (`semantics.numeric_typmod`). These were a 400 "casting to numeric(5,2) is not
        supported"; the coercion is immutable and strict, so a constant's is folded."""
        fit = numeric_typmod_fn(precision, scale)

        def each(value: Value) -> Value:
            if isinstance(value, tuple):
                return tuple(None if v is None else each(v) for v in value)
            assert isinstance(value, Decimal)
            return fit(value)

        return replace(apply(expr.type, each, [expr], node), column=None, raw=False)

    def _array_as(
        self,
        array: ast.A_ArrayExpr,
        target: PgType,
        node: ast.Node,
        precision: tuple[int, int] | None = None,
    ) -> Expr:
        """`ARRAY[...]::T[]`: Postgres's parse casts each item to T (transformArrayExpr,
        given the cast's type, coerces every element with an explicit cast) rather than
        building an array of the items' common type and casting that: `ARRAY['7']::int4[]`
        is an int4[] of the literal 7 (the engine refused it, "casting text[] to integer[]
        is not supported here": a policy's `ia @> ARRAY[{{n}}]::int4[]`), and
        `ARRAY['a']::int4[]` fails as the literal 'a'::int4 does; to numeric(p, s)[] each
        item is given the precision (a constant item that overflows fails the clause)."""
        element = target.element
        compiled = [self.compile(e) for e in array.elements]
        items = [self.cast(e, element, e.node or node) for e in compiled]
        if precision is not None:
            items = [self._cast_to_precision(e, *precision, e.node or node) for e in items]
        expr = apply_nullable(target, lambda *xs: tuple(xs), items, node)
        return mark(expr, all(coerced_folds(e, element) for e in compiled))

    def _cast_to_length(self, arg: Expr, target: PgType, n: int, node: ast.Node) -> Expr:
        """`x::varchar(n)` and `x::char(n)` (`::char` is char(1)): the value as text (its
        cast to text: `true` for a boolean, char(n)'s without the padding), cut to n
        characters as an explicit cast cuts it (varchar(), bpchar() with isExplicit: no
        error); char(n) pads to n, which the engine keeps trimmed as it keeps char(n)
        values. Characters are counted as Postgres counts them in a UTF8 database only.
        These were a 400 'type modifiers are not supported (bpchar)'."""
        if not self.collations.utf8 and n != UNLIMITED:
            raise error_at(
                f"casting to {target.sql_name}({n}) is not supported here (the database"
                " encoding, in which Postgres counts characters, is not known to be UTF8)",
                node,
            )
        if arg.type != UNKNOWN and self._function_cast(arg.type, TEXT) is not None:
            # A cast of the user's to text is not one to varchar or char(n): Postgres
            # converts through the type's output function there (CoerceViaIO, as `concat`
            # does), which is the value's text, unless a cast of the user's to the target
            # itself exists (refused). These were refused as a cast to text.
            self._refuse_function_cast(arg.type, target, node)
            as_text = self.cast_to_text(arg, VARCHAR, node)
        else:
            as_text = self.cast(arg, VARCHAR if arg.type == UNKNOWN else TEXT, node)

        def cut(value: Value) -> Value:
            text = str(value)[:n]
            return text.rstrip(" ") if target == BPCHAR else text

        return replace(apply(target, cut, [as_text], node), column=None, raw=False)

    def cast(self, arg: Expr, target: PgType, node: ast.Node) -> Expr:
        """An explicit cast: implicit conversions, text output, text input, numeric casts."""
        src = arg.type
        if src == target:
            return replace(arg, node=node)
        if src == UNKNOWN:
            return replace(self.coerce(arg, target), node=node)
        self._refuse_function_cast(src, target, node)
        if target in (TEXT, VARCHAR):
            return self.cast_to_text(arg, target, node)
        if src in STRING_TYPES:
            parser = text_input_cast(target)
            if target.element.enum:
                parser = self._enum_input(parser, target, node)
            if src == BPCHAR and not _skips_trailing_spaces(target):
                return self._padded_cast(arg, target, parser, node)
            return replace(apply(target, parser, [arg], node), column=None)
        if (src, target) in EXPLICIT_CASTS:
            return replace(apply(target, EXPLICIT_CASTS[(src, target)], [arg], node), column=None)
        if (src, target) in IMPLICIT_CASTS or (src.array and target.array):
            try:
                return self.coerce(arg, target)
            except WhereError:
                pass
        if _postgres_casts(src, target):
            raise not_evaluated(f"casting {src.sql_name} to {target.sql_name}", node)
        raise error_at(f"cannot cast type {src.sql_name} to {target.sql_name}", node)

    def _enum_input(
        self, parser: Callable[[str], Value], target: PgType, node: ast.Node
    ) -> Callable[[str], Value]:
        """A row's text cast to an enum (or an array of one): enum_in fails on a text that
        is no label (the engine took any text for a value: `t::mood IS NOT NULL` matched
        rows Postgres fails on). A text that is no label the clause was compiled with may
        be one added since (ALTER TYPE ... ADD VALUE): Postgres is asked about the row."""
        labels = self.enum_labels(target)
        if labels is None:
            if not self.live:
                return parser
            raise error_at(
                f"casting to {target.element.name} is not supported here (its labels are"
                " not known)",
                node,
            )
        known = frozenset(labels)
        name = target.element.name

        def check(value: Value) -> None:
            if isinstance(value, tuple):
                for item in value:
                    check(item)
            elif value is not None and value not in known:
                raise pgv.UnrepresentableValue(
                    f"a text cast to enum {name} that is none of the labels the clause was"
                    " compiled with: Postgres tells whether it is one"
                )

        def parse(text: str) -> Value:
            value = parser(text)
            check(value)
            return value

        return parse

    def _padded_cast(
        self, arg: Expr, target: PgType, parser: Callable[[str], Value], node: ast.Node
    ) -> Expr:
        """char(n) to a type whose input function reads trailing spaces (bytea, uuid, an
        enum): Postgres casts through char(n)'s output, padded to n ('a'::char(3)::bytea
        is \\x612020, 'ok'::char(3)::mood fails), where the engine keeps char(n) values
        trimmed (it matched `ch::bytea = '\\x61'` and `ch::mood = 'ok'`). A char(n)
        column's text is read as the row carries it, padded; any other char(n) expression
        is refused."""
        if arg.raw and arg.column is not None:
            return Expr(target, column_eval(arg.column, parser), node=node)
        raise error_at(
            f"casting a char(n) expression to {target.sql_name} is not supported here"
            " (Postgres casts its text padded with spaces; cast it to text first)",
            node,
        )

    def _refuse_function_cast(self, src: PgType, target: PgType, node: ast.Node) -> None:
        """Refuse a cast (explicit, or `||`'s cast to text) from `src` to `target` where the
        database has a cast of a user's between them (`CREATE CAST (mood AS text) WITH
        FUNCTION ...`, `TableInfo.casts`): Postgres runs that function (the snapshot's rows
        are its answer), where the engine reads the value's text or parses it as the type's
        input does, so live rows were judged otherwise (fidelity 08:50: `v::text = 'happy'`
        on such an enum). Looked up by type name (a name shared with another type refuses
        more, never less): the array types' own (`mood[]` to text), the elements' for an
        array to an array, and a domain's base type's (a domain's casts are its base's). A
        clause only Postgres evaluates (a subset) keeps it."""
        found = self._function_cast(src, target)
        if found is not None:
            pair, func = found
            raise error_at(
                f"casting {src.sql_name} to {target.sql_name} is not supported here:"
                f" the database has its own cast from {pair[0]} to {pair[1]} (WITH"
                f" FUNCTION {func}), which Postgres runs and the engine does not",
                node,
            )

    def _function_cast(self, src: PgType, target: PgType) -> tuple[tuple[str, str], str] | None:
        """The (source, target) typnames and function of a cast of a user's from `src` to
        `target` (see `_refuse_function_cast`), None when there is none (or the clause is
        Postgres's alone)."""
        casts = getattr(self.columns, "function_casts", None)
        if not casts or not self.live:
            return None

        def names(t: PgType) -> set[str]:
            scalar = {t.name}
            for col in self.columns.values():
                if col.base_type == t.name and col.domain_base is not None:
                    scalar.add(col.domain_base)
            return {"_" + n for n in scalar} if t.array else scalar

        pairs = {(a, b) for a in names(src) for b in names(target)}
        if src.array and target.array:
            pairs |= {(a, b) for a in names(src.element) for b in names(target.element)}
        for pair in sorted(pairs):
            func = casts.get(pair)
            if func is not None:
                return pair, func
        return None

    def cast_to_text(self, arg: Expr, target: PgType, node: ast.Node) -> Expr:
        src = arg.type
        self._refuse_function_cast(src, target, node)
        if src == CHAR and not (arg.raw and arg.column is not None):
            return replace(self.coerce(arg, TEXT), type=target, node=node)  # (char_text)
        if src == JSONB and _is_json_field(arg.node):  # (its text is jsonb_out's)
            return replace(apply(target, identity, [arg], node), column=None, raw=False)
        if src in JSON_TYPES and not arg.raw:
            raise error_at(f"cannot cast type {src.sql_name} to {target.sql_name}", node)
        if arg.raw and arg.column is not None:
            col = arg.column
            func: Callable[[str], Value] = identity
            # the cast is the type's (a domain's: its base type's) cast function where it
            # has one (pg_cast), else its output function: the column's text
            cast_from = self._cast_source(col, node)
            if cast_from == BOOL:
                func = bool_text_from_raw
            elif cast_from == BPCHAR:
                func = pgv.output_parser(BPCHAR)
            elif cast_from == INET:
                func = inet_text
            fn = column_eval(col, func)
            # Only a value that is the column's own text may stand for the column (an outer
            # cast reads the column again, an index keys on its text): char(n) to text trims
            # the padding, so ch::text::varchar read 'ß   ' where Postgres has 'ß' (seed 933)
            exact = func is identity and (src in STRING_TYPES or src.enum)
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
        if out is None and self._row_valued(src):
            # (`cs[1]::text`: Postgres casts any composite to text; "cannot cast type pair to
            # text" said it could not. A composite column's own text, `c::text`, is served.)
            raise error_at(
                f"casting an element of a composite array ({src.name}) to {target.sql_name}"
                " is not supported here: the engine reads a composite's text only from its"
                " own column (c::text), not from an array's elements (cs[1]::text)",
                node,
            )
        if out is None:
            raise error_at(f"cannot cast type {src.sql_name} to {target.sql_name}", node)
        _refuse_lost_padding(src, node)
        if src == BOOL:
            out = bool_text
        return replace(apply(target, out, [arg], node), column=None)

    def _cast_source(self, column: str, node: ast.Node) -> PgType:
        """The type whose cast to text applies to `column`: its own, or for a domain (not
        an array of one, whose text is its elements' output) the type under it."""
        col = self.columns[column]
        if col.type_kind != "d" or col.is_array:
            return col.pg_type
        if col.domain_base is None:
            raise error_at(
                f"casting a value of domain {col.type_name} is not supported here (its base"
                " type is not known)",
                node,
            )
        if col.domain_base.startswith("_"):  # (a domain over an array: array_out)
            return PgType(col.domain_base[1:], array=True)
        return PgType(col.domain_base)

    def as_text(self, expr: Expr) -> Expr:
        if expr.type in STRING_TYPES or expr.type == UNKNOWN or expr.type == CHAR:
            return self.coerce(expr, TEXT)  # ("char"'s output text is its text: charout)
        if expr.raw and expr.column is not None:
            # (a column's text as Postgres wrote it, whatever its type: `concat(ttz)` was
            # "cannot convert timetz to text", which Postgres does)
            return Expr(TEXT, column_eval(expr.column, identity), node=expr.node)
        out = text_output(expr.type)
        if out is None:
            raise error_at(f"cannot convert {expr.type.sql_name} to text", expr.node)
        _refuse_lost_padding(expr.type, expr.node)
        return apply(TEXT, out, [expr], expr.node)

    def _type_name(self, tn: ast.TypeName) -> PgType:
        names = [n.sval for n in tn.names]
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        if len(names) == 2 and any(
            col.is_enum and [col.type_schema, col.base_type] == names
            for col in self.columns.values()
        ):
            names = names[1:]  # (a column's enum, named with its schema)
        if tn.typmods:
            raise typmods_refused(names[-1], tn)
        if len(names) != 1 or tn.setof or tn.pct_type:
            raise error_at(f"unsupported type {'.'.join(names)}", tn)
        name = names[0]
        if name in CAST_TARGET_NAMES:
            typ = PgType(name)
        elif any(col.is_enum and col.base_type == name for col in self.columns.values()):
            typ = PgType(name, enum=True)
            if self.enum_refused(typ):
                raise error_at(f"unsupported type {name}", tn)
        else:
            raise type_refusal(names, tn)
        return typ.array_of() if tn.arrayBounds else typ

    def _A_ArrayExpr(self, node: ast.A_ArrayExpr) -> Expr:
        elements = [self.compile(e) for e in (node.elements or ())]
        if not elements:
            raise error_at("cannot determine type of empty array", node)
        domains = {self._domain_of(e.node) for e in elements}
        if len(domains) == 1 and None not in domains:
            # Every item of one domain: the array is of the domain, not of its base type
            # (select_common_type keeps a type all items share), and `ARRAY[dm] = ARRAY[1]`
            # does not exist in Postgres. Items of other types make it the base type's.
            raise error_at(
                f"an ARRAY of domain {domains.pop()} values is not supported (cast the"
                " column to its base type)",
                node,
            )
        if any(e.type.array for e in elements):
            typ, elements = self.unify(elements, "ARRAY", node)
            return apply_nullable(typ, array_of_arrays, elements, node)
        typ, elements = self.unify(elements, "ARRAY", node)
        return apply_nullable(typ.array_of(), lambda *xs: tuple(xs), elements, node)

    def _domain_of(self, node: ast.Node | None) -> str | None:
        """The domain Postgres types `node` as, where the engine reads it as the domain's
        base type (`value_type`): a column of a domain, and a COALESCE, GREATEST or LEAST
        whose arguments all have that one domain (select_common_type keeps a type all its
        inputs share exactly, and smashes domains to their base types otherwise:
        COALESCE(dm, dm) is dm, COALESCE(dm, 1) and NULLIF(dm, dm) are int4). The engine
        had only known the column, so ARRAY[COALESCE(dm, dm)] = ARRAY[1] was accepted and
        the snapshot then failed ('operator does not exist: dm[] = integer[]')."""
        if isinstance(node, ast.ColumnRef):
            parts = [getattr(f, "sval", "*") for f in node.fields]
            col = self.columns.get(parts[0]) if len(parts) == 1 else None
            return col.type_name if col is not None and col.type_kind == "d" else None
        if isinstance(node, ast.CoalesceExpr | ast.MinMaxExpr) and node.args:
            domains = {self._domain_of(a) for a in node.args}
            return domains.pop() if len(domains) == 1 else None
        return None

    def _subscript_refusal(self, typ: PgType, node: ast.Node) -> WhereError:
        """The 400 for a subscript of a value that is no array: the domain's refusal for a
        domain over an array, NOT_EVALUATED for jsonb and name (Postgres subscripts them),
        else Postgres's words. It had said "A_Indices is not supported here" to all."""
        refusal = self.domain_refusal(typ, node)
        if refusal is not None:
            return refusal
        if typ in (JSONB, NAME):
            return not_evaluated(f"a subscript of {typ.sql_name}", node)
        return error_at(
            f"cannot subscript type {typ.sql_name} because it does not support subscripting",
            node,
        )

    def _A_Indirection(self, node: ast.A_Indirection) -> Expr:
        """Subscripts, all applied at once as Postgres does: one per dimension for an element
        (`a[2][1]`; NULL with more or fewer), and if any is a slice all are (`a[1:2][1]` is
        `a[1:2][1:1]`), cutting one dimension each (the engine had cut the first dimension
        once per subscript, and refused `a[2][1]`)."""
        arg = self.compile(node.arg)
        inds = list(node.indirection)
        for ind in inds:
            if isinstance(ind, ast.String):  # (`(c).a`, `(cs[1]).a`: "String" said nothing)
                raise error_at(f"field selection (.{ind.sval}) is not supported here", node)
            if not isinstance(ind, ast.A_Indices):
                raise error_at(f"{construct_name(ind)} is not supported here", node)
            if not arg.type.array:
                raise self._subscript_refusal(arg.type, node)
        if len(inds) > MAX_DIMENSIONS:
            raise error_at(
                f"number of array dimensions ({len(inds)}) exceeds the maximum allowed"
                f" ({MAX_DIMENSIONS})",
                node,
            )

        def index(e: Expr) -> Expr:
            # (Postgres converts a subscript to integer by an assignment cast: int8, numeric
            # and floats as their cast to int4 converts them, `a[1.5]` is `a[2]`; the engine
            # said "cannot convert numeric to integer")
            if e.type in NUMERIC_ORDER:
                return self.cast(e, INT4, e.node or node)
            if e.type != UNKNOWN:  # (Postgres's words: `ia[true]` said "cannot convert")
                raise error_at("array subscript must have type integer", e.node or node)
            return self.coerce(e, INT4)

        if not any(ind.is_slice for ind in inds):
            idx = [index(self.compile(ind.uidx)) for ind in inds]

            def element(a: Value, *i: Value) -> Value:
                return None if a is None or None in i else array_element(a, i)

            return _subscripted(arg.type.element, element, arg, idx, node)
        one = const(INT4, 1)
        # (lower, upper) per subscript, None where omitted (the array's own bound); a
        # subscript without a colon is 1 to it
        pairs = [
            (
                index(self.compile(ind.lidx)) if ind.lidx is not None else None,
                index(self.compile(ind.uidx)) if ind.uidx is not None else None,
            )
            if ind.is_slice
            else (one, index(self.compile(ind.uidx)))
            for ind in inds
        ]
        given = [b is not None for pair in pairs for b in pair]
        exprs = [b for pair in pairs for b in pair if b is not None]

        def sliced(a: Value, *values: Value) -> Value:
            if a is None or None in values:  # (a NULL bound written: NULL)
                return None
            it = iter(values)
            flat = [next(it) if g else None for g in given]
            return array_slices(a, tuple(zip(flat[::2], flat[1::2], strict=True)))

        return _subscripted(arg.type, sliced, arg, exprs, node)

    def _CoalesceExpr(self, node: ast.CoalesceExpr) -> Expr:
        compiled: list[Expr] = []
        for i, a in enumerate(node.args):
            compiled.append(self.compile(a))
            if planner_const(compiled[-1]) and compiled[-1].value is not None:
                # Postgres's planner simplifies the arguments in order up to the first
                # constant that is not NULL, and drops the rest unsimplified (as an AND's
                # after a constant false, `_BoolExpr`): `coalesce(true, 1 / 0 = 1)`.
                compiled += self._unsimplified(node.args[i + 1 :])
                break
        typ, args = self.unify(compiled, "COALESCE", node)
        fns = [a.fn for a in args]

        def coalesce(row: Row, cache: Cache) -> Value:
            for f in fns:
                v = f(row, cache)
                if v is not None:
                    return v
            return None

        return Expr(typ, coalesce, node=node)

    def _MinMaxExpr(self, node: ast.MinMaxExpr) -> Expr:
        compiled = [self.compile(a) for a in node.args]
        state = self.input_collation(compiled, node)
        typ, args = self.unify(compiled, "GREATEST/LEAST", node)
        if self._row_valued(typ):
            # (`GREATEST(cs[1], cs[2])`: Postgres has an order on composites, field by field;
            # "could not identify a comparison function" said it had none)
            raise error_at(
                f"GREATEST/LEAST of composite values ({typ.name}) is not supported here:"
                " Postgres compares them field by field, which the engine does not evaluate",
                node,
            )
        if not self.ordered(typ):
            raise error_at(
                f"could not identify a comparison function for type {typ.sql_name}", node
            )
        fns = [a.fn for a in args]
        greatest = node.op == MinMaxOp.IS_GREATEST
        better = self.compare_fn(">" if greatest else "<", typ, node, state)

        def minmax(row: Row, cache: Cache) -> Value:
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

    def _SQLValueFunction(self, node: ast.Node) -> Expr:
        raise error_at(
            "non-deterministic functions (CURRENT_DATE, CURRENT_TIMESTAMP, ...) are not supported",
            node,
        )

    def _CaseExpr(self, node: ast.CaseExpr) -> Expr:
        """`CASE WHEN c THEN r ... ELSE d END` and `CASE x WHEN v THEN r ... END` (each WHEN
        is then `x = v`, an untyped x read as text: transformCaseExpr). The conditions run in
        order and only the chosen result runs (a row where another result would fail does
        not fail). The result type is select_common_type's of the ELSE (first) and the
        results. Postgres's planner simplifies the conditions in order (eval_const_expressions):
        an arm whose condition is a constant false or NULL is dropped with its result
        unsimplified, a constant true one ends the CASE (its result is the ELSE; what
        follows is parsed but never simplified); a CASE left with no arm is its ELSE, a
        constant if that is one. The result's collation is the results' (not the
        conditions' nor x's). This was a 400 "CASE expressions are not supported"."""
        # Parsed first, as Postgres parses the whole CASE (its types, "cannot be matched")
        # before its planner folds a constant that fails (`1 / 0`).
        token = UNSIMPLIFIED.set(True)
        try:
            for when in node.args:
                self._case_condition(node, when)
            outputs = [w.result for w in node.args]
            parsed = [self.compile(n) for n in [node.defresult, *outputs] if n is not None]
            self.unify(parsed, "CASE", node)
        finally:
            UNSIMPLIFIED.reset(token)
        dead = False  # past a constant true condition
        arms: list[tuple[Expr, int]] = []  # (condition, result's index) of the kept arms
        results: list[Expr] = []
        default_index: int | None = None
        for when in node.args:
            if dead:
                token = UNSIMPLIFIED.set(True)
                try:
                    self._case_condition(node, when)  # (parsed: types, names checked)
                    results.append(self.compile(when.result))
                finally:
                    UNSIMPLIFIED.reset(token)
                continue
            cond = self._case_condition(node, when)
            if planner_const(cond) and cond.value is not True:  # dropped
                results.append(self._unsimplified([when.result])[0])
                continue
            results.append(self.compile(when.result))
            if planner_const(cond):  # constant true: the rest is never reached
                dead, default_index = True, len(results) - 1
            else:
                arms.append((cond, len(results) - 1))
        if node.defresult is not None:
            if dead:
                results.append(self._unsimplified([node.defresult])[0])
            else:
                results.append(self.compile(node.defresult))
                default_index = len(results) - 1
        # (the ELSE first: select_common_type's order, and the words of its errors)
        order = [len(results) - 1, *range(len(results) - 1)]
        if node.defresult is None:
            order = list(range(len(results)))
        typ, coerced = self.unify([results[i] for i in order], "CASE", node)
        by_index: dict[int, Expr] = dict(zip(order, coerced, strict=True))
        default: Expr | None = None if default_index is None else by_index[default_index]
        if not arms:
            src = results[default_index] if default_index is not None else None
            if default is None:
                return const(typ, None, node, folded=True)
            if default.is_const and coerced_folds(src, typ):
                return const(typ, default.value, node, folded=True)
            return replace(default, node=node, column=None, raw=False)
        tests = [(cond.fn, by_index[i].fn) for cond, i in arms]
        otherwise = default.fn if default is not None else None

        def case(row: Row, cache: Cache) -> Value:
            for test, result in tests:
                if test(row, cache) is True:
                    return result(row, cache)
            return None if otherwise is None else otherwise(row, cache)

        return Expr(typ, case, node=node)

    def _case_condition(self, case: ast.CaseExpr, when: ast.CaseWhen) -> Expr:
        """A WHEN's condition, boolean: `x = v` for `CASE x WHEN v`."""
        if case.arg is None:
            return self.to_bool(self.compile(when.expr), "CASE/WHEN")
        arg: ast.Node = case.arg
        if self.compile(arg).type == UNKNOWN:
            arg = ast.TypeCast(arg=arg, typeName=ast.TypeName(names=(ast.String("text"),)))
        test = ast.A_Expr(
            kind=A_Expr_Kind.AEXPR_OP,
            name=(ast.String("="),),
            lexpr=arg,
            rexpr=when.expr,
            location=getattr(when, "location", None),
        )
        self.synthesized.append(test)  # (alive while compiled: ids key self.compiled)
        return self.to_bool(self.compile(test), "CASE/WHEN")

    def _RowExpr(self, node: ast.Node) -> Expr:
        raise error_at("row expressions are only supported on the left of IN (SELECT ...)", node)


def _is_json_field(node: ast.Node | None) -> bool:
    """`node` is `x -> key` (operators._json_field: a jsonb value whose text is jsonb_out's)."""
    return (
        isinstance(node, ast.A_Expr)
        and node.kind == A_Expr_Kind.AEXPR_OP
        and [getattr(n, "sval", "") for n in node.name] == ["->"]
    )


def _collatable(typ: PgType) -> bool:
    """A type with a collation (or an untyped literal, which takes one as text)."""
    return typ in STRING_TYPES or typ == UNKNOWN or (typ.array and typ.element in STRING_TYPES)


#: Types whose input functions skip trailing (ASCII) spaces, so that a char(n) value cast to
#: one reads the same trimmed as Postgres reads it padded (array_in too, after the braces).
_SPACE_BLIND = frozenset(
    {*NUMERIC_ORDER, BOOL, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TEXT, VARCHAR, NAME}
)


def _skips_trailing_spaces(target: PgType) -> bool:
    return target.array or target in _SPACE_BLIND


def _refuse_lost_padding(typ: PgType, node: ast.Node | None) -> None:
    """A 400 for the text of an array of char(n) values built in the clause (`ARRAY[ch]`,
    `ARRAY['a'::char(3)]`): Postgres's array output keeps each element's padding
    (`{"ab  "}`), which the engine's trimmed char(n) values no longer have (it wrote
    `{ab}`). A char(n)[] column's own text is read as Postgres wrote it."""
    if typ.array and typ.element == BPCHAR:
        raise error_at(
            "the text of an array of char(n) values is not supported here (Postgres keeps"
            " each element's padding; cast the elements to text first)",
            node,
        )


def _subscripted(
    typ: PgType, func: Callable[..., Value], arg: Expr, subs: list[Expr], node: ast.Node
) -> Expr:
    """`func(array, *subscripts)`, the subscripts evaluated only for an array that is not
    NULL: Postgres skips them for a NULL one (ExecInitSubscriptingRef's JUMP_IF_NULL), so
    `ia[f8]` is NULL where ia is, even where f8 is past integer's range (the engine
    evaluated the subscript first and said the row failed)."""
    if arg.is_const and all(s.is_const for s in subs):
        return apply_nullable(typ, func, [arg, *subs], node)
    array_fn, sub_fns = arg.fn, [s.fn for s in subs]

    def run(row: Row, cache: Cache) -> Value:
        array = array_fn(row, cache)
        if array is None:
            return None
        return func(array, *(f(row, cache) for f in sub_fns))

    return Expr(typ, run, node=node)
