"""What the engine knows about a table: columns, types and primary key, read from pg_catalog.

Everything downstream (where clauses, keys, the `electric-schema` header, snapshot SQL)
works from these frozen descriptions, never from ad-hoc catalog queries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a table as Postgres describes it.

    `type_name` is `pg_type.typname` of the column's type (`int4`, `text`, `_int4` for an
    int4 array, an enum's own name); `elem_type` is the element typname for arrays
    (`int4`), else None; `type_kind` is `pg_type.typtype` of the element/base type
    (`b` base, `e` enum, `d` domain, `c` composite, `r` range).
    """

    name: str
    attnum: int
    type_oid: int
    type_name: str
    elem_type: str | None
    type_kind: str
    type_mod: int
    dims: int
    not_null: bool
    pk_index: int | None
    generated: bool = False

    @property
    def base_type(self) -> str:
        """The scalar type name: the element type for arrays, else the type itself."""
        return self.elem_type or self.type_name

    @property
    def is_array(self) -> bool:
        return self.elem_type is not None


@dataclass(frozen=True, slots=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    pk: tuple[str, ...]
    kind: str = "r"
    replica_identity: str = "d"

    def column(self, name: str) -> ColumnInfo | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def column_map(self) -> dict[str, ColumnInfo]:
        return {c.name: c for c in self.columns}
