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
from collections.abc import Iterable, Iterator, Mapping

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, NullTestType, SetOperation
from pglast.parser import ParseError, fingerprint, scan
from pglast.printers import node_printer
from pglast.printers.dml import boolean_test_printer
from pglast.stream import RawStream

from sync_engine.pg.types import TEXT, PgType

from .depth import runs_longer_than, too_deep_message, tree_depth
from .errors import PREFIX, WhereError
from .resolution import CAST_TARGET_NAMES

MAX_WHERE_SIZE = 65_536
MAX_WHERE_DEPTH = 100  # the proxy forwards clauses of up to 64 (proxy/limits/clause.py)
MAX_TOKEN_RUN = 1_000


def construct_name(node: object) -> str:
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


def refuse_unencodable(text: str) -> None:
    """A string no UTF-8 can hold (a lone surrogate: HTTP and JSON decoding never make one,
    a caller in the same process can) is refused as Postgres refuses such bytes, rather
    than failing pglast's encoding with a UnicodeEncodeError. So is the zero character
    (a parameter holding U+0000), which no Postgres text holds: it was refused as "cannot be
    written back as SQL unambiguously" (libpg_query reads a string up to it)."""
    if "\0" in text:
        raise WhereError('invalid byte sequence for encoding "UTF8": 0x00')
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise WhereError('invalid byte sequence for encoding "UTF8"') from None


#: Text that may hold a number only Postgres 16's lexer reads (`0x10`, `0o17`, `0b101`,
#: `1_000`, `1_000.5`, `1e1_0`): a digit before `_`, or a `0x` / `0o` / `0b` prefix.
_NEWER_NUMBER_HINT = re.compile(r"[0-9]_|0[xXoObB]")
#: What Postgres 15's lexer reports as "trailing junk" there: the longest number (integer,
#: decimal or real) at the token's start and the identifier glued to it (`0` + `x10`,
#: `1` + `_000` of `1_000.5`, `1.5e0` + `_1`), as its `*_junk` rules match.
_PG15_JUNK = re.compile(
    r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*"
)


def refuse_newer_numbers(statement: str) -> None:
    """Refuse a numeric literal that only Postgres 16 and later read, in Postgres 15's words.

    pglast's grammar is Postgres 17's: `id = 0x10` parsed as `id = 16` and `1_000.5` as a
    numeric, and the engine served them, while Postgres 15 (the source the engine is built
    and tested against) refuses the same clause: `trailing junk after numeric literal at or
    near "0x10"`, and so would the client's own SQL of it. The engine cannot ask which
    grammar the source has at parse time, so it reads Postgres 15's, which every later
    version also accepts. Checked on the tokens (a string '0x10' is no number); the
    regular expression keeps the scan off nearly every clause."""
    if not _NEWER_NUMBER_HINT.search(statement):
        return
    try:
        tokens = scan(statement)
    except ParseError:
        return  # the parse reports it
    for token in tokens:
        if token.name not in ("ICONST", "FCONST"):
            continue
        text = statement[token.start : token.end + 1]
        if "_" in text or (len(text) > 1 and text[0] == "0" and text[1] in "xXoObB"):
            junk = _PG15_JUNK.match(statement, token.start)
            near = junk.group() if junk else text
            message = f'trailing junk after numeric literal at or near "{near}"'
            raise WhereError(f"At location {token.start}: {message}")


def blank_line_comments(statement: str) -> str:
    """`statement` with each `-- ...` comment made spaces (the same length: locations keep).
    Postgres 15's scanner reads such a comment as whitespace even between the parts of a
    string constant continued on a later line (`'ali' -- note<newline>'ce'` is 'alice');
    pglast's (libpg_query's) refused that with "syntax error at or near 'ce'". Spaces are
    what the comment means to Postgres everywhere else too. A statement the scanner
    refuses is left as it is (the parse then says why)."""
    if "--" not in statement:
        return statement
    try:
        tokens = scan(statement)
    except (ParseError, ValueError):
        return statement
    chars = list(statement)
    for token in tokens:
        if token.name == "SQL_COMMENT":
            chars[token.start : token.end + 1] = " " * (token.end + 1 - token.start)
    return "".join(chars)


