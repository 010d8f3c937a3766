"""The query behind a new shape's initial data (run by `batch`), and its rows.

Stitching with the replication stream follows Electric: the transaction's
`pg_current_snapshot()` is reported before any row is read, and the stream then skips every
transaction already visible in it (see `pg.xid_snapshot.XidSnapshot.visible`).

Postgres renders each row's values as JSON (what `row_to_json` of the columns cast to text
gives, built by concatenation, see `_value_json`) and the key's variable part; Python adds
the constant parts. COPY's text format doubles
backslashes (JSON text holds no tabs or newlines), so un-escaping is one `bytes.replace`.
A whole-table snapshot (`BulkRows`) comes in the binary format, its rows separated by
control characters (compact) or, for wide rows, by the constant parts already written by
Postgres, so the engine only joins lines. Where the value is built by concatenation, the
whole-table lines come as pre-images instead (`BulkRows.raw`, `json_from_raw`): Postgres sends
every value's text unescaped and the engine escapes whole lines at C speed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from psycopg import pq, sql

from ..log.entries import relation_prefix

if TYPE_CHECKING:
    from ..pg.catalog import ColumnInfo, TableInfo


# Types whose cast to text differs from their output function, which is what pgoutput
# sends: bpchar (the cast strips padding), bool (`true` vs `t`), inet (`/32` appended).
# And xml (its cast keeps an XML declaration that xml_out drops, fidelity 08:27), and a
# domain over any of these (a domain's cast to text is its base type's; pgoutput sends the
# output function's text: `ab  ` of a domain over char(4) was `ab` in the snapshot, a key
# the live update did not match, the row duplicated; fidelity 08:26).
_OUTPUT_FUNCTION_TYPES = frozenset({"bpchar", "bool", "inet", "xml"})


#: Built-in base types whose `::text` is their output function's text (an I/O conversion,
#: or text itself), and to which nobody but a superuser can add a cast (CREATE CAST needs to
#: own one of the types). Any other type (an enum, a composite, a range, an extension's type,
#: a domain over one) may have a cast to text its owner made (`CREATE CAST (mood AS text)
#: WITH FUNCTION ...`): `::text` ran it, the snapshot served what it returned while
#: pgoutput sent the output function's text (keys differed too; fidelity 08:40). Those go
#: through `concat`, which calls the output function, whatever casts exist. (An array is
#: always `array_out`'s text, its elements' output functions: `::text` is exact.)
_CAST_SAFE_TYPES = frozenset(
    {
        "int2", "int4", "int8", "float4", "float8", "numeric", "text", "varchar", "name",
        "char", "date", "time", "timetz", "timestamp", "timestamptz", "interval", "uuid",
        "json", "jsonb", "bytea", "oid", "money", "bit", "varbit", "cidr", "macaddr",
        "macaddr8", "tsvector", "tsquery", "point", "line", "lseg", "box", "path", "polygon",
        "circle", "pg_lsn", "xid", "xid8", "cid", "tid", "int2vector", "oidvector",
        "txid_snapshot", "pg_snapshot", "jsonpath", "regclass", "regtype", "regproc",
        "regprocedure", "regoper", "regoperator", "regconfig", "regdictionary",
        "regnamespace", "regrole", "regcollation",
    }
)  # fmt: skip


#: Postgres's FirstNormalObjectId: every type initdb made (the built-in ones, their arrays)
#: has an OID below it, every type made since (by anyone, under any name) one above.
FIRST_NORMAL_OID = 16384


def _output_text(ident: sql.Identifier) -> sql.Composable:
    """The column's text by its type's output function, whatever casts to text exist
    (`concat` calls the output function; NULL stays NULL). NULL is the value's own
    (`num_nulls`), not `IS NULL`, which is true of a composite whose attributes are all
    NULL: `ROW(NULL,NULL)` reads `(,)` (pgoutput sends that), and was served as null, a
    primary key of it losing its row (fidelity)."""
    return sql.SQL("CASE WHEN num_nulls({c}) = 1 THEN NULL ELSE concat({c}, '') END").format(
        c=ident
    )


def text_expr(col: ColumnInfo) -> sql.Composable:
    """The column as Postgres text, exactly as pgoutput renders it (keys must agree).

    Whether `::text` is safe is decided by the type's OID, not its name: anyone may create
    `public.uuid` (an enum) or an array type's cast to text (the owner of a type owns its
    array type too), and `::text` then ran their function (review, after 55507a35)."""
    ident = sql.Identifier(col.name)
    if col.is_array:
        if col.type_oid < FIRST_NORMAL_OID:  # (a built-in array: array_out, exactly)
            return sql.SQL("{c}::text").format(c=ident)
        return _output_text(ident)
    if col.type_kind != "d" and col.type_oid >= FIRST_NORMAL_OID:
        return _output_text(ident)
    scalar = col.type_name
    if col.type_kind == "d" and col.domain_base is not None:
        scalar = col.domain_base  # (through domains over domains)
    elif col.type_kind == "d":  # (recorded before domain_base was: its base unknown)
        scalar = ""
    if scalar in _OUTPUT_FUNCTION_TYPES or scalar not in _CAST_SAFE_TYPES:
        return _output_text(ident)
    return sql.SQL("{c}::text").format(c=ident)


#: Between the rows of a compact `BulkRows` line, and between a row's key part and value.
ROW_SEP, FIELD_SEP = b"\x1e", b"\x1f"
#: Heap pages per `BulkRows` line: ~250 kB of table, a few hundred kB of JSON.
BULK_PAGES = 32

# The pre-image of a whole-table line (`BulkRows.raw`): values as Postgres's text, unescaped,
# in a bytea whose constant parts hold these bytes, which no UTF-8 text holds, for a
# structural `"` and `\\` and the compact separators (`json_from_raw`).
_RAW_QUOTE, _RAW_BACKSLASH, _RAW_FIELD, _RAW_ROW = b"\xff", b"\xfe", b"\xfc", b"\xfb"
#: A NULL value, between the two quotes a value always has in the pre-image.
_RAW_NULL = b"\xfa"
#: What a control character becomes in the first translation: it marks that a value held
#: one (rare), and the line is then escaped the slow way.
_CONTROL_MARK = b"\xfd"
_TO_RAW = bytes.maketrans(b'"\\', _RAW_QUOTE + _RAW_BACKSLASH)
_FROM_RAW = bytes.maketrans(
    bytes(range(32)) + _RAW_QUOTE + _RAW_BACKSLASH + _RAW_FIELD + _RAW_ROW,
    _CONTROL_MARK * 32 + b'"\\' + FIELD_SEP + ROW_SEP,
)
#: JSON's escapes of the control characters, as Postgres's `escape_json` writes them.
_CONTROL_ESCAPES = {
    bytes([c]): {8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r"}.get(c, b"\\u%04x" % c)
    for c in range(32)
}


def json_from_raw(raw: bytes) -> bytes:
    """A pre-image line (see `BulkRows.raw`) as the JSON its text form would be.

    Values are Postgres's text as it is, so escaping them is what `to_json` of the text
    does (`escape_json`: `\\` and `"` escaped, control characters as `\\n` or `\\u00XX`,
    everything else as it is), done to the whole line at once: the constant parts hold no
    `"`, no `\\` and no control character, only bytes UTF-8 never uses, translated back
    after. Postgres escaped them at ~13 ns a byte (a wide table's jsonb: a third of its
    CPU); here two replaces and one translation cost ~3 ns a byte.
    """
    if _RAW_NULL in raw:
        raw = raw.replace(_RAW_QUOTE + _RAW_NULL + _RAW_QUOTE, b"null")
    if b"\\" in raw:
        raw = raw.replace(b"\\", b"\\\\")
    raw = raw.replace(b'"', b'\\"')
    out = raw.translate(_FROM_RAW)
    if _CONTROL_MARK not in out:
        return out
    for control, escape in _CONTROL_ESCAPES.items():
        if control in raw:
            raw = raw.replace(control, escape)
    return raw.translate(_FROM_RAW)


# Primary-key types whose text never needs JSON escaping nor `/` doubling: keys for them
# are assembled in Python from the bare value, which keeps the bytes Postgres sends small.
_PLAIN_KEY_TYPES = frozenset({"int2", "int4", "int8", "uuid", "numeric", "date", "oid"})


@dataclass(frozen=True, slots=True)
class RowQuery:
    """A query yielding `key part \t value json` per row, and how to finish each line.

    `sql` selects the key part (the bare primary-key text when `plain_key`, else the whole
    key already JSON-encoded) and `row_to_json` of the selected columns as text; `finish`
    turns one COPY line into the log entry's JSON.
    """

    sql: sql.Composed
    plain_key: bool
    key_open: bytes
    suffix: bytes
    #: The same rows for a whole-table snapshot, many per COPY line (see `BulkRows`):
    #: None when the shape has a where clause, an order or a limit, or is not on a plain
    #: table. Subsets and the differential tests read `sql`.
    bulk: BulkRows | None = None

    @property
    def _middle(self) -> bytes:
        return _middle(self.plain_key)

    @property
    def row_sep(self) -> bytes:
        """Between two entries: the first one's end, a comma, the next one's start."""
        return self.suffix + b"," + (self.key_open if self.plain_key else b'{"key":')

    def line_overhead(self) -> int:
        """Bytes a finished entry adds to its COPY line (for cutting chunks by size)."""
        head = len(self.key_open) if self.plain_key else len(b'{"key":')
        return head + len(self._middle) + len(self.suffix) - 1  # - tab, + comma - newline

    def finish_block(self, parts: list[bytes]) -> bytes:
        """COPY lines (`key \t value \n` each, in `parts` of one or more lines) -> entries
        joined by commas. Consumes `parts`.

        JSON text holds no raw tab or newline, so the field separator and row terminator
        are the only such bytes: whole chunks are finished with C-level joins and replaces
        instead of per-row Python work. Without backslashes (nothing for COPY to have
        doubled) the first and last constant parts go into the one join, so a 10 MB chunk
        is copied three times, not five.
        """
        while parts and not parts[-1]:
            parts.pop()
        if not parts:
            return b""
        parts[-1] = parts[-1][:-1]
        head = self.key_open if self.plain_key else b'{"key":'
        if any(b"\\" in p for p in parts):
            data = b"".join(parts).replace(b"\\\\", b"\\")
            data = data.replace(b"\t", self._middle).replace(b"\n", self.suffix + b"," + head)
            return head + data + self.suffix
        parts.insert(0, head)  # neither holds a tab or a newline
        parts.append(self.suffix)
        data = b"".join(parts)
        return data.replace(b"\t", self._middle).replace(b"\n", self.suffix + b"," + head)

    def expand(self, line: bytes, start: int) -> bytes:
        """A compact `bulk` line's rows (`line[start:]`: `key \x1f value` joined by
        `\x1e`) as the full form has them (see `finish_units`): C-level replaces. The
        separators are control characters COPY leaves alone and JSON text never holds raw."""
        return line[start:].replace(FIELD_SEP, self._middle).replace(ROW_SEP, self.row_sep)

    def finish_units(self, units: list[bytes | memoryview]) -> bytes:
        """Entries of full `bulk` lines (each one or more entries but their first and last
        constant parts, joined by `row_sep`, as COPY's binary format sends them: nothing
        escaped; see `expand`) -> entries joined by commas, as `finish_block`. Consumes
        `units`.

        For wide rows Postgres writes the constant parts between entries (`BulkRows.line`,
        `sep`), so a chunk costs the engine one C-level join: the two replaces of `expand`
        were the largest share of the engine's CPU on a 30-column table, while on narrow
        rows the constants nearly triple what crosses the socket (see `bulk.FULL_ROWS`).
        """
        if not units:
            return b""
        head = self.key_open if self.plain_key else b'{"key":'
        units[0] = head + units[0]
        units[-1] = bytes(units[-1]) + self.suffix
        data = self.row_sep.join(units)
        units.clear()
        return data

    def assemble(self, key: bytes, value: bytes) -> bytes:
        """The entry JSON from the query's two fields (already free of COPY escaping)."""
        if self.plain_key:
            return self.key_open + key + b'\\""' + b',"value":' + value + self.suffix
        return b'{"key":' + key + b',"value":' + value + self.suffix


