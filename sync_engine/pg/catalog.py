"""What the engine knows about a table: columns, types and primary key, read from pg_catalog.

Everything downstream (where clauses, keys, the `electric-schema` header, snapshot SQL)
works from these frozen descriptions, never from ad-hoc catalog queries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .types import PgType

if TYPE_CHECKING:
    from psycopg import AsyncConnection


#: The base types of the domains a where clause reads as their base type
#: (ColumnInfo.value_type).
DOMAIN_BASES = frozenset(
    PgType(n)
    for n in (
        "bool", "int2", "int4", "int8", "float4", "float8", "numeric", "text", "varchar",
        "date", "time", "timestamp", "timestamptz", "interval", "uuid", "bpchar",
    )
)  # fmt: skip


#: The element types of the domains over arrays a where clause reads as their base array
#: type: DOMAIN_BASES but the collatable ones.
DOMAIN_ARRAY_ELEMENTS = DOMAIN_BASES - {PgType("text"), PgType("varchar"), PgType("bpchar")}


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
    collation: str | None = None
    """The column's effective collation, its OID, the database default collation and the
    database encoding, as
    `provider|collate|ctype|deterministic|oid|dbprovider|dbcollate|dbctype|dbdeterministic|encoding`
    (`c|C|C|t|950|c|C.UTF-8|C.UTF-8|t|UTF8`; a default-collated column has its database's
    collation and OID 100; a column of a type without collations has its first four fields
    empty and OID 0, `||||0|c|C|C|t|UTF8`, so that a table without text columns still tells
    the database default, which literals and text computed from numbers take): text
    ordering, `upper`/`lower` and ILIKE depend on it, and the where compiler derives which
    collation each operation uses as Postgres does and only accepts them under collations
    it reproduces exactly (shapes/where/collation.py). One string, so that what is
    recorded of a shape's table keeps it whole. None: recorded by an engine that did not
    record it (for a column without collations, before this form)."""
    domain_base: str | None = None
    """For a column whose scalar (element) type is a domain: the typname of the type under
    it, through domains over domains (`bool` for a domain over boolean, `_int4` for a
    domain over int4[]). A domain's casts and its collatability are its base type's:
    `d::text` of a domain over boolean is 'true' (text(boolean)), not its output 't'. None
    for other columns, and for domains described by an engine that did not record it."""

    domain_base_kind: str | None = None
    """`pg_type.typtype` of `domain_base` (`c`: a domain over a composite, whose `IS NULL`
    tests its fields as the composite's does). None for other columns, and for domains
    described by an engine that did not record it."""

    type_schema: str | None = None
    """For a column whose scalar (element) type is an enum: the schema of that type. The
    where clause Postgres runs names an enum type qualified by it (`CAST('ok' AS
    public.mood)`, a `$1` compared with the column): the engine's sessions have
    `search_path = pg_catalog, pg_temp`, where `mood` alone names no type. None for other
    columns, and for enums described by an engine that did not record it."""

    @property
    def base_type(self) -> str:
        """The scalar type name: the element type for arrays, else the type itself."""
        return self.elem_type or self.type_name

    @property
    def is_array(self) -> bool:
        return self.elem_type is not None

    @property
    def is_enum(self) -> bool:
        """Whether the column's scalar (element) type is an enum."""
        return self.type_kind == "e"

    @property
    def pg_type(self) -> PgType:
        """The column's type, spelled the one way the rest of the engine reads types."""
        return PgType(self.base_type, array=self.is_array, enum=self.is_enum)

    @property
    def value_type(self) -> PgType:
        """The type a where clause reads the column as: `pg_type`, but for a (non-array)
        column of a domain over one of `DOMAIN_BASES`, the type under the domain. Postgres
        resolves operators and functions on a domain as on its base type (`dm = 5`,
        `dm + 1`, `dx LIKE 'a%'`), and a domain's text is its base type's (a domain over
        char(n) arrives padded to its length, as a char(n) column). Domains over other types
        (enums, inet, arrays of text) and arrays of domains (`posint[] = int4[]` does not
        exist) stay themselves, and are refused."""
        if self.type_kind == "d" and not self.is_array and self.domain_base is not None:
            if PgType(self.domain_base) in DOMAIN_BASES:
                return PgType(self.domain_base)
            # A domain over an array: anyarray operators and functions read it as its base
            # array type (`da @> '{1}'`, `da[1]`, `da || 5`), and its text is the array's.
            # Not over text or varchar arrays, whose elements' collation is the domain's.
            element = PgType(self.domain_base[1:])
            if self.domain_base.startswith("_") and element in DOMAIN_ARRAY_ELEMENTS:
                return element.array_of()
        return self.pg_type


@dataclass(frozen=True, slots=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    pk: tuple[str, ...]
    kind: str = "r"
    replica_identity: str = "d"
    relfilenode: int | None = None
    """`pg_class.relfilenode`: a new one when the table was rewritten (`ALTER COLUMN ...
    TYPE ... USING`, VACUUM FULL, CLUSTER, TRUNCATE), which may change every row's values
    with no row change in the WAL (`Tables.check_schemas` compares it). 0 for a partitioned
    table (its partitions have the storage). None: described by an engine that did not
    record it."""
    files: tuple[tuple[int, int], ...] | None = None
    """(oid, relfilenode) of every descendant (partitions at any depth, inheritance
    children): `ALTER TABLE root ALTER COLUMN ... TYPE ... USING` on a partitioned root
    rewrites every partition, the root's own relfilenode staying 0. None: described by an
    engine that did not record it."""
    enums: tuple[tuple[int, int, str], ...] | None = None
    """(attnum, pg_enum oid, label) of every value of the enum of each column whose type is
    an enum, an array of one or a domain over either: `ALTER TYPE ... RENAME VALUE`
    changes what every such row reads and writes nothing to the WAL. None: described by an
    engine that did not record it."""
    pk_deferrable: bool = False
    """Whether its primary key is DEFERRABLE: only then may two rows hold one key inside a
    transaction (a swap, a shift), which per-change messages cannot tell a client
    (`shapes.changes.moved_onto_held_key`)."""
    unsynced: tuple[str, ...] = ()
    """The descendants (partitions, inheritance children) whose rows change with nothing
    in the WAL, as `"schema"."name" (unlogged)` or `(foreign)`: the table's SELECT reads
    them, its replication never will (wherefuzz 08:19), so no shape is made on it."""
    composites: tuple[tuple[int, int, str, int], ...] | None = None
    """(type oid, attnum, attname, attribute type oid) of every attribute of every composite
    type the columns are made of (their types, arrays' element types, domains' base types,
    ranges' subtypes, composites' attributes, at any depth): `ALTER TYPE cc ADD ATTRIBUTE z
    int` makes every row's `(1,a)` read `(1,a,)` and writes nothing to the WAL, nor rewrites
    the table (fidelity: shapes served the old text for good). None: described by an engine
    that did not record it."""
    casts: tuple[tuple[str, str, str], ...] | None = None
    """(source typname, target typname, function) of every cast a user made WITH FUNCTION
    (pg_cast, castmethod 'f', not built in) from or to a type the columns are made of (their
    types, arrays' element types, domains' base types): `v::text` of an enum with such a
    cast to text runs that function in Postgres, where the engine reads the value's text
    (fidelity 08:50), so a where clause casting through one is refused. Each source is
    recorded by its typname and schema-qualified (as `ColumnInfo.domain_base` names a base
    type someone made). None: described by an engine that did not record it."""

    def column(self, name: str) -> ColumnInfo | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def column_map(self) -> ColumnMap:
        """The columns by name, with the labels of each enum column (or array of one), from
        `enums` when recorded: what a where clause is compiled against."""
        labels: dict[int, list[str]] = {}
        for attnum, _oid, label in self.enums or ():  # (in sort order within a column)
            labels.setdefault(attnum, []).append(label)
        return ColumnMap(
            {c.name: c for c in self.columns},
            {
                c.name: tuple(labels[c.attnum])
                for c in self.columns
                if c.is_enum and c.attnum in labels
            },
            {(source, target): func for source, target, func in self.casts or ()},
        )


class ColumnMap(dict[str, ColumnInfo]):
    """A table's columns by name (`TableInfo.column_map`), and `enum_labels`: for each column
    whose type is an enum or an array of one, the enum's labels in their declared order
    (`pg_enum.enumsortorder`: `ALTER TYPE ... ADD VALUE 'x' BEFORE 'y'` puts 'x' before
    'y'), by which Postgres orders its values. A where clause compares enum values only
    where it knows them (`shapes/where`); a plain mapping of columns tells none. Not a
    field of `ColumnInfo`: the table's record keeps them (`TableInfo.enums`).
    `function_casts`: (source, target) typname -> the function of a cast a user made between
    them (`TableInfo.casts`), which a where clause may not cast through."""

    def __init__(
        self,
        columns: dict[str, ColumnInfo],
        enum_labels: dict[str, tuple[str, ...]],
        function_casts: dict[tuple[str, str], str] | None = None,
    ) -> None:
        super().__init__(columns)
        self.enum_labels = enum_labels
        self.function_casts = function_casts or {}


_TABLE_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident, c.relfilenode::int8
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

# An array column is one whose type is its element type's array type (`typarray`), not
# any type in category 'A': int2vector and oidvector are in it, with an element type, but
# their text is `1 2`, not an array literal. Called arrays, the schema header said
# `{"type":"int2","dims":1}` and Electric's client parsed `1 2` as one int2: NaN. Electric
# calls them `{"type":"int2vector"}` (no dims), and the client keeps the text.
_COLUMNS_SQL = """
SELECT a.attname, a.attnum, a.atttypid, t.typname,
       CASE WHEN et.typarray = t.oid THEN et.typname END AS elem,
       CASE WHEN et.typarray = t.oid THEN et.typtype ELSE t.typtype END AS kind,
       a.atttypmod, a.attndims, a.attnotnull, a.attgenerated <> '',
       a.attcollation, to_jsonb(co), base.typname,
       (SELECT nspname FROM pg_namespace
        WHERE oid = CASE WHEN et.typarray = t.oid THEN et.typnamespace ELSE t.typnamespace END),
       base.typtype
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
LEFT JOIN LATERAL (
    WITH RECURSIVE under(oid, typtype, typbasetype, typname, typnamespace, depth) AS (
        SELECT s.oid, s.typtype, s.typbasetype, s.typname, s.typnamespace, 0 FROM pg_type s
        WHERE s.oid = CASE WHEN et.typarray = t.oid THEN et.oid ELSE t.oid END
          AND s.typtype = 'd'
        UNION ALL
        SELECT b.oid, b.typtype, b.typbasetype, b.typname, b.typnamespace, u.depth + 1
        FROM under u JOIN pg_type b ON b.oid = u.typbasetype
        WHERE u.typtype = 'd' AND u.depth < 100
    )
    -- (a base type someone made, whatever its name, is named with its schema: it is never
    -- taken for the built-in type of that name, e.g. an enum public.uuid with its own cast)
    SELECT CASE WHEN u.oid < 16384 THEN u.typname
                ELSE format('%%I.%%I', n.nspname, u.typname) END AS typname,
           u.typtype::text AS typtype
    FROM under u JOIN pg_namespace n ON n.oid = u.typnamespace
    WHERE u.typtype <> 'd' LIMIT 1
) base ON true
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# to_jsonb: the locale columns differ between Postgres versions (datlocprovider from 15,
# daticulocale 15-16, datlocale from 17); missing keys read as None.
_DATABASE_SQL = """
SELECT to_jsonb(d) || jsonb_build_object('encoding_name', pg_encoding_to_char(d.encoding))
FROM pg_database d WHERE datname = current_database()
"""

_PK_SQL = """
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.ord
"""

#: Each descendant whose rows change without WAL (unlogged, foreign), and the columns a
#: descendant generates that the table itself does not (pgoutput on Postgres 15 sends no
#: generated column: the table's rows read it, its changes come without it).
_MEMBERS_SQL = """
WITH RECURSIVE d(oid, depth) AS (
    SELECT inhrelid, 1 FROM pg_inherits WHERE inhparent = %(oid)s
    UNION ALL
    SELECT i.inhrelid, d.depth + 1 FROM pg_inherits i JOIN d ON i.inhparent = d.oid
    WHERE d.depth < 100
)
SELECT DISTINCT format('%%I.%%I', n.nspname, c.relname),
       CASE WHEN c.relkind = 'f' THEN 'foreign'
            WHEN c.relpersistence = 'u' THEN 'unlogged' END,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             JOIN pg_attribute r ON r.attrelid = %(oid)s AND r.attname = a.attname
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated <> '' AND r.attgenerated = '')
FROM d JOIN pg_class c ON c.oid = d.oid JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY 1
"""

_PK_DEFERRABLE_SQL = """
SELECT condeferrable FROM pg_constraint WHERE conrelid = %s AND contype = 'p'
"""

_FILES_SQL = """
WITH RECURSIVE d(oid, depth) AS (
    SELECT inhrelid, 1 FROM pg_inherits WHERE inhparent = %s
    UNION ALL
    SELECT i.inhrelid, d.depth + 1 FROM pg_inherits i JOIN d ON i.inhparent = d.oid
    WHERE d.depth < 100
)
SELECT DISTINCT c.oid::int8, c.relfilenode::int8 FROM d JOIN pg_class c ON c.oid = d.oid
ORDER BY 1
"""

# What each column is made of (through domains' base types, arrays' elements, ranges' and
# multiranges' subtypes and composites' attributes), at any depth, by the column's attnum:
# the walk _ENUMS_SQL and _COMPOSITES_SQL share.
_MADE_OF_CTE = """
WITH RECURSIVE ty(attnum, oid, depth) AS (
    SELECT a.attnum, a.atttypid, 0 FROM pg_attribute a
    WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
    UNION
    SELECT ty.attnum, n.oid, ty.depth + 1
    FROM ty JOIN pg_type t ON t.oid = ty.oid
    CROSS JOIN LATERAL (
        SELECT t.typbasetype WHERE t.typtype = 'd'
        UNION ALL SELECT t.typelem WHERE t.typelem <> 0
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid
        -- (a multirange's subtype: rngmultitypid from Postgres 14, read as JSON so that
        -- older ones, without it, run the query too)
        UNION ALL SELECT r.rngsubtype FROM pg_range r
        WHERE t.typtype = 'm' AND (to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid
        UNION ALL SELECT a.atttypid FROM pg_attribute a
        WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0
          AND NOT a.attisdropped
    ) AS n(oid)
    WHERE ty.depth < 100
)
"""

# Each column's type, then (through arrays' element types, domains' base types, ranges'
# subtypes and composites' attributes) what it is made of, down to an enum if any; its
# values by oid, in sort order. (A value renamed in an enum inside a composite changes the
# composite's text too: fidelity.)
_ENUMS_SQL = (
    _MADE_OF_CTE
    + """
SELECT DISTINCT ty.attnum, e.oid::int8, e.enumlabel, e.enumsortorder
FROM ty JOIN pg_enum e ON e.enumtypid = ty.oid
ORDER BY ty.attnum, e.enumsortorder
"""
)

# The casts users made WITH FUNCTION (not built in: oid >= FirstNormalObjectId) from or to
# any type the columns are made of (through arrays' element types and domains' base types).
_CASTS_SQL = """
WITH RECURSIVE ty(oid, depth) AS (
    SELECT a.atttypid, 0 FROM pg_attribute a
    WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, ty.depth + 1
    FROM ty JOIN pg_type t ON t.oid = ty.oid
    WHERE (t.typtype = 'd' OR t.typelem <> 0) AND ty.depth < 100
)
SELECT DISTINCT src, d.typname::text, c.castfunc::regprocedure::text
FROM pg_cast c
JOIN pg_type s ON s.oid = c.castsource
JOIN pg_namespace n ON n.oid = s.typnamespace
JOIN pg_type d ON d.oid = c.casttarget
CROSS JOIN LATERAL (
    -- (also as a domain's base type someone made is recorded: `ColumnInfo.domain_base`)
    VALUES (s.typname::text), (format('%%I.%%I', n.nspname, s.typname))
) AS names(src)
WHERE c.castmethod = 'f' AND c.oid >= 16384
  AND (c.castsource IN (SELECT oid FROM ty) OR c.casttarget IN (SELECT oid FROM ty))
ORDER BY 1, 2, 3
"""


# The composite types the columns are made of, at any depth (through domains, arrays,
# ranges and the composites' own attributes), with their attributes.
_COMPOSITES_SQL = (
    _MADE_OF_CTE
    + """
SELECT DISTINCT t.oid::int8, a.attnum::int, a.attname::text, a.atttypid::int8
FROM ty JOIN pg_type t ON t.oid = ty.oid
JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
WHERE t.typtype = 'c'
ORDER BY 1, 2
"""
)


async def load_table(conn: AsyncConnection[Any], schema: str, name: str) -> TableInfo | None:
    """Describe `schema.name`, or None when no such relation exists."""
    row = await (await conn.execute(_TABLE_SQL, (schema, name))).fetchone()
    if row is None:
        return None
    oid, nsp, rel, kind, replident, relfilenode = row
    pk = [r[0] for r in await (await conn.execute(_PK_SQL, (oid,))).fetchall()]
    deferrable = await (await conn.execute(_PK_DEFERRABLE_SQL, (oid,))).fetchone()
    db_row = await (await conn.execute(_DATABASE_SQL)).fetchone()
    database: dict[str, Any] = db_row[0] if db_row else {}
    cols = []
    for r in await (await conn.execute(_COLUMNS_SQL, (oid,))).fetchall():
        aname, attnum, typoid, typname, elem, tkind, typmod, ndims, notnull, generated = r[:10]
        coll_oid, own, domain_base, type_schema, base_kind = r[10], r[11], r[12], r[13], r[14]
        cols.append(
            ColumnInfo(
                name=aname,
                attnum=attnum,
                type_oid=typoid,
                type_name=typname,
                elem_type=elem,
                type_kind=tkind,
                type_mod=typmod,
                dims=ndims or (1 if elem else 0),
                not_null=bool(notnull),
                pk_index=pk.index(aname) if aname in pk else None,
                generated=bool(generated),
                collation=_column_collation(coll_oid, own, database),
                domain_base=domain_base,
                domain_base_kind=base_kind,
                type_schema=type_schema if tkind == "e" else None,
            )
        )
    files = await (await conn.execute(_FILES_SQL, (oid,))).fetchall()
    enums = await (await conn.execute(_ENUMS_SQL, (oid,))).fetchall()
    casts = await (await conn.execute(_CASTS_SQL, (oid,))).fetchall()
    composites = await (await conn.execute(_COMPOSITES_SQL, (oid,))).fetchall()
    unsynced: list[str] = []
    generated_below: set[str] = set()
    for member, why, generated_names in await (
        await conn.execute(_MEMBERS_SQL, {"oid": oid})
    ).fetchall():
        if why is not None:
            unsynced.append(f"{member} ({why})")
        generated_below.update(generated_names or ())
    if generated_below:
        # (as the table's own generated columns: no where on them, left out of columns)
        cols = [replace(c, generated=True) if c.name in generated_below else c for c in cols]
    return TableInfo(
        oid=oid,
        schema=nsp,
        name=rel,
        unsynced=tuple(unsynced),
        pk_deferrable=bool(deferrable and deferrable[0]),
        columns=tuple(cols),
        pk=tuple(pk),
        kind=kind,
        replica_identity=replident,
        relfilenode=relfilenode,
        files=tuple((int(o), int(f)) for o, f in files),
        enums=tuple((int(a), int(o), str(label)) for a, o, label, _ in enums),
        casts=tuple((str(src), str(dst), str(f)) for src, dst, f in casts),
        composites=tuple((int(t), int(n), str(a), int(at)) for t, n, a, at in composites),
    )


def _column_collation(oid: int, own: dict[str, Any] | None, database: dict[str, Any]) -> str | None:
    """`ColumnInfo.collation` of a column whose attcollation is `oid` (0: not collatable,
    whose own four fields are then empty: it still tells the database default)."""
    db = f"{_collation(database)}|{database.get('encoding_name') or ''}" if database else None
    if not oid:
        return None if db is None else f"||||0|{db}"
    desc = _collation(database if oid == 100 else own)
    if desc is None:
        return None
    return f"{desc}|{oid}|{db}"


def _collation(row: dict[str, Any] | None) -> str | None:
    """`provider|collate|ctype|deterministic` from a pg_collation or pg_database row."""
    if row is None:
        return None
    provider = row.get("collprovider") or row.get("datlocprovider") or "c"
    collate = row.get("collcollate") or row.get("datcollate") or ""
    ctype = row.get("collctype") or row.get("datctype") or ""
    if provider in ("i", "b"):  # ICU / builtin: the locale is in its own column
        locale = (
            row.get("colllocale")
            or row.get("colliculocale")
            or row.get("datlocale")
            or row.get("daticulocale")
            or ""
        )
        collate = ctype = locale
    deterministic = "t" if row.get("collisdeterministic", True) else "f"
    return f"{provider}|{collate}|{ctype}|{deterministic}"
