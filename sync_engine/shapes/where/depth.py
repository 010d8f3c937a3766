"""How deep a where clause nests: measured without recursion, before anything recursive runs.

A clause of a few KiB can nest thousands of levels (`- - - … n`, `NOT NOT … true`,
`n+1+1+…`). pglast parses most of that, but its deparser and the engine's compiler and
evaluator recurse once per level and end in `RecursionError` (a 500), and a left-deep chain of
~30,000 levels overflows the C stack inside pglast itself (a crashed process). So:
- `longest_token_run` bounds the nesting from the tokens alone, before parsing;
- `tree_depth` measures the parsed tree, without recursion;
- `too_deep_message` is the 400 both the engine and the proxy (`proxy/limits/clause.py`, with a
  lower limit) give. Long `AND` / `OR` / `IN (…)` lists are flat and do not count.
"""

from __future__ import annotations

from pglast import ast


def too_deep_message(what: str, limit: int) -> str:
    """The 400 message for a clause over the depth limit (names the limit, echoes no SQL)."""
    return f"{what} is nested too deeply (more than {limit} levels); simplify the expression"


def tree_depth(root: object, *, stop_after: int) -> int:
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
        elif isinstance(node, tuple):  # pglast holds sequences of nodes in tuples
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


def runs_longer_than(sql: str, limit: int) -> bool:
    """Whether `longest_token_run(sql) > limit`, without the scan for a text of at most
    `limit` characters: each step of the scan that raises the run (a token, or a bracket,
    which adds a level) consumes at least one character, so the run never exceeds the
    text's length. A storm's clauses are short, and the scan cost ~10 µs each."""
    return len(sql) > limit and longest_token_run(sql) > limit


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
