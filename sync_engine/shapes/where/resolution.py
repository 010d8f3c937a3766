"""Postgres's type resolution rules, as the compiler applies them to `PgType`s.

Groups of types that behave alike (integers, strings, ...), the common type two operands
convert to, and whether an operand fits an operator's argument type. An untyped literal or
parameter is `UNKNOWN` until its context decides its type.
"""

from __future__ import annotations

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
    JSON,
    JSONB,
    NAME,
    NUMERIC,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
    UUID,
    VARCHAR,
    PgType,
)

INT_TYPES = (INT2, INT4, INT8)

NUMERIC_ORDER = (INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8)
"""Numeric types from narrowest to widest: the common type of two is the later one."""

FLOAT_TYPES = frozenset({FLOAT4, FLOAT8, NUMERIC})
"""Types with NaN, which Postgres orders above every number."""

STRING_TYPES = frozenset({TEXT, VARCHAR, BPCHAR, NAME})

DATETIME_TYPES = frozenset({DATE, TIMESTAMP, TIMESTAMPTZ})

ORDERED_TYPES = frozenset(
    {
        *NUMERIC_ORDER,
        *STRING_TYPES,
        UUID,
        DATE,
        TIME,
        TIMESTAMP,
        TIMESTAMPTZ,
        INTERVAL,
        BOOL,
        BYTEA,
        CHAR,  # (by its byte, unsigned: `semantics.char_byte`)
    }
)

TEMPORAL_TYPES = frozenset({DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL})

CAST_TARGETS = frozenset({*NUMERIC_ORDER, *TEMPORAL_TYPES, BOOL, BYTEA, TEXT, VARCHAR, UUID})
"""Scalar types a clause may name in a cast (`x::int8`, `CAST(x AS date)`, `int8(x)`)."""

CAST_TARGET_NAMES = frozenset(t.name for t in CAST_TARGETS)

JSON_TYPES = frozenset({JSON, JSONB})

#: Types the engine does not evaluate whose values it still compares with `=` and `<>` (and
#: IN, IS DISTINCT FROM, NULLIF, ANY, arrays of them) as the text Postgres wrote for them:
#: each value has one output text, and the type's `=` is equality of values.
TEXT_EQUAL_TYPES = frozenset(
    PgType(name)
    for name in (
        *("timetz", "inet", "cidr", "macaddr", "macaddr8", "money", "bit", "varbit"),
        *("pg_lsn", "oid"),
    )
)


def evaluated(typ: PgType) -> bool:
    """Whether the engine evaluates values of `typ` (or of its elements) itself."""
    base = typ.element if typ.array else typ
    return base in ORDERED_TYPES or base == UNKNOWN or base.enum


def compared_as_text(typ: PgType) -> bool:
    """Whether `=` on `typ` (or its elements) is one the engine may compute: a type it
    evaluates, or one whose `=` is equality of its text (`TEXT_EQUAL_TYPES`). Any other
    type's `=` differs from its text's: numrange's `[1.0,2.0)` = `[1,2)`, a composite's by
    its fields' `=`, circle's by area, point's `<>` within 1e-6 (live rows of such a
    comparison were compared as text: wrong answers)."""
    base = typ.element if typ.array else typ
    return evaluated(typ) or base in TEXT_EQUAL_TYPES or base in JSON_TYPES


def common_numeric(a: PgType, b: PgType) -> PgType:
    if FLOAT4 in (a, b) and (a != b) and FLOAT8 not in (a, b):
        return FLOAT8
    return max(a, b, key=NUMERIC_ORDER.index)