def parse_clause(sql: str, prefix: str = PREFIX) -> ast.SelectStmt:
    """Parse `prefix + sql` with pglast, rejecting extra statements and clauses.

    Syntax errors say where as Electric does: `At location N` with N the 0-based character
    offset of the offending token in the statement parsed, `SELECT 1 WHERE <clause>` (so
    `1 x 1` is "At location 17", the figure Electric's own client integration suite expects).
    """
    what = "WHERE clause" if prefix == PREFIX else "ORDER BY clause"
    if len(sql) > MAX_WHERE_SIZE:
        raise WhereError(f"{what} is bigger than maximum size ({MAX_WHERE_SIZE} bytes)")
    if runs_longer_than(sql, MAX_TOKEN_RUN):
        raise WhereError(too_deep_message(what, MAX_WHERE_DEPTH))
    refuse_unencodable(sql)
    statement = blank_line_comments(prefix + sql)
    refuse_newer_numbers(statement)
    try:
        stmts = parse_sql(statement)
    except ParseError as e:
        message = e.args[0] if e.args else str(e)
        index = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) else None
        if index is None and "at end of input" in str(message):
            index = len(statement)
        if index is None:
            raise WhereError(str(message)) from None
        raise WhereError(f"At location {index}: {message}") from None
    except RecursionError:
        raise WhereError(too_deep_message(what, MAX_WHERE_DEPTH)) from None
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
    root = stmt.whereClause if prefix == PREFIX else stmt.sortClause
    if tree_depth(root, stop_after=MAX_WHERE_DEPTH) > MAX_WHERE_DEPTH:
        raise WhereError(too_deep_message(what, MAX_WHERE_DEPTH))
    if "$" in sql:
        _refuse_typed_params(root)
    return stmt


def _refuse_typed_params(root: ast.Node) -> None:
    """Refuse `int8 $1` (a type name before a `$n`) as Postgres does: "syntax error at or
    near "$1"". Postgres reads `type 'string'` only with a string; libpg_query's grammar
    also takes a `$n` there (pg_stat_statements writes constants as `$n`), so the engine
    served `i8 = int8 $1` (as `CAST($1 AS int8)`), a clause that fails as written in any
    Postgres. Told apart from `$1::int8` and `CAST($1 AS int8)` (the same node) by order:
    only in this form does the type name come before the parameter."""
    for node in walk(root):
        if not isinstance(node, ast.TypeCast) or not isinstance(node.arg, ast.ParamRef):
            continue
        param, type_name = node.arg.location, getattr(node.typeName, "location", None)
        if isinstance(param, int) and isinstance(type_name, int) and type_name < param:
            raise WhereError(f'At location {param}: syntax error at or near "${node.arg.number}"')


class SqlStream(RawStream):
    r"""pglast's RawStream, but a string constant holding a backslash is written as an
    escape string (`E'a\\b'` for a\b), which Postgres reads the same whatever
    `standard_conforming_strings` says. A database or role may set it `off`, and then
    Postgres reads a backslash in a plain '...' as an escape: the deparse of the parameter
    `\' AS text)) OR true) OR true --` closed its string early, and a subset's where ran
    `... OR true` outside the shape's where (every row of the table)."""

    def write_quoted_string(self, s: str) -> None:
        if "\\" in s:
            escaped = s.replace("\\", "\\\\").replace("'", "''")
            self.write(f"E'{escaped}'")  # type: ignore[no-untyped-call]
        else:
            super().write_quoted_string(s)  # type: ignore[no-untyped-call]


_SAME_LEVEL_AS_IS = (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT)


