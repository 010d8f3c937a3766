"""Postgres types, spelled one way: `PgType`.

The catalog names an int4 array `_int4` and an enum by its own name (with `typtype = 'e'`
beside it); Postgres's messages say `integer[]`; the where compiler needs to tell an
untyped literal (`unknown`) from text. A `PgType` holds what all of these say once: the
scalar (element) type's `pg_type.typname`, whether it is an array of it, whether that scalar
is an enum. Everything that parses values, resolves operators or prints a type in a message
takes a `PgType` (`ColumnInfo.pg_type` for a column); nothing else spells type names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Postgres's SQL names for the messages it prints ("invalid input syntax for type integer").
_SQL_NAMES: dict[str, str] = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "float4": "real",
    "float8": "double precision",
    "bool": "boolean",
    "varchar": "character varying",
    "bpchar": "character",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "time": "time without time zone",
}


@dataclass(frozen=True, slots=True, eq=False)
class PgType:
    """A Postgres type: `name` is the scalar (element) type's typname (`int4`, `text`, an
    enum's own name); `array` for an array of it (any number of dimensions, as in
    Postgres); `enum` when the scalar type is an enum."""

    name: str
    array: bool = False
    enum: bool = False
    # The compiler compares and hashes types at every node (type groups, cast tables): the
    # hash is computed once, equality compares fields without building tuples.
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.name, self.array, self.enum)))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, PgType):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.name == other.name
            and self.array == other.array
            and self.enum == other.enum
        )

    def __hash__(self) -> int:
        return self._hash

    @property
    def element(self) -> PgType:
        """The scalar type of an array (the type itself for a scalar)."""
        return PgType(self.name, enum=self.enum) if self.array else self

    def array_of(self) -> PgType:
        """The array type whose elements are this scalar type."""
        return PgType(self.name, array=True, enum=self.enum)

    @property
    def sql_name(self) -> str:
        """The name Postgres prints in messages: `integer`, `integer[]`, an enum's name."""
        base = self.name if self.enum else _SQL_NAMES.get(self.name, self.name)
        return base + "[]" if self.array else base

    def __str__(self) -> str:
        return self.sql_name


INT2 = PgType("int2")
INT4 = PgType("int4")
INT8 = PgType("int8")
OID = PgType("oid")
NUMERIC = PgType("numeric")
FLOAT4 = PgType("float4")
FLOAT8 = PgType("float8")
BOOL = PgType("bool")
TEXT = PgType("text")
VARCHAR = PgType("varchar")
BPCHAR = PgType("bpchar")
NAME = PgType("name")
CHAR = PgType("char")
UUID = PgType("uuid")
DATE = PgType("date")
TIME = PgType("time")
TIMESTAMP = PgType("timestamp")
TIMESTAMPTZ = PgType("timestamptz")
INTERVAL = PgType("interval")
BYTEA = PgType("bytea")
JSON = PgType("json")
JSONB = PgType("jsonb")
UNKNOWN = PgType("unknown")
"""Postgres's type of an untyped literal or parameter, until its context decides."""
