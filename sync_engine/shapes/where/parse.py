"""Parsing a clause with the real Postgres parser (pglast), and walking its AST.

`parse_clause` checks the statement is exactly `SELECT 1 WHERE <clause>` (no extra clauses,
statements or set operations); the walks are plain loops because pglast's `Visitor` costs a
third of a parse (see `child_nodes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import SetOperation
from pglast.parser import ParseError

from .errors import PREFIX, WhereError

MAX_WHERE_SIZE = 65_536


def construct_name(node: Any) -> str:
    names = {
        "CaseExpr": "CASE expression",
        "SubLink": "subquery",
        "RowExpr": "row expression",
        "A_Star": "*",
        "CollateClause": "COLLATE",
        "BitString": "bit string",
        "GroupingFunc": "GROUPING",
        "XmlExpr": "XML expression",
        "SetToDefault": "DEFAULT",
    }
    return names.get(type(node).__name__, type(node).__name__)


def parse_clause(sql: str, prefix: str = PREFIX) -> Any:
    """Parse `prefix + sql` with pglast, rejecting extra statements and clauses."""
    if len(sql) > MAX_WHERE_SIZE:
        raise WhereError(f"WHERE clause is bigger than maximum size ({MAX_WHERE_SIZE} bytes)")
    try:
        stmts = parse_sql(prefix + sql)
    except ParseError as e:
        message = e.args[0] if e.args else str(e)
        loc = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) else None
        if loc is not None and loc >= len(prefix):
            raise WhereError(f"At location {loc - len(prefix)}: {message}") from None
        raise WhereError(str(message)) from None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt):
        raise WhereError("malformed query ending with SQL clauses")
    stmt = stmts[0].stmt
    extras = (
        stmt.fromClause,
        stmt.groupClause,
        stmt.havingClause,
        stmt.windowClause,
        stmt.limitCount,
        stmt.limitOffset,
        stmt.lockingClause,
        stmt.withClause,
        stmt.distinctClause,
        stmt.intoClause,
        stmt.valuesLists,
    )
    if stmt.op != SetOperation.SETOP_NONE or any(x for x in extras):
        raise WhereError("malformed query ending with SQL clauses")
    if prefix == PREFIX and (stmt.sortClause or len(stmt.targetList or ()) != 1):
        raise WhereError("malformed query ending with SQL clauses")
    return stmt


def child_nodes(node: Any) -> Iterable[tuple[str, Any]]:
    """(member, value) for each member of `node` holding a node or a tuple."""
    for member in node:
        value = getattr(node, member)
        if isinstance(value, (tuple, ast.Node)):
            yield member, value


def count_columns(root: Any) -> dict[str, int]:
    """References per column name, so multiply-used columns get a per-row cache."""
    counts: dict[str, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
            continue
        if not isinstance(node, ast.Node):
            continue
        if isinstance(node, ast.ColumnRef):
            if len(node.fields) == 1 and isinstance(node.fields[0], ast.String):
                name = node.fields[0].sval
                counts[name] = counts.get(name, 0) + 1
        stack.extend(value for _, value in child_nodes(node))
    return counts


def substitute_params(root: Any, params: Mapping[str, str], types: Mapping[int, str]) -> None:
    """Replace each `$n` under `root` with `CAST('<value>' AS <type>)`, a constant node."""

    def cast(node: Any) -> Any:
        return param_cast(node, params, types) if isinstance(node, ast.ParamRef) else node

    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
            continue
        if not isinstance(node, ast.Node):
            continue
        for member, value in list(child_nodes(node)):
            if isinstance(value, ast.ParamRef):
                setattr(node, member, cast(value))
            elif isinstance(value, tuple) and any(isinstance(v, ast.ParamRef) for v in value):
                setattr(node, member, tuple(cast(v) for v in value))
            else:
                stack.append(value)


def param_cast(node: ast.ParamRef, params: Mapping[str, str], types: Mapping[int, str]) -> Any:
    n = node.number
    typ = types.get(n, "text")
    array = typ.endswith("[]")
    base = typ[:-2] if array else typ
    base = base[5:] if base.startswith("enum:") else base
    type_name = ast.TypeName(
        names=(ast.String(sval=base),),
        typemod=-1,
        arrayBounds=(ast.Integer(ival=-1),) if array else None,
    )
    return ast.TypeCast(
        arg=ast.A_Const(isnull=False, val=ast.String(sval=params[str(n)])), typeName=type_name
    )