def _needs_parentheses_under_is(arg: object) -> bool:
    """Whether `arg` must be parenthesized before IS [NOT] TRUE / NULL: pglast wrote
    `(b IS DISTINCT FROM true) IS NOT TRUE` as `b IS DISTINCT FROM TRUE IS NOT TRUE`
    (which Postgres reads as `b IS DISTINCT FROM (TRUE IS NOT TRUE)`) and `(NOT a) IS
    NULL` as `NOT a IS NULL`; `deparse` refused such clauses. IS, IS DISTINCT FROM and NOT
    bind as loosely as or more loosely than IS does; comparisons, LIKE, IN and BETWEEN
    bind tighter, and stay as pglast writes them (their SQL text unchanged)."""
    if isinstance(arg, (ast.BoolExpr, ast.BooleanTest, ast.NullTest)):
        return True
    return isinstance(arg, ast.A_Expr) and arg.kind in _SAME_LEVEL_AS_IS


@node_printer(ast.BooleanTest, override=True)  # type: ignore[untyped-decorator]
def _boolean_test(node: ast.BooleanTest, output: RawStream) -> None:
    """pglast's printer, with the argument parenthesized where IS would take less of it."""
    parent = node.ancestors[0]  # type: ignore[attr-defined]  # (pglast's printing context)
    with output.expression(isinstance(parent, ast.A_Expr)):
        with output.expression(_needs_parentheses_under_is(node.arg)):
            output.print_node(node.arg)
        output.write(" IS ")
        boolean_test_printer(node.booltesttype, node, output)


@node_printer(ast.NullTest, override=True)  # type: ignore[untyped-decorator]
def _null_test(node: ast.NullTest, output: RawStream) -> None:
    """pglast's printer, with the argument parenthesized where IS would take less of it."""
    with output.expression(_needs_parentheses_under_is(node.arg)):
        output.print_node(node.arg)
    output.write(" IS")
    if node.nulltesttype == NullTestType.IS_NOT_NULL:
        output.write(" NOT")
    output.write(" NULL")


def sql_text(node: ast.Node) -> str:
    """The node as SQL text (pglast's deparser; no check, see `deparse`)."""
    text: str = SqlStream()(node)  # type: ignore[no-untyped-call]
    return text


#: Why a clause whose printing does not parse back to its own tree is refused (`deparse`,
#: and the proxy's check of what it forwards).
NOT_WRITTEN_BACK = (
    "this combination of operators cannot be written back as SQL unambiguously; "
    "rewrite it (e.g. split IS DISTINCT FROM / IS [NOT] TRUE into separate tests)"
)


def parses_back(node: ast.Node, text: str, source: str | None = None) -> bool:
    """Whether `text`, `node` as printed, parses back to `node`.

    pglast's deparser drops parentheses Postgres needs around some operators of equal
    precedence (`(a IS DISTINCT FROM b) IS NOT TRUE` comes out unparseable, `(NOT b) IS
    NULL` as another clause). `source`, the text `node` was parsed from, allows the quick
    check: libpg_query fingerprints (structure, not constants or `$n` numbers) equal; only
    when they differ (or without it) are the trees compared in full."""
    try:
        original = None if source is None else blank_line_comments(PREFIX + source)
        if original is not None and fingerprint(PREFIX + text) == fingerprint(original):
            return True
        again = parse_sql(PREFIX + text)[0].stmt.whereClause
    except ParseError:
        return False
    return bool(again == node)


def deparse(node: ast.Node, source: str) -> str:
    """The node as SQL, checked to parse back to the same tree (`source` is the clause the
    node was parsed from, before any `$n` substitution): a clause pglast would print as
    another is refused rather than sent to Postgres with another meaning."""
    text = sql_text(node)
    if not parses_back(node, text, source):
        raise WhereError(NOT_WRITTEN_BACK)
    return text


def child_nodes(node: ast.Node) -> Iterable[tuple[str, ast.Node | tuple[object, ...]]]:
    """(member, value) for each member of `node` holding a node or a tuple."""
    for member in node:
        value = getattr(node, member)
        if isinstance(value, (tuple, ast.Node)):
            yield member, value


