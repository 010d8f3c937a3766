"""Whose part of a where the engine refused: the client's own, or the policy's.

A rule's enforced filter goes to the engine as `where` (alone, or first in `guarded_and`
with the client's clause), with its claims bound as params. When a claim's value does not
fit where the filter uses it (`owner_id = {{sub}}` on an int column and a `sub` of "abc", a
number bound where the column is a uuid, a date or a boolean), the engine answers 400
`{"errors":{"where":["At location 4: invalid input syntax for type integer: \"abc\""]}}`:
about a where the client never wrote, at a position in a filter it may not see. Whether a
value casts to a column's type is Postgres's question, answered by the engine with
Postgres's rules; the proxy does not guess it before forwarding. It reads the engine's
answer instead: the location the engine names is a node of the tree the engine parsed (the
engine's own parser, `sync_engine.shapes.where.parse`, is used here on the same text, so the
locations are the same), and that node lies either in the client's clause or in the policy's
filter. Only the latter is `blame`d: on the claims bound under that node (a 403
`claim_unusable`) when the refusal is of their values, or on the policy's own text when none
is bound there or the engine refuses the node whatever they hold (`js = {{s}}` on a jsonb
column: a 400 `policy_filter_refused`). The client's own errors are left to the engine's
words (`proxy.policy.sql.remap_where_error`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType

from sync_engine.shapes.where.errors import PREFIX, WhereError
from sync_engine.shapes.where.parse import parse_clause, walk


@dataclass(frozen=True, slots=True)
class PolicyWhere:
    """The where a rule with an enforced filter sent to the engine: what `blame` needs to
    tell the policy's part from the client's. Made with the decision, read only when the
    engine refuses the where."""

    #: The where as the engine got it.
    sql: str
    #: The client's clause was ANDed in (`guarded_and(enforced, client)`), else the where is
    #: the enforced filter alone.
    combined: bool
    #: The client's params, `$1..$k`; the enforced filter's are `$k+1..`, `claim_paths`' order.
    client_params: int
    claim_paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Blame:
    """An engine error located in the policy's filter."""

    #: The claims bound under the node the engine named, in order (empty: none is, and the
    #: policy's own text is what the engine refused).
    claims: tuple[str, ...]


_LOCATED = re.compile(r"At location (\d+): ")


def blame(message: str, where: PolicyWhere) -> Blame | None:
    """The engine's error `message` about `where`, when it is located in the policy's filter;
    None when it is the client's (or says no location, or the where is not as expected)."""
    match = _LOCATED.match(message)
    if match is None:
        return None
    at = int(match.group(1)) + len(PREFIX)
    try:
        clause = parse_clause(where.sql).whereClause
    except (WhereError, RecursionError):
        return None
    parts = _policy_parts(clause, combined=where.combined)
    if parts is None:
        return None
    found = False
    numbers: set[int] = set()
    for part in parts:
        for node in walk(part):
            if getattr(node, "location", None) == at:
                found = True
                if _about_values(node, message):
                    numbers.update(n.number for n in walk(node) if isinstance(n, ast.ParamRef))
    if not found:
        return None
    first = where.client_params + 1
    paths = where.claim_paths
    claims = (paths[n - first] for n in sorted(numbers) if 0 <= n - first < len(paths))
    return Blame(tuple(dict.fromkeys(claims)))


#: What the engine says of a node over a column when a VALUE under it is refused (a LIKE
#: pattern ending in its escape, `{{n}} + i4` overflowing, a cast inside a function).
_VALUE_WORDS = re.compile(
    r"invalid input syntax|out of range|malformed array literal|by zero|LIKE pattern|escape"
)


def _about_values(node: ast.Node, message: str) -> bool:
    """Whether the engine's refusal of `node` is of the values bound under it (a claim that
    does not fit), not of the filter's own text whatever they hold: the node is a `$n` (or
    a cast of one), or has no column under it (`100 / {{n}}`, `{{a}} + 1`: the claims are
    all it is made of), or the engine's words are about a value. `js = {{s}}` on a jsonb
    column ("JSON operators are not supported (jsonb =)", at the `=`) is the filter's own:
    no claim would make the engine take it."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return True
    if not any(isinstance(n, ast.ColumnRef) for n in walk(node)):
        return True
    return _VALUE_WORDS.search(message) is not None


def _policy_parts(clause: object, *, combined: bool) -> list[ast.Node] | None:
    """The subtrees of the where that are the policy's filter: the whole clause, or in
    `(E) AND COALESCE(NULLIF((E) IS TRUE, true), (C))` both copies of E (the parser flattens
    an E that is an AND into the top AND's arguments)."""
    if not isinstance(clause, ast.Node):
        return None
    if not combined:
        return [clause]
    if not isinstance(clause, ast.BoolExpr) or clause.boolop != BoolExprType.AND_EXPR:
        return None
    *first, guard = clause.args
    if not first or not isinstance(guard, ast.CoalesceExpr) or len(guard.args) != 2:
        return None
    nullif = guard.args[0]
    if not isinstance(nullif, ast.A_Expr) or nullif.kind != A_Expr_Kind.AEXPR_NULLIF:
        return None
    test = nullif.lexpr
    if not isinstance(test, ast.BooleanTest) or not isinstance(test.arg, ast.Node):
        return None
    return [*first, test.arg]
