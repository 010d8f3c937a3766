"""Postgres's own answer to "does this row match the shape's where clause?".

The engine evaluates where clauses itself for every replicated change, and where it cannot
read a value exactly (a date outside years 1-9999, a text cast in a form only Postgres
reads, an array with explicit bounds: `UnrepresentableValue`) it must not guess. Rotating
the shape (a fresh, exact snapshot) cannot finish while such a row keeps changing: every
new shape was rotated again before its client was up to date. So Postgres is asked
instead, for that row's values as the change carries them (not the table's current row,
which may have changed since):

    SELECT (<where>) IS TRUE FROM (SELECT ($1::text::<table>).*) AS <table>

`$1` is a bind parameter: the row's values as a record literal of the table's row type,
read back by Postgres's input functions (typmods and domains included) under the same
session settings the replication stream wrote them with. `<where>` is the engine's own
deparse of the validated clause (as in the snapshot query), never request text. A row on
which the clause fails (division by zero, a value that does not cast) does not match, as
`Where.matches` has it.
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


def _queries(table: TableInfo, where_sql: str) -> tuple[sql.Composed, sql.Composed]:
    """(the clause on a row, the row's cast alone)."""
    rowtype = sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.name))
    # The clause as it is, its `%` doubled: the query has a parameter.
    clause = sql.SQL(where_sql.replace("%", "%%"))
    ask = sql.SQL("SELECT ({}) IS TRUE FROM (SELECT (%s::text::{}).*) AS {}").format(
        clause, rowtype, sql.Identifier(table.name)
    )
    cast = sql.SQL("SELECT (%s::text::{}) IS NULL").format(rowtype)
    return ask, cast


async def rows_match(
    conn: AsyncConnection[Any],
    table: TableInfo,
    where_sql: str,
    referenced: frozenset[str],
    rows: Sequence[Mapping[str, object]],
) -> list[bool]:
    """Whether each row matches the clause, by Postgres (see the module docstring).

    Raises `Unevaluable` when a row cannot be given to Postgres as the table's row; a
    connection failure (psycopg.OperationalError) propagates, to be retried."""
    ask, cast = _queries(table, where_sql)
    answers = []
    for row in rows:
        literal = record_literal(table, row, referenced)
        try:
            cur = await conn.execute(ask, (literal,))
            got = await cur.fetchone()
            answers.append(bool(got and got[0]))
            continue
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            if exc.sqlstate is None or not exc.sqlstate.startswith("22"):
                why = f"Postgres could not evaluate the clause ({exc.sqlstate})"
                raise Unevaluable(why) from exc
        # A data error: the clause's own (no match), or the row's cast (the table changed)?
        try:
            await conn.execute(cast, (literal,))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise Unevaluable(
                f"the change does not read as a row of the table: {exc.sqlstate}"
            ) from exc
        answers.append(False)
    return answers
