"""How deep a client clause may nest before the proxy refuses it.

A clause of 4 KiB (the length limit in `proxy.policy.sql`) can still nest about 2,000 levels
(`- - - … n`, `NOT NOT … true`, `n+1+1+…`). pglast parses that fine, but deparsing the tree and
walking it recurse once per level in Python and end in `RecursionError` (a 500). The depth is
measured here without recursion, right after parsing, so such a clause is a 400 that names
the limit before any recursive code sees it. Real filters nest a handful of levels: long
`OR` / `AND` / `IN` lists are flat in the parse tree and do not count against the depth.
"""

from __future__ import annotations

from pglast import ast

#: Deepest parse tree (counted in nodes) accepted in a client where clause or ORDER BY list.
MAX_DEPTH = 64


def tree_depth(root: object, *, stop_after: int = MAX_DEPTH) -> int:
    """Nesting depth of a pglast parse tree in nodes, computed without recursion.

    Stops counting once `stop_after` is exceeded (the caller refuses the clause anyway), so a
    pathological tree costs at most one pass over its first `stop_after + 1` levels.
    """
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
        elif isinstance(node, tuple | list):
            stack.extend((item, depth) for item in node)
    return deepest


def too_deep_message(what: str, limit: int = MAX_DEPTH) -> str:
    """The 400 message for a clause over the depth limit (names the limit, echoes no SQL)."""
    return f"{what} is nested too deeply (more than {limit} levels); simplify the expression"
