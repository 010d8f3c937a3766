"""Parsing a clause with the real Postgres parser (pglast), and walking its AST.

`parse_clause` checks the statement is exactly `SELECT 1 WHERE <clause>` (no extra clauses,
statements or set operations); the walks are plain loops because pglast's `Visitor` costs a
third of a parse (see `child_nodes`).

Limits, each a 400 naming it: `MAX_WHERE_SIZE` characters; `MAX_TOKEN_RUN` tokens in a run
without a separator before parsing (pglast turns a left-deep chain like `n+1+1+…` of ~30,000
levels into a C stack overflow, a crashed process); `MAX_WHERE_DEPTH` nodes of nesting after
parsing, so the compiler, the evaluator and the deparser (all recursive) stay far from
Python's recursion limit. Long `AND` / `OR` / `IN (…)` lists are flat and do not count.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import SetOperation
from pglast.parser import ParseError, fingerprint
from pglast.stream import RawStream

from .errors import PREFIX, WhereError

MAX_WHERE_SIZE = 65_536
MAX_WHERE_DEPTH = 100  # the proxy forwards clauses of up to 64 (proxy/limits/clause.py)
MAX_TOKEN_RUN = 1_000


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
    """Parse `prefix + sql` with pglast, rejecting extra statements and clauses.

    Syntax errors say where as Electric does: `At location N` with N the 1-based character
    position in the statement parsed, `SELECT 1 WHERE <clause>` (libpg_query's cursorpos).
    """
    what = "WHERE clause" if prefix == PREFIX else "ORDER BY clause"
    if len(sql) > MAX_WHERE_SIZE:
        raise WhereError(f"{what} is bigger than maximum size ({MAX_WHERE_SIZE} bytes)")
    if longest_token_run(sql) > MAX_TOKEN_RUN:
        raise WhereError(_too_deep(what, MAX_WHERE_DEPTH))
    statement = prefix + sql
    try:
        stmts = parse_sql(statement)
    except ParseError as e:
        message = e.args[0] if e.args else str(e)
        index = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) else None
        if index is None and "at end of input" in str(message):
            index = len(statement)
        if index is None:
            raise WhereError(str(message)) from None
        raise WhereError(f"At location {index + 1}: {message}") from None
    except RecursionError:
        raise WhereError(_too_deep(what, MAX_WHERE_DEPTH)) from None
    if len(stmts) > 1 and prefix == PREFIX:
        raise WhereError('unescaped ";" causing statement split')  # Electric's words
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
    if tree_depth(stmt.whereClause if prefix == PREFIX else stmt.sortClause) > MAX_WHERE_DEPTH:
        raise WhereError(_too_deep(what, MAX_WHERE_DEPTH))
    return stmt


def _too_deep(what: str, limit: int) -> str:
    return f"{what} is nested too deeply (more than {limit} levels); simplify the expression"


def tree_depth(root: object, stop_after: int = MAX_WHERE_DEPTH) -> int:
    """Nesting depth of a pglast tree in nodes, without recursion; stops past `stop_after`."""
    deepest = 0
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.Node):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_after:
                    return deepest
            stack.extend((getattr(node, attr), depth) for attr in node.__slots__)
        elif isinstance(node, tuple):
            stack.extend((item, depth) for item in node)
    return deepest


_SEPARATORS = frozenset({",", "and", "or", ";"})
_OPEN, _CLOSE = "([", ")]"


def longest_token_run(sql: str) -> int:
    """An upper bound on how deep `sql` can nest, from its tokens alone (before parsing).

    Counts, per bracket level, the tokens since the last separator (`,`, AND, OR) plus the
    bracket depth. Literals, quoted identifiers and comments are one token each; the scan
    follows Postgres's lexer closely enough for that (E'' escapes, '' and "" doubling,
    $tag$ quoting, nested /* */ comments), and miscounting only ever over-counts."""
    runs = [0]
    best = 0
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if ch == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
            continue
        if ch in _OPEN:
            runs[-1] += 1
            runs.append(0)
            i += 1
        elif ch in _CLOSE:
            if len(runs) > 1:
                runs.pop()
            i += 1
            continue
        elif ch == "," or ch == ";":
            runs[-1] = 0
            i += 1
            continue
        elif ch == "'" or ch == '"':
            escapes = (
                ch == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not _word(sql[i - 2]))
            )
            i = _skip_quoted(sql, i, ch, escapes)
            runs[-1] += 1
        elif ch == "$" and i + 1 < n and not sql[i + 1].isdigit():
            i = _skip_dollar_quoted(sql, i)
            runs[-1] += 1
        elif _word(ch):
            start = i
            while i < n and (_word(sql[i]) or sql[i] == "$"):
                i += 1
            if sql[start:i].lower() in _SEPARATORS:
                runs[-1] = 0
                continue
            runs[-1] += 1
        else:
            i += 1
            runs[-1] += 1
        best = max(best, runs[-1] + len(runs) - 1)
    return best


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ord(ch) > 127


def _skip_quoted(sql: str, i: int, quote: str, escapes: bool) -> int:
    """Past the literal or identifier opening at `i` (doubled quotes; E'' backslashes)."""
    i += 1
    while i < len(sql):
        ch = sql[i]
        if escapes and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _skip_dollar_quoted(sql: str, i: int) -> int:
    end_tag = sql.find("$", i + 1)
    tag = sql[i : end_tag + 1] if end_tag > 0 else ""
    if not tag or not all(_word(c) for c in tag[1:-1]):
        return i + 1  # not a dollar quote: count the `$` alone
    close = sql.find(tag, end_tag + 1)
    return len(sql) if close < 0 else close + len(tag)


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def deparse(node: Any, source: str) -> str:
    """The node as SQL, checked to parse back to the same tree (`source` is the clause the
    node was parsed from, before any `$n` substitution).

    pglast's deparser drops parentheses Postgres needs around some operators of equal
    precedence (`(a IS DISTINCT FROM b) IS NOT TRUE` comes out unparseable); such a
    clause is refused rather than sent to Postgres with another meaning. The quick check
    compares libpg_query fingerprints (structure, not constants: a `$n` and the literal
    that replaces it agree); only when they differ are the trees compared in full."""
    text = RawStream()(node)
    try:
        if fingerprint(PREFIX + text) == fingerprint(PREFIX + source):
            return text
        again = parse_sql(PREFIX + text)[0].stmt.whereClause
    except ParseError:
        again = None
    if again != node:
        raise WhereError(
            "this combination of operators cannot be written back as SQL unambiguously; "
            "rewrite it (e.g. split IS DISTINCT FROM / IS [NOT] TRUE into separate tests)"
        )
    return text


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
    return ast.TypeCast(
        arg=ast.A_Const(isnull=False, val=ast.String(sval=params[str(n)])),
        typeName=_type_name(base, array),
    )


@functools.cache
def _type_name(base: str, array: bool) -> Any:
    """The TypeName node the parser builds for `base[]`: SQL-standard names come out
    qualified (`timestamp` is `pg_catalog.timestamp`), so `deparse`'s round trip holds."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", base):
        try:
            stmt = parse_sql(f"SELECT NULL::{base}{'[]' if array else ''}")[0].stmt
            return stmt.targetList[0].val.typeName
        except ParseError:  # a reserved word (an enum named "user"): spelled as is below
            pass
    return ast.TypeName(
        names=(ast.String(sval=base),),
        typemod=-1,
        setof=False,
        pct_type=False,
        arrayBounds=(ast.Integer(ival=-1),) if array else None,
    )