def walk(root: ast.Node) -> Iterator[ast.Node]:
    """Every node under `root`, itself included (depth first, children in reverse)."""
    stack: list[object] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
        elif isinstance(node, ast.Node):
            yield node
            stack.extend(value for _, value in child_nodes(node))


def count_columns(root: ast.Node) -> dict[str, int]:
    """References per column name, so multiply-used columns get a per-row cache."""
    counts: dict[str, int] = {}
    for node in walk(root):
        if isinstance(node, ast.ColumnRef):
            field = node.fields[0] if len(node.fields) == 1 else None
            if isinstance(field, ast.String) and field.sval is not None:
                counts[field.sval] = counts.get(field.sval, 0) + 1
    return counts


def substitute_params(
    root: ast.Node, params: Mapping[str, str], types: Mapping[int, PgType]
) -> None:
    """Replace each `$n` under `root` with `CAST('<value>' AS <type>)`, a constant node."""

    def cast(node: object) -> object:
        return param_cast(node, params, types) if isinstance(node, ast.ParamRef) else node

    stack: list[object] = [root]
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
                # The tuple's other members (a sibling `col = $2` beside a bare `$1`) are
                # still to be walked: a `$n` under them must be substituted too.
                setattr(node, member, tuple(cast(v) for v in value))
                stack.extend(v for v in value if not isinstance(v, ast.ParamRef))
            else:
                stack.append(value)


def qualify_enums(root: ast.Node, schemas: Mapping[str, str]) -> None:
    """Name each enum type of `schemas` (typname -> its schema) under `root` with its
    schema, as the compiler resolved it (a cast target, or a `$n`'s type): Postgres runs
    the clause under the engine's `search_path = pg_catalog, pg_temp`, where `mood` alone
    is no type ("type mood does not exist": the snapshot failed, the shape was retired and
    made again, a 409 to every request for it)."""
    for node in walk(root):
        if not isinstance(node, ast.TypeCast) or node.typeName is None:
            continue
        names = list(node.typeName.names or ())
        if len(names) != 1:
            continue
        name = str(getattr(names[0], "sval", ""))
        schema = schemas.get(name) if name not in CAST_TARGET_NAMES else None
        if schema is not None:
            node.typeName = ast.TypeName(
                names=(ast.String(sval=schema), ast.String(sval=name)),
                typemod=-1,
                setof=False,
                pct_type=False,
                arrayBounds=node.typeName.arrayBounds,
            )


def param_cast(
    node: ast.ParamRef, params: Mapping[str, str], types: Mapping[int, PgType]
) -> ast.TypeCast:
    n = node.number
    typ = types.get(n, TEXT)
    return ast.TypeCast(
        arg=ast.A_Const(isnull=False, val=ast.String(sval=params[str(n)])),
        typeName=_type_name(typ.name, typ.array),
    )


@functools.cache
def _type_name(base: str, array: bool) -> ast.TypeName:
    """The TypeName node the parser builds for `base[]`: SQL-standard names come out
    qualified (`timestamp` is `pg_catalog.timestamp`), so `deparse`'s round trip holds.
    A name the grammar reads as another type (`char` is character(1), `decimal` numeric)
    is spelled as is, quoted by `deparse`: a `$n` of type "char" was written
    `CAST('ab' AS char)`, which a snapshot read as bpchar ('' = ' ' there)."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", base):
        try:
            stmt = parse_sql(f"SELECT NULL::{base}{'[]' if array else ''}")[0].stmt
            type_name: ast.TypeName = stmt.targetList[0].val.typeName
            if type_name.names[-1].sval == base and not type_name.typmods:
                return type_name
        except ParseError:  # a reserved word (an enum named "user"): spelled as is below
            pass
    return ast.TypeName(
        names=(ast.String(sval=base),),
        typemod=-1,
        setof=False,
        pct_type=False,
        arrayBounds=(ast.Integer(ival=-1),) if array else None,
    )
