"""What a client asks for (`ShapeParams`) and what identifies a shape (`ShapeDefinition`).

`describe` checks a request's parameters against the catalog and turns them into the
definition: the table by oid, the canonical where clause with its params substituted, the
selected columns sorted, `replica` and `log` mode. Two requests that differ only in spelling
(quoting, spacing, column order) get the same definition, so they share one shape. The
messages of `InvalidRequest` are Electric's, which clients and docs already show people.
Nothing here knows HTTP: `http/params.py` builds the `ShapeParams` from a query string.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import InvalidRequest
from ..pg.catalog import ColumnInfo, TableInfo
from ..pg.identifiers import InvalidIdentifier, parse_columns, parse_relation
from .parse_thread import PARSE_IN_THREAD, parse_off_loop
from .where import Where, WhereError, parse_where
from .where.clause import full_parse

#: `(schema, name) -> the table, or None when there is none`; the catalog's cached lookup.
TableLookup = Callable[[str, str], Awaitable[TableInfo | None]]
ZoneProblem = Callable[[Iterable[str]], Awaitable[str | None]]


class Replica(enum.StrEnum):
    """`replica=`: what an update or delete carries (see `shapes/changes.py`)."""

    DEFAULT = "default"
    FULL = "full"


class LogMode(enum.StrEnum):
    """`log=`: `full` starts with a snapshot of the rows, `changes_only` with none."""

    FULL = "full"
    CHANGES_ONLY = "changes_only"


@dataclass(frozen=True, slots=True)
class ShapeParams:
    """A shape as a client asks for it, checked for form but not against the catalog."""

    table: str
    where: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    columns: str | None = None
    replica: Replica = Replica.DEFAULT
    log_mode: LogMode = LogMode.FULL
    #: `queryable_columns=`: the columns `columns` and a subset's where and order_by may
    #: name (Electric's allow-list, GHSA-c82q-v86f-c87f); the default for `columns`. Not
    #: part of a shape's identity: it changes no log, only what a request may ask.
    queryable_columns: str | None = None

    def key(self) -> tuple[object, ...]:
        """The raw parameters, as a cache key for resolving the shape quickly."""
        return (
            self.table,
            self.where,
            tuple(sorted(self.params.items())),
            self.columns,
            self.replica,
            self.log_mode,
            self.queryable_columns,
        )


@dataclass(frozen=True, slots=True)
class SubsetParams:
    """A subset snapshot asked for inside a shape: rows of the shape that also match `where`,
    in `order_by` order, `limit` of them after `offset` (checked for form, not yet against the
    table: `snapshot/subset.py`)."""

    where: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None
    offset: int | None = None
    order_by: str | None = None


@dataclass(frozen=True, slots=True)
class ShapeDefinition:
    """What identifies a shape: only what changes its log's content."""

    table_oid: int
    schema: str
    table: str
    where: str | None
    columns: tuple[str, ...]
    replica: Replica = Replica.DEFAULT
    log_mode: LogMode = LogMode.FULL

    def to_json(self) -> dict[str, object]:
        return {
            "table_oid": self.table_oid,
            "schema": self.schema,
            "table": self.table,
            "where": self.where,
            "columns": list(self.columns),
            "replica": self.replica.value,
            "log_mode": self.log_mode.value,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ShapeDefinition:
        """From `to_json`'s form (raises ValueError or TypeError when it is not that)."""
        oid, columns, where = data["table_oid"], data["columns"], data["where"]
        if not isinstance(oid, int) or not isinstance(columns, list):
            raise TypeError("not a shape definition")
        return cls(
            table_oid=oid,
            schema=str(data["schema"]),
            table=str(data["table"]),
            where=None if where is None else str(where),
            columns=tuple(str(c) for c in columns),
            replica=Replica(str(data["replica"])),
            log_mode=LogMode(str(data["log_mode"])),
        )


@dataclass(frozen=True, slots=True)
class Described:
    """A request's definition, with the catalog's table, the columns chosen and the where."""

    definition: ShapeDefinition
    table: TableInfo
    columns: tuple[ColumnInfo, ...]
    where: Where | None
    #: The columns a subset's where and order_by may name (`queryable_columns`, else all).
    queryable: tuple[ColumnInfo, ...] = ()


#: `parse_relation` of the table texts seen (a storm names one table 10,000 times).
_relations: dict[str, tuple[str, str]] = {}
#: A definition's sorted column names by the identity of the (immutable) columns chosen,
#: kept in the entry so the id cannot be reused while it lives: a table's shapes share it.
_column_names: dict[int, tuple[tuple[ColumnInfo, ...], tuple[str, ...]]] = {}


def _relation(text: str) -> tuple[str, str]:
    relation = _relations.get(text)
    if relation is None:
        relation = parse_relation(text)  # raises InvalidIdentifier (not remembered)
        if len(_relations) >= 1024:
            _relations.clear()
        _relations[text] = relation
    return relation


def _sorted_names(chosen: tuple[ColumnInfo, ...]) -> tuple[str, ...]:
    known = _column_names.get(id(chosen))
    if known is not None and known[0] is chosen:
        return known[1]
    names = tuple(sorted(c.name for c in chosen))
    if len(_column_names) >= 1024:
        _column_names.clear()
    _column_names[id(chosen)] = (chosen, names)
    return names


async def _parse_where(params: ShapeParams, columns: Mapping[str, ColumnInfo]) -> Where:
    """`parse_where` of a shape's where; a long one the long way (`full_parse`, the same
    answer, leaving the templates' cache to the loop) in the parse thread
    (`parse_thread`: a 62 KB one took the event loop ~1 s, for every request of a new
    definition)."""
    assert params.where is not None
    values = dict(params.params)
    size = len(params.where) + sum(len(k) + len(v) for k, v in values.items())
    if size < PARSE_IN_THREAD:
        return parse_where(params.where, values, columns, allow_subqueries=True)
    parse = functools.partial(full_parse, params.where, values, columns, allow_subqueries=True)
    return await parse_off_loop(parse)


async def describe(
    params: ShapeParams, lookup: TableLookup, zone_problem: ZoneProblem
) -> Described:
    """Validate the parameters against the catalog; InvalidRequest names what is wrong.

    `zone_problem` says why Postgres cannot be trusted to read a zone an AT TIME ZONE in the
    where names as the engine does (`where.zones.ZoneAgreement.problem`), or None."""
    try:
        schema, name = _relation(params.table)
    except InvalidIdentifier as e:
        raise InvalidRequest({"table": [str(e)]}) from None
    table = await lookup(schema, name)
    if table is None or table.kind not in ("r", "p"):
        raise InvalidRequest(
            {
                "table": [
                    f'Table "{schema}"."{name}" does not exist. If the table name contains'
                    " capitals or special characters you must quote it."
                ]
            }
        )
    if table.unsynced:
        raise InvalidRequest(
            {
                "table": [
                    f'Table "{schema}"."{name}" has partitions or child tables whose changes'
                    " are not replicated (unlogged or foreign tables write no WAL): "
                    + ", ".join(table.unsynced)
                ]
            }
        )
    # (`columns` first, when given: its errors as before, which the proxy names a rule by)
    chosen = choose_columns(table, params.columns) if params.columns is not None else ()
    queryable = table.columns
    if params.queryable_columns is not None:
        queryable = _queryable(table, params.queryable_columns)
    if params.columns is None:
        chosen = choose_columns(table, params.queryable_columns)
    elif len(queryable) < len(table.columns):
        allowed = {c.name for c in queryable}
        hidden = [c.name for c in chosen if c.name not in allowed]
        if hidden:
            raise InvalidRequest(
                {
                    "columns": [
                        "The following columns are not in queryable_columns: " + ", ".join(hidden)
                    ]
                }
            )
    where = None
    if params.where is not None:
        try:
            # A shape's where is where Electric takes `x IN (SELECT ...)` (subsets never do):
            # refused as not supported yet, not as "not allowed in subsets".
            where = await _parse_where(params, table.column_map)
        except WhereError as e:
            raise InvalidRequest({"where": [str(e)]}) from None
        if where.zones:
            problem = await zone_problem(where.zones)
            if problem is not None:
                raise InvalidRequest({"where": [problem]})
    # params without a where are ignored, as upstream does
    definition = ShapeDefinition(
        table_oid=table.oid,
        schema=table.schema,
        table=table.name,
        where=where.source if where is not None else None,
        columns=_sorted_names(chosen),
        replica=params.replica,
        log_mode=params.log_mode,
    )
    return Described(definition, table, chosen, where, queryable)


def _queryable(table: TableInfo, text: str) -> tuple[ColumnInfo, ...]:
    """The columns `queryable_columns` allows: the same rules as `columns` (known columns,
    every primary key column), its errors under its own name."""
    try:
        return choose_columns(table, text, generated_ok=True)
    except InvalidRequest as exc:
        raise InvalidRequest({"queryable_columns": exc.errors["columns"]}) from None


def choose_columns(
    table: TableInfo, columns: str | None, *, generated_ok: bool = False
) -> tuple[ColumnInfo, ...]:
    """The columns a `columns=` list selects (all when None), in the table's order.
    `generated_ok`: a list that names what may be queried, not what is replicated."""
    if columns is None:
        chosen = table.columns
    else:
        try:
            names = parse_columns(columns)
        except InvalidIdentifier as e:
            raise InvalidRequest({"columns": [str(e)]}) from None
        by_name = table.column_map
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InvalidRequest(
                {
                    "columns": [
                        "The following columns are not found on the table: " + ", ".join(missing)
                    ]
                }
            )
        # A table without a primary key is keyed by all its columns (as Electric's
        # Inspector.get_pk_cols): a subset would give rows that agree on it one key, and
        # clients would keep one of them.
        key = table.pk or tuple(c.name for c in table.columns)
        lacking = [p for p in key if p not in names]
        if lacking:
            raise InvalidRequest(
                {
                    "columns": [
                        "The list of columns must include all primary key columns,"
                        " missing: " + ", ".join(lacking)
                    ]
                }
            )
        wanted = set(names)
        chosen = tuple(c for c in table.columns if c.name in wanted)
    generated = [] if generated_ok else [c.name for c in chosen if c.generated]
    if generated:
        raise InvalidRequest(
            {
                "columns": [
                    "Generated columns cannot be replicated by PostgreSQL 15: "
                    + ", ".join(generated)
                    + " (leave them out with the columns parameter)"
                ]
            }
        )
    return chosen