def row_json_sql(
    table: TableInfo,
    columns: Sequence[ColumnInfo],
    pk: Sequence[str],
    where_sql: str | None,
    *,
    order_by: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> RowQuery:
    """`SELECT <key part>, <row as JSON> FROM ...` (see `_value_json`).

    Every name goes through `sql.Identifier` / `sql.Literal`; `where_sql` is the engine's
    own deparse of a validated where clause (`shapes/where.py`), never request text.
    Postgres renders values (its output functions, under the session's display settings);
    the constant parts of each line are added in Python.
    """
    t = _template(table, tuple(columns), tuple(pk))
    source: sql.Composable = sql.SQL(t.relation)
    if where_sql:
        source = sql.SQL(t.relation + " WHERE " + where_sql)
    if order_by is not None or limit is not None or offset is not None:
        # Ordering must see the columns' own types, not their text casts: sort and cut in
        # an inner query over the table, then render.
        inner_q = sql.SQL("SELECT * FROM {}").format(source)
        if order_by:
            inner_q = sql.SQL("{} ORDER BY {}").format(inner_q, sql.SQL(order_by))
        if limit is not None:
            inner_q = sql.SQL("{} LIMIT {}").format(inner_q, sql.Literal(limit))
        if offset is not None:
            inner_q = sql.SQL("{} OFFSET {}").format(inner_q, sql.Literal(offset))
        source = sql.SQL("({}) AS {}").format(inner_q, sql.Identifier(table.name))
    query = sql.Composed([sql.SQL(t.head), source, sql.SQL(t.tail)])
    bulk = None
    if not where_sql and (order_by, limit, offset) == (None, None, None):
        bulk = t.bulk
    return RowQuery(query, t.plain, t.key_open, t.suffix, bulk)


@dataclass(frozen=True, slots=True)
class _Template:
    head: str  # `SELECT <key part>, <value json> FROM `
    tail: str  # after the source
    relation: str  # `"schema"."table"`
    plain: bool
    key_open: bytes
    suffix: bytes
    bulk: BulkRows | None  # the whole-table query


# Types whose text output never needs JSON escaping (digits, letters, `-+:. `), so their
# JSON string is the text in double quotes, without `to_json`.
_PLAIN_VALUE_TYPES = _PLAIN_KEY_TYPES | {
    "float4",
    "float8",
    "bool",
    "timestamp",
    "timestamptz",
    "time",
    "timetz",
}
# Column names written into the row's JSON by the engine: those needing no JSON escaping.
_SAFE_NAME = re.compile(r"[ !#-\[\]-~]+")


def _value_json(columns: Sequence[ColumnInfo]) -> sql.Composable | None:
    """The row's `value` object built by concatenation: `{"a":"1","b":null,...}`.

    Byte for byte what `row_to_json` of the columns cast to text gives (keys in column
    order, `to_json` escaping, `null` for NULL), at about two thirds of Postgres's CPU:
    `row_to_json` builds a record and runs every value through its output function again.
    None when a column name would need escaping (then `row_to_json` is used).
    """
    if not all(_SAFE_NAME.fullmatch(c.name) for c in columns):
        return None
    pieces: list[str | sql.Composable] = []  # constant text or an expression
    for i, c in enumerate(columns):
        pieces.append(("{" if i == 0 else ",") + '"' + c.name + '":')
        text = text_expr(c)
        if c.type_name in _PLAIN_VALUE_TYPES and c.not_null:
            pieces += ['"', text, '"']
        elif c.type_name in _PLAIN_VALUE_TYPES:
            pieces.append(sql.SQL("""coalesce('"' || {t} || '"', 'null')""").format(t=text))
        elif c.not_null:
            pieces.append(sql.SQL("to_json({t})::text").format(t=text))
        else:
            pieces.append(sql.SQL("coalesce(to_json({t})::text, 'null')").format(t=text))
    pieces.append("}")
    merged: list[str | sql.Composable] = []
    for piece in pieces:  # adjacent constants as one literal: fewer concatenations per row
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return sql.SQL(" || ").join(sql.Literal(p) if isinstance(p, str) else p for p in merged)


_Raw = list[bytes | sql.Composable]  # constant bytes (pre-image) or a bytea expression


def _raw_text(text: sql.Composable) -> sql.Composable:
    """A text expression's bytes as they are (`textsend`: in the client encoding, as COPY's
    text would come)."""
    return sql.SQL("textsend({})").format(text)


def _raw_value(columns: Sequence[ColumnInfo]) -> _Raw | None:
    """The pre-image of `_value_json`'s object: `{"a":"<text>","b":null}` with the values'
    text unescaped, the constants' `"` as `_RAW_QUOTE` and a NULL as `_RAW_NULL` between
    its quotes (None where `_value_json` is)."""
    if not all(_SAFE_NAME.fullmatch(c.name) for c in columns):
        return None
    null = _bytea(_RAW_NULL)
    pieces: _Raw = []
    for i, c in enumerate(columns):
        pieces.append((("{" if i == 0 else ",") + '"' + c.name + '":').encode().translate(_TO_RAW))
        text = _raw_text(text_expr(c))
        if not c.not_null:  # the quotes stay constant: fewer concatenations per value
            text = sql.SQL("coalesce({t}, {n})").format(t=text, n=null)
        pieces += [_RAW_QUOTE, text, _RAW_QUOTE]
    pieces.append(b"}")
    return pieces


def _bytea(data: bytes) -> sql.Composable:
    return sql.Literal(data)


def _raw_sql(pieces: _Raw) -> sql.Composable:
    """The pieces concatenated, adjacent constants as one literal, in a balanced tree of
    `||`: a chain copies the growing row once per piece (a 30-column row: ~60 times)."""
    merged: list[sql.Composable] = []
    pending = b""
    for piece in pieces:
        if isinstance(piece, bytes):
            pending += piece
            continue
        if pending:
            merged.append(_bytea(pending))
            pending = b""
        merged.append(piece)
    if pending:
        merged.append(_bytea(pending))

    def tree(items: list[sql.Composable]) -> sql.Composable:
        if len(items) == 1:
            return items[0]
        half = len(items) // 2
        return sql.SQL("({} || {})").format(tree(items[:half]), tree(items[half:]))

    return tree(merged)


def _middle(plain_key: bool) -> bytes:
    """Between an entry's key part and its value."""
    return (b'\\""' if plain_key else b"") + b',"value":'


@functools.lru_cache(maxsize=256)
def _template(table: TableInfo, columns: tuple[ColumnInfo, ...], pk: tuple[str, ...]) -> _Template:
    """The parts of a table's snapshot query that do not depend on the where clause.

    Composing them costs ~0.1 ms, a real share of creating a small shape; a storm of new
    shapes on one table composes them once.
    """
    prefix = relation_prefix(table.schema, table.name)
    by_name = {c.name: c for c in columns}
    relation = sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.name))
    plain = all(by_name[p].type_name in _PLAIN_KEY_TYPES for p in pk)
    value = _value_json(columns)
    if value is not None:
        refs: list[sql.Composable] = [text_expr(by_name[p]) for p in pk]
    else:
        inner = sql.SQL(", ").join(
            sql.SQL("{v} AS {n}").format(v=text_expr(c), n=sql.Identifier(c.name)) for c in columns
        )
        refs = [sql.SQL("r.{}").format(sql.Identifier(p)) for p in pk]
    key_text: sql.Composable = sql.SQL("")  # the key's JSON string's text (not plain)
    if plain:
        key = sql.SQL(" || '\\\"/\\\"' || ").join(refs)
    else:
        parts: list[sql.Composable] = [sql.Literal(prefix)]
        for ref in refs:
            parts.append(
                sql.SQL("""'/' || coalesce('"' || replace({v}, '/', '//') || '"', '_')""").format(
                    v=ref
                )
            )
        key_text = sql.SQL(" || ").join(parts)
        key = sql.SQL("to_json({})::text").format(key_text)
    if value is not None:
        head = sql.SQL("SELECT {key}, {value} FROM ").format(key=key, value=value)
        tail = ""
    else:
        head = sql.SQL("SELECT {key}, row_to_json(r)::text FROM (SELECT {cols} FROM ").format(
            key=key, cols=inner
        )
        tail = ") r"
    bulk = None
    key_open = b'{"key":' + orjson.dumps(prefix + '/"')[:-1]
    suffix = (
        b',"headers":{"operation":"insert","relation":'
        + orjson.dumps([table.schema, table.name])
        + b"}}"
    )
    if table.kind == "r":
        line = sql.SQL("{key} || {middle} || {value}").format(
            key=key,
            middle=sql.Literal(_middle(plain).decode()),
            value=value if value is not None else sql.SQL("row_to_json(r)::text"),
        )
        compact = sql.SQL("{key} || {sep} || {value}").format(
            key=key,
            sep=sql.Literal(FIELD_SEP.decode()),
            value=value if value is not None else sql.SQL("row_to_json(r)::text"),
        )
        sep = suffix + b"," + (key_open if plain else b'{"key":')
        raw_value = _raw_value(columns)
        pre_image = None
        if raw_value is not None and value is not None:
            # The same lines' pre-images (`json_from_raw`): the key's text (plain: the bare
            # values, the closing quote of its JSON string inside; else the whole string),
            # the value object, the constants in between.
            if plain:
                raw_key: _Raw = []
                for i, ref in enumerate(refs):
                    raw_key += [b'"/"', _raw_text(ref)] if i else [_raw_text(ref)]
                raw_middle = b'"' + _RAW_QUOTE + b',"value":'.translate(_TO_RAW)
            else:
                raw_key = [_RAW_QUOTE, _raw_text(key_text), _RAW_QUOTE]
                raw_middle = b',"value":'.translate(_TO_RAW)
            pre_image = BulkRows(
                relation.as_string(None),
                _raw_sql([*raw_key, raw_middle, *raw_value]).as_string(None),
                _raw_sql([sep.translate(_TO_RAW)]).as_string(None),
                _raw_sql([*raw_key, _RAW_FIELD, *raw_value]).as_string(None),
                _raw_sql([_RAW_ROW]).as_string(None),
                None,
                raw=True,
            )
        bulk = BulkRows(
            relation.as_string(None),
            line.as_string(None),
            sql.Literal(sep.decode()).as_string(None),
            compact.as_string(None),
            sql.Literal(ROW_SEP.decode()).as_string(None),
            None if value is not None else inner.as_string(None),
            pre_image=pre_image,
        )
    return _Template(
        head.as_string(None), tail, relation.as_string(None), plain, key_open, suffix, bulk
    )


