"""How deep a client clause may nest before the proxy refuses it.

A clause of 4 KiB (the length limit in `proxy.policy.sql`) can still nest about 2,000 levels
(`- - - … n`, `NOT NOT … true`, `n+1+1+…`). pglast parses that fine, but deparsing the tree and
walking it recurse once per level in Python and end in `RecursionError` (a 500). The depth is
measured without recursion right after parsing (the engine's scan,
`sync_engine.shapes.where.depth`, with the proxy's lower limit), so such a clause is a 400 that
names the limit before any recursive code sees it. Real filters nest a handful of levels: long
`OR` / `AND` / `IN` lists are flat in the parse tree and do not count against the depth.
"""

from __future__ import annotations

from sync_engine.shapes.where import depth

#: Deepest parse tree (counted in nodes) accepted in a client where clause or ORDER BY list.
MAX_DEPTH = 64


def tree_depth(root: object, *, stop_after: int = MAX_DEPTH) -> int:
    """Nesting depth of a pglast parse tree in nodes (the engine's scan, the proxy's limit)."""
    return depth.tree_depth(root, stop_after=stop_after)


def too_deep_message(what: str, limit: int = MAX_DEPTH) -> str:
    """The 400 message for a clause over the depth limit (names the limit, echoes no SQL)."""
    return depth.too_deep_message(what, limit)