def common_scalar(a: PgType, b: PgType) -> PgType | None:
    """The type both operands of an operator convert to, following Postgres's implicit
    casts (pg_cast's castcontext 'i')."""
    if a == b:
        return TEXT if a in (VARCHAR, NAME) else a
    if UNKNOWN in (a, b):
        # (varchar has no operators of its own: `$1 = vc` is texteq, $1 typed text, as
        # Postgres types it; `$1 IN (t, vc)` was a 400 "type conflict for $1")
        known = b if a == UNKNOWN else a
        return TEXT if known == VARCHAR else known
    if a in NUMERIC_ORDER and b in NUMERIC_ORDER:
        return common_numeric(a, b)
    if a in STRING_TYPES and b in STRING_TYPES:
        return TEXT
    if {a, b} & {CHAR} and {a, b} - {CHAR} <= STRING_TYPES:
        # "char" -> text is implicit, "char" -> char(n)/varchar/name are not: `c1 = ch` is
        # text = text (ch without its trailing blanks), `c1 = nm` texteqname
        return TEXT
    if {a, b} == {TIME, INTERVAL}:
        return INTERVAL  # (time -> interval is implicit, interval -> time is not)
    if a in DATETIME_TYPES and b in DATETIME_TYPES:
        return TIMESTAMPTZ if TIMESTAMPTZ in (a, b) else TIMESTAMP
    return None


def common_type(a: PgType, b: PgType) -> PgType | None:
    if a.array and b.array:
        elem = common_scalar(a.element, b.element)
        return None if elem is None else elem.array_of()
    if a.array and b == UNKNOWN:
        return a
    if b.array and a == UNKNOWN:
        return b
    if a.array or b.array:
        return None
    return common_scalar(a, b)


def select_common(a: PgType, b: PgType) -> PgType | None:
    """Postgres's `select_common_type`, one more type at a time: how COALESCE, GREATEST/LEAST,
    ARRAY[...], array concatenation and IN's list of constants pick one type. It differs
    from an operator's resolution (`common_type`): the earlier type stays unless the later
    one converts from it implicitly and not back. So numbers widen along NUMERIC_ORDER with
    float4 beside numeric staying float4 (`f4 IN (1.5, 2.1)` compares as float4, where
    `f4 = 2.1` compares as float8), and char(n) or varchar first keeps the list so
    (`COALESCE(ch, t)` is char(n); `COALESCE(t, ch)` is text)."""
    if a.array and b.array:
        elem = select_common(a.element, b.element)
        return None if elem is None else elem.array_of()
    if a.array or b.array:
        return common_type(a, b)
    if a == b or UNKNOWN in (a, b):
        return b if a == UNKNOWN else a  # (`COALESCE(vc, 'x')` stays varchar)
    if b == NAME and a in (VARCHAR, BPCHAR):
        # (varchar and char(n) convert to name implicitly, name to them only by assignment:
        # COALESCE(vc, nm) is name; text, the category's preferred type, stays text)
        return NAME
    if a in NUMERIC_ORDER and b in NUMERIC_ORDER:
        return max(a, b, key=NUMERIC_ORDER.index)
    if a == NAME and b in STRING_TYPES:
        # (name first stays name: COALESCE(nm, t) is name, t's value cut to 63 bytes; the
        # engine had made it text and matched a 70-letter t that Postgres cuts)
        return NAME
    if a in (BPCHAR, VARCHAR) and b in STRING_TYPES:
        # (varchar kept too: ARRAY[vc, t] is varchar[], and `ch = ANY(ARRAY[vc, t])`
        # compares as char(n), which `Compiler.common` then refuses as for `ch = vc`)
        return a
    if a != b and (CHAR in (a, b) or {a, b} == {TIME, INTERVAL}):
        # (select_common_type wants one type category: "char" (Z) beside text (S), time (D)
        # beside interval (T) "cannot be matched", though an operator converts them)
        return None
    return common_type(a, b)


def fits_operand(actual: PgType, wanted: PgType, *, time_as_interval: bool = False) -> bool:
    """Whether an operand of type `actual` implicitly converts to the operator's `wanted`
    (with `time_as_interval`, time -> interval too: `tm * 2` is interval * float8)."""
    if actual == wanted:
        return True
    if time_as_interval and wanted == INTERVAL:
        return actual == TIME
    if wanted == INT4:
        return actual == INT2
    if wanted == FLOAT8:
        return actual in NUMERIC_ORDER
    return False
