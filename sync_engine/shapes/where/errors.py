"""WhereError, the one exception of the package, and clause-relative error positions.

Clauses are parsed inside `PREFIX + clause`; pglast reports positions in that statement, and
`error_at` turns a node's location into the "At location N: ..." prefix clients see.
"""

from __future__ import annotations

PREFIX = "SELECT 1 WHERE "


class WhereError(ValueError):
    """A where clause the engine cannot accept; `str(e)` is the message for the client."""

    located: bool = False


def error_at(message: str, node: object = None) -> WhereError:
    """Build an error, prefixed with the clause-relative location of `node` when known."""
    loc = getattr(node, "location", None) if node is not None else None
    if isinstance(loc, int) and loc >= len(PREFIX):
        error = WhereError(f"At location {loc - len(PREFIX)}: {message}")
        error.located = True
        return error
    return WhereError(message)
