"""The public entry points: `parse_where` (-> `Where`) and `parse_order_by`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pglast import ast
from pglast.enums import SortByDir

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.types import BOOL, UNKNOWN
from sync_engine.pg.values import UnrepresentableValue, Value

from .compiler import Compiler
from .errors import WhereError
from .expr import Eval
from .parse import construct_name, count_columns, deparse, parse_clause, sql_text, substitute_params


@dataclass(frozen=True)
class Where:
    """A validated, compiled where clause (see the package docstring)."""

    source: str
    sql: str
    referenced_columns: frozenset[str]
    index: tuple[str, frozenset[Value]] | None
    _fn: Eval = field(repr=False, compare=False)

    def value(self, row: Mapping[str, str | None]) -> object:
        """The clause's SQL value for `row`: True, False or None (NULL), unlike `matches`
        which folds NULL into "no match". Errors propagate (Postgres would fail the query)."""
        return self._fn(row, {})

    def matches(self, row: Mapping[str, str | None]) -> bool:
        """True only when the clause is SQL-true for `row` (Postgres text values).

        A row on which the clause fails (division by zero, overflow, a value that does not
        cast) does not match: Postgres would have failed the whole query instead, and a
        snapshot meeting such a row fails with a 400, so the shape never holds it. Electric
        does the same (`WhereClause.includes_record?` is false on an evaluation error).
        Nothing else raised here may stop the replication stream: every other exception is
        "no match".

        Raises `UnrepresentableValue` when `row` holds a value Postgres accepts but the engine
        cannot represent (a BC date, a year past 9999): the answer is unknown, so the caller
        must not guess (the replicator rotates the shape; its new snapshot is exact).
        """
        try:
            return self._fn(row, {}) is True
        except UnrepresentableValue:
            raise
        except Exception:
            return False


def parse_where(
    sql: str,
    params: Mapping[str, str],
    columns: Mapping[str, ColumnInfo],
    *,
    allow_enums: bool = False,
    allow_subqueries: bool = False,
    live: bool = True,
) -> Where:
    """Parse and validate a shape's where clause against the table's columns.

    `live=False` is for a clause only Postgres evaluates (a subset query): what is refused
    only because live filtering could not reproduce it (text ordering or case mapping under
    a collation the engine does not know) is accepted, and `matches` must not be used."""
    stmt = parse_clause(sql)
    clause = stmt.whereClause
    if clause is None:
        raise WhereError("malformed query ending with SQL clauses")
    compiler = Compiler(
        params,
        columns,
        allow_enums=allow_enums,
        allow_subqueries=allow_subqueries,
        ref_counts=count_columns(clause),
        live=live,
    )
    expr = compiler.compile(clause)
    if expr.type == UNKNOWN and expr.text is not None:
        expr = compiler.coerce(expr, BOOL)
    if expr.type != BOOL:
        raise WhereError("WHERE clause must return a boolean")
    if params:  # without params, a `$n` has already failed to compile
        substitute_params(stmt, params, compiler.param_types)
    text = deparse(stmt.whereClause, sql)
    fn = expr.fn
    if expr.is_const:
        value = expr.value
        fn = lambda _row, _cache: value  # noqa: E731
    return Where(
        source=text,
        sql=text,
        referenced_columns=frozenset(compiler.referenced),
        index=expr.index,
        _fn=fn,
    )


def parse_order_by(sql: str, columns: Mapping[str, ColumnInfo]) -> str:
    """Validate a subset ORDER BY (plain columns, ASC/DESC, NULLS FIRST/LAST); canonical SQL."""
    stmt = parse_clause(sql, "SELECT 1 ORDER BY ")
    prefix_len = len("SELECT 1 ORDER BY ")
    if stmt.whereClause is not None or not stmt.sortClause:
        raise WhereError("malformed query ending with SQL clauses")
    parts = []
    for sort in stmt.sortClause:
        node = sort.node
        loc = getattr(node, "location", None)
        at = ""
        if isinstance(loc, int) and loc >= prefix_len:
            at = f"At location {loc - prefix_len}: "
        if isinstance(node, ast.ParamRef):
            raise WhereError(f"{at}parameter ${node.number} is not supported in ORDER BY clauses")
        if not isinstance(node, ast.ColumnRef):
            raise WhereError(
                f"{at}{construct_name(node)} expressions are not allowed in ORDER BY clauses"
            )
        names = [getattr(f, "sval", "*") for f in node.fields]
        if len(names) != 1 or names[0] not in columns:
            raise WhereError(f"{at}unknown reference {'.'.join(names)}")
        if sort.sortby_dir == SortByDir.SORTBY_USING:
            raise WhereError(f"{at}ORDER BY ... USING is not allowed in ORDER BY clauses")
        parts.append(sql_text(sort))
    return ", ".join(parts)