@dataclass(frozen=True, slots=True)
class BulkRows:
    """A whole table's snapshot as lines of rows, one line per `BULK_PAGES` heap pages.

    libpq hands COPY data over one line at a time and that costs the engine ~0.35 µs per
    line before any work of its own (more than the rest of the pipeline together): rows
    of a block of pages are joined in Postgres by `string_agg` instead, the blocks read by
    TID range scans (the seq scan's order and cost; Postgres's CPU per row went slightly
    down). A block without rows gives a NULL line: lines are blocks, so blocks read by
    two backends (see `lines_sql`) are put back in order by counting lines.
    """

    relation: str  # `"schema"."table"`
    #: One row's entry but its constant start and end (see `RowQuery.finish_units`).
    line: str
    #: Between the rows of a line: the constant end and start of entries (an SQL literal).
    #: JSON strings hold no raw `"`, so it cannot occur within an entry.
    sep: str
    #: The compact form of `line`: `key part \x1f value`, rows joined by `\x1e`.
    compact_line: str
    compact_sep: str  # between the rows of a compact line (an SQL literal)
    columns: str | None  # the inner select of `row_to_json(r)` (see `_value_json`)
    #: Lines are pre-images in a bytea (`json_from_raw` makes them the JSON they stand for):
    #: the constant parts as always, but every value as Postgres's text, unescaped.
    raw: bool = False
    #: The same lines as pre-images, where the value is built by concatenation (see
    #: `for_connection`).
    pre_image: BulkRows | None = None

    def for_connection(self, pgconn: pq.abc.PGconn) -> BulkRows:
        """The form to read on `pgconn`: the pre-images where its text is UTF-8 (the
        database's, so validated, and the session's), whose bytes never include the
        constant parts' stand-ins (in LATIN1 text `ÿ` is 0xff; an SQL_ASCII database takes
        any bytes), else these lines."""
        status = pgconn.parameter_status
        utf8 = status(b"server_encoding") == status(b"client_encoding") == b"UTF8"
        return self.pre_image if self.pre_image is not None and utf8 else self

    def lines_sql(
        self,
        first: int = 0,
        every: int = 1,
        below: int | None = None,
        *,
        children: bool = True,
        full: bool = False,
    ) -> sql.Composed:
        """Lines of the blocks `first`, `first + every`, ... (counted in `BULK_PAGES`
        pages) that start below page `below` (None: to the table's end), compact or
        `full` (see `RowQuery.finish_units`).

        Pages past `pg_relation_size` hold nothing the transaction's snapshot sees (it was
        taken first and holds VACUUM back), and a later read of the size is only larger.
        `ONLY`: a table with inheritance children (`relhassubclass`) is read row by row, as
        a plain `SELECT` reads it, by the second branch when `children` (a one-time filter
        skips it otherwise); its block lines are then none.
        """
        relation = sql.SQL(self.relation)
        regclass = sql.SQL("{}::regclass").format(sql.Literal(self.relation))
        has_children = sql.SQL(
            "(SELECT c.relhassubclass FROM pg_catalog.pg_class c WHERE c.oid = {})"
        ).format(regclass)
        pages = sql.Literal(BULK_PAGES)
        # Qualified and aliased: the table's own columns may be called anything.
        in_block = sql.SQL(
            "ONLY {rel} AS _shapegate_rows"
            " WHERE ctid >= ('(' || _shapegate_pages.first || ',0)')::tid"
            " AND ctid < ('(' || (_shapegate_pages.first + {n}) || ',0)')::tid"
        ).format(rel=relation, n=pages)
        line = sql.SQL(self.line if full else self.compact_line)
        blocks_of: sql.Composable = in_block
        all_of: sql.Composable = relation
        if self.columns is not None:
            columns = sql.SQL(self.columns)
            blocks_of = sql.SQL("(SELECT {} FROM {}) r").format(columns, in_block)
            all_of = sql.SQL("(SELECT {} FROM {}) r").format(columns, relation)
        last: sql.Composable = sql.SQL(
            "pg_relation_size({}) / current_setting('block_size')::int"
        ).format(regclass)
        if below is not None:
            last = sql.SQL("LEAST({}, {})").format(last, sql.Literal(below - 1))
        query = sql.SQL(
            "SELECT (SELECT string_agg({line}, {sep}) FROM {blocks_of}) FROM generate_series("
            "{first}, CASE WHEN {children} THEN -1 ELSE {last} END, {step}) "
            "AS _shapegate_pages(first)"
        ).format(
            line=line,
            sep=sql.SQL(self.sep if full else self.compact_sep),
            blocks_of=blocks_of,
            first=sql.Literal(first * BULK_PAGES),
            children=has_children,
            last=last,
            step=sql.Literal(every * BULK_PAGES),
        )
        if children:
            query = sql.SQL("{} UNION ALL SELECT {} FROM {} WHERE {}").format(
                query, line, all_of, has_children
            )
        return query
