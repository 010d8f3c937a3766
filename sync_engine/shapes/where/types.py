"""Postgres type names as the compiler sees them, and Postgres's type resolution rules.

Types are strings: scalar names (`int4`, `text`, ...), `X[]` for arrays, `enum:NAME` for enum
types and `unknown` for an untyped literal or parameter whose context decides its type.
"""

from __future__ import annotations

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo

INT_TYPES = ("int2", "int4", "int8")


NUMERIC_ORDER = ("int2", "int4", "int8", "numeric", "float4", "float8")


FLOAT_TYPES = frozenset({"float4", "float8", "numeric"})


STRING_TYPES = frozenset({"text", "varchar", "bpchar", "name"})


DATETIME_TYPES = frozenset({"date", "timestamp", "timestamptz"})


ORDERED_TYPES = frozenset(
    {
        *NUMERIC_ORDER,
        *STRING_TYPES,
        "uuid",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "interval",
        "bool",
        "bytea",
    }
)


CAST_TARGETS = frozenset(
    {
        "bool",
        "bytea",
        "date",
        "float4",
        "float8",
        "int2",
        "int4",
        "int8",
        "numeric",
        "text",
        "time",
        "timestamp",
        "timestamptz",
        "uuid",
        "varchar",
        "interval",
    }
)


TEMPORAL_TYPES = frozenset({"date", "time", "timestamp", "timestamptz", "interval"})


JSON_TYPES = frozenset({"json", "jsonb"})


def elem_type(type_name: str) -> str:
    return type_name[:-2]


def is_array(type_name: str) -> bool:
    return type_name.endswith("[]")


def is_enum(type_name: str) -> bool:
    return type_name.startswith("enum:")


def display(type_name: str) -> str:
    if is_enum(type_name):
        return type_name[5:]
    return pgv.sql_type_name(type_name)


def common_numeric(a: str, b: str) -> str:
    if "float4" in (a, b) and (a != b) and "float8" not in (a, b):
        return "float8"
    return max(a, b, key=NUMERIC_ORDER.index)


def common_scalar(a: str, b: str) -> str | None:
    """The type both operands convert to, following Postgres's implicit casts."""
    if a == b:
        return "text" if a in ("varchar", "name") else a
    if a == "unknown":
        return b
    if b == "unknown":
        return a
    if a in NUMERIC_ORDER and b in NUMERIC_ORDER:
        return common_numeric(a, b)
    if a in STRING_TYPES and b in STRING_TYPES:
        return "text"
    if a in DATETIME_TYPES and b in DATETIME_TYPES:
        return "timestamptz" if "timestamptz" in (a, b) else "timestamp"
    return None


def common_type(a: str, b: str) -> str | None:
    if is_array(a) and is_array(b):
        elem = common_scalar(elem_type(a), elem_type(b))
        return None if elem is None else elem + "[]"
    if is_array(a) and b == "unknown":
        return a
    if is_array(b) and a == "unknown":
        return b
    if is_array(a) or is_array(b):
        return None
    return common_scalar(a, b)


def fits_operand(actual: str, wanted: str) -> bool:
    """Whether an operand of type `actual` implicitly converts to the operator's `wanted`."""
    if actual == wanted:
        return True
    if wanted == "int4":
        return actual == "int2"
    if wanted == "float8":
        return actual in NUMERIC_ORDER
    return False


def column_type(col: ColumnInfo) -> str:
    if col.type_kind == "e":
        base = col.base_type.lstrip("_") if col.is_array else col.type_name
        return "enum:" + base + ("[]" if col.is_array else "")
    if col.is_array:
        return col.base_type + "[]"
    return col.type_name
