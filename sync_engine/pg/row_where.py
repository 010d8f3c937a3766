"""Postgres's own answer to "does this row match the shape's where clause?".

The engine evaluates where clauses itself for every replicated change, and where it cannot
read a value exactly (a date outside years 1-9999, a text cast in a form only Postgres
reads, an array with explicit bounds: `UnrepresentableValue`) it must not guess. Rotating
the shape (a fresh, exact snapshot) cannot finish while such a row keeps changing: every
new shape was rotated again before its client was up to date. So Postgres is asked
instead, for that row's values as the change carries them (not the table's current row,
which may have changed since):

    SELECT EXISTS (SELECT FROM (SELECT ($1::text::<table>).* OFFSET 0) AS <table> WHERE <where>)

(several rows at once over `unnest($1::text[])`). The clause is asked as a WHERE, as the
snapshot query has it, not as a value in a select list: Postgres's planner rewrites a
WHERE qual before reading a row (an OR's common factors pulled out, a constant arm
dropped, `x = 0 AND x = 1` a constant false through its equivalence classes) and then
evaluates its conjuncts in cost order, where a select list evaluates the expression as
written, left to right: `((10 / v > 1) AND t = 'x') OR t = 'x'` fails on v = 0 in a select
list, never as a WHERE (the shape was retired for a row its snapshot query answers).
OFFSET 0 keeps the row a scan of its own, under that WHERE (no pull-up, no push-down).
`$1` is a bind parameter: the row's values as a record literal of the table's row type, read
back by Postgres's input functions (typmods and domains included) under the same session
settings the replication stream wrote them with. `<where>` is the engine's own deparse of
the validated clause (as in the snapshot query), never request text. A row on which the
clause fails (division by zero, a value that does not cast) is `Unevaluable`: a snapshot
meeting it fails, so the shape is retired (its clients refetch, and get the snapshot's 400
while the row is there) rather than followed past a row Postgres cannot answer for
(`Where.matches`, `ClauseFails`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .catalog import TableInfo


class Unevaluable(Exception):
    """Postgres cannot be asked about this row the engine's way (a value missing from the
    change, a table whose row type no longer fits the change): the caller falls back."""


def record_literal(table: TableInfo, row: Mapping[str, object], referenced: frozenset[str]) -> str:
    """The row as a literal of the table's row type: every column in order, quoted (`\\`
    and `"` escaped), NULL as nothing. A column the change lacks (a generated one, which
    the stream does not send) is NULL, unless the clause reads it."""
    parts = []
    for col in table.columns:
        if col.name not in row:
            if col.name in referenced:
                raise Unevaluable(f"the change has no value for column {col.name!r}")
            parts.append("")
            continue
        value = row[col.name]
        if value is None:
            parts.append("")
        elif isinstance(value, str):
            parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:  # an unchanged TOASTed value the change did not carry
            if col.name in referenced:
                raise Unevaluable(f"the change has no value for column {col.name!r}")
            parts.append("")
    return "(" + ",".join(parts) + ")"


class RowDataError(Exception):
    """The clause (or a row's cast) failed on one of the rows asked about together: ask
    about them one at a time (`row_matches`)."""


def _rowtype(table: TableInfo) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.name))


def _clause(where_sql: str) -> sql.SQL:
    return sql.SQL(where_sql.replace("%", "%%"))  # (the query has a parameter)


def _is_data_error(exc: psycopg.Error) -> bool:
    return exc.sqlstate is not None and exc.sqlstate.startswith("22")


def _unevaluable(exc: psycopg.Error) -> Unevaluable:
    return Unevaluable(f"Postgres could not evaluate the clause ({exc.sqlstate})")


async def rows_match(
    conn: AsyncConnection[Any],
    table: TableInfo,
    where_sql: str,
    referenced: frozenset[str],
    rows: Sequence[Mapping[str, object]],
) -> list[bool]:
    """Whether each row matches the clause, by Postgres, in one query (see the module
    docstring; the clause is evaluated in a scope of its own, where only the row's columns
    are visible). Raises `RowDataError` when the clause or a cast fails on some row,
    `Unevaluable` when Postgres cannot be asked this way; a connection failure
    (psycopg.OperationalError) propagates, to be retried."""
    literals = [record_literal(table, row, referenced) for row in rows]
    query = sql.SQL(
        "SELECT EXISTS (SELECT FROM (SELECT (shapegate_rows.shapegate_row::text::{}).*"
        " OFFSET 0) AS {} WHERE {}) FROM unnest(%s::text[]) WITH ORDINALITY"
        " AS shapegate_rows(shapegate_row, n) ORDER BY shapegate_rows.n"
    ).format(_rowtype(table), sql.Identifier(table.name), _clause(where_sql))
    try:
        cur = await conn.execute(query, (literals,))
        return [bool(r[0]) for r in await cur.fetchall()]
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        if _is_data_error(exc):
            raise RowDataError() from None
        raise _unevaluable(exc) from exc


async def row_matches(
    conn: AsyncConnection[Any],
    table: TableInfo,
    where_sql: str,
    referenced: frozenset[str],
    row: Mapping[str, object],
) -> bool:
    """`rows_match` for one row: a data error of the clause on it, or of the row's cast
    (the table's row type changed), is `Unevaluable` (see the module docstring)."""
    literal = record_literal(table, row, referenced)
    ask = sql.SQL(
        "SELECT EXISTS (SELECT FROM (SELECT (%s::text::{}).* OFFSET 0) AS {} WHERE {})"
    ).format(_rowtype(table), sql.Identifier(table.name), _clause(where_sql))
    try:
        cur = await conn.execute(ask, (literal,))
        got = await cur.fetchone()
        return bool(got and got[0])
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        if not _is_data_error(exc):
            raise _unevaluable(exc) from exc
    try:  # the clause's own error, or the row's cast?
        await conn.execute(
            sql.SQL("SELECT (%s::text::{}) IS NULL").format(_rowtype(table)), (literal,)
        )
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        raise Unevaluable(
            f"the change does not read as a row of the table ({exc.sqlstate})"
        ) from exc
    raise Unevaluable(
        "the where clause fails on a row (a data error): Postgres fails the shape's"
        " snapshot with it, so the shape is retired"
    )
