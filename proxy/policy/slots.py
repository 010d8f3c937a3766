"""Which claims of a compiled filter Postgres reads as one value, whatever their text.

A string claim starting with `{` or `[` is text in Postgres's array syntax: bound where the
filter reads an array (`org_id = ANY({{orgs}})`, `tags && {{tags}}`) it would be many values
from one claim, so `evaluate` refuses it there. Where the claim is an operand of a comparison
(`t = {{s}}`, `t IN ({{s}}, {{s2}})`, `d <= {{s}}`, `BETWEEN`, `LIKE`, `IS [NOT] DISTINCT
FROM`, the left side of `= ANY(...)`, `IS NULL`), bare or cast to a type that is no array
(`{{s}}::int = i`), the claim is one value even if the column is an array: `tags = '{a,b}'` compares
the whole array, as the rule says. There it is bound as is (a parameter, never SQL text).
Every other place (a function's argument, `@>`, `||`, an ARRAY[...] item...) is left to the
refusal: the proxy knows no column types, so it cannot tell an array read there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pglast import ast, parse_sql
from pglast.enums.parsenodes import A_Expr_Kind

from sync_engine.shapes.where.parse import blank_line_comments

_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_LIKES = frozenset({"~~", "~~*", "!~~", "!~~*"})
_WHOLE_KINDS = frozenset(
    {
        A_Expr_Kind.AEXPR_DISTINCT,
        A_Expr_Kind.AEXPR_NOT_DISTINCT,
        A_Expr_Kind.AEXPR_IN,
        A_Expr_Kind.AEXPR_BETWEEN,
        A_Expr_Kind.AEXPR_NOT_BETWEEN,
        A_Expr_Kind.AEXPR_BETWEEN_SYM,
        A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM,
    }
)


def _operand(node: object) -> ast.ParamRef | None:
    """`node` if it is a `$n`, bare or cast to types that are no arrays (`$1::int`)."""
    while isinstance(node, ast.TypeCast):
        if node.typeName is None or node.typeName.arrayBounds:
            return None
        node = node.arg
    if isinstance(node, ast.FuncCall):
        # `x LIKE $1 ESCAPE '#'` is `x LIKE like_escape($1, '#')`: the text pattern
        names = [n.sval for n in node.funcname]
        if names[-1:] == ["like_escape"] and names[:-1] in ([], ["pg_catalog"]) and node.args:
            return _operand(node.args[0])
    return node if isinstance(node, ast.ParamRef) else None


def _params(node: object) -> Iterator[ast.ParamRef]:
    """The `$n` that `node` is, or the items of a list (IN, BETWEEN) are, as operands."""
    for item in node if isinstance(node, tuple | list) else (node,):
        ref = _operand(item)
        if ref is not None:
            yield ref


def _single_value_refs(node: ast.Node) -> Iterator[ast.ParamRef]:
    """The `$n` that are operands of `node`, a test whose answer is a boolean, each read by
    it as one value: nothing of their text flows on into an array."""
    if isinstance(node, ast.A_Expr):
        op = node.name[-1].sval if node.name else None
        if (
            (node.kind == A_Expr_Kind.AEXPR_OP and op in _COMPARISONS)
            or (node.kind in (A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE) and op in _LIKES)
            or node.kind in _WHOLE_KINDS
        ):
            yield from _params(node.lexpr)
            yield from _params(node.rexpr)
        elif node.kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
            yield from _params(node.lexpr)  # (the right side is the array)
    elif isinstance(node, ast.NullTest):
        yield from _params(node.arg)


def _walk(node: object) -> Iterator[ast.Node]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
            stack.extend(getattr(item, attr) for attr in item.__slots__)
        elif isinstance(item, tuple | list):
            stack.extend(item)


_ARRAY_OPERATORS = frozenset({"<@", "@>", "&&"})


def _array_operand(node: object) -> ast.ParamRef | None:
    """`node` if it is a `$n` read whole as an array: bare, or cast to an array type
    (`$1::text[]`), and nothing else around it."""
    if isinstance(node, ast.TypeCast):
        if node.typeName is None or not node.typeName.arrayBounds:
            return None
        node = node.arg
        while isinstance(node, ast.TypeCast) and node.typeName and node.typeName.arrayBounds:
            node = node.arg
    return node if isinstance(node, ast.ParamRef) else None


def _array_refs(node: ast.Node) -> Iterator[ast.ParamRef]:
    """The `$n` that `node` reads whole as an array: the right side of `= ANY(...)` /
    `ALL(...)`, an operand of `<@`, `@>`, `&&`, or a cast to an array type anywhere."""
    sides: list[object] = []
    if isinstance(node, ast.A_Expr):
        op = node.name[-1].sval if node.name else None
        if node.kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
            sides = [node.rexpr]
        elif node.kind == A_Expr_Kind.AEXPR_OP and op in _ARRAY_OPERATORS:
            sides = [node.lexpr, node.rexpr]
    elif isinstance(node, ast.TypeCast) and node.typeName and node.typeName.arrayBounds:
        # (a cast inside ANY/&& is the same use: counted once, by the set below)
        sides = [node]
    for side in sides:
        ref = _array_operand(side)
        if ref is not None:
            yield ref


def claim_slots(sql: str) -> tuple[frozenset[int], frozenset[int]]:
    """`(single_value_slots(sql), list_slots(sql))` from one parse and one walk of the
    compiled filter: a config load computes both for every rule (two parses were ~20% of
    loading 5,000 rules)."""
    where = parse_sql(blank_line_comments(f"SELECT 1 WHERE {sql}"))[0].stmt.whereClause
    nodes = list(_walk(where))
    uses = Counter(node.number for node in nodes if isinstance(node, ast.ParamRef))
    single = Counter(ref.number for node in nodes for ref in _single_value_refs(node))
    arrays = {id(ref): ref.number for node in nodes for ref in _array_refs(node)}
    read = Counter(arrays.values())
    return (
        frozenset(n - 1 for n, count in uses.items() if single[n] == count),
        frozenset(n - 1 for n, count in uses.items() if read[n] == count),
    )


def list_slots(sql: str) -> frozenset[int]:
    """Indexes `i` (of `$i+1`) whose every use reads the claim whole as an array: there a
    JSON-list claim is bound as an array literal. Anywhere else (one value, a function's
    argument, `||`...) a list claim is refused: bound there as the text `{"a","b"}` it was
    compared as one value (`org_id <> lower({{org}})` served every org, review 14:27)."""
    return claim_slots(sql)[1]


def single_value_slots(sql: str) -> frozenset[int]:
    """Indexes `i` (of `$i+1`) of the compiled filter `sql` whose every use is one value."""
    return claim_slots(sql)[0]
