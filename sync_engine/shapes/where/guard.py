"""`guarded_and`: `first AND then`, with `then` evaluated by Postgres only where `first` holds.

Postgres orders the conjuncts of a plain AND by its cost estimates, not by the text, so a
cheap `then` runs first on every row the scan meets. When `first` is a filter the caller may
not see past (a policy's enforced where, a shape's where under a subset) and `then` is theirs,
a `then` that fails on some values (`id::int2 > 0` past 32767, `1/(id-42) = 1`) fails the
whole query because of a row `first` excludes, and the 400-or-200 tells whether such a row
exists: an oracle on rows outside the filter.

COALESCE evaluates its arguments in order and only as far as needed (documented, like CASE;
its constant folding touches only row-independent parts), so in
`(first) AND COALESCE(NULLIF((first) IS TRUE, true), (then))` `then` is reached only for rows
where `first` is true. `first` also stands alone as a conjunct, so an index can still serve
it. For every row the result is that of `first AND then` when `first` is true, and false
otherwise, so the rows a WHERE keeps are the same. The engine evaluates it as Postgres does
(COALESCE and AND short-circuit in `expr`), so live changes are routed alike.
"""

from __future__ import annotations


def guarded_and(first: str, then: str) -> str:
    """SQL for `first AND then` in which `then` is evaluated only where `first` is true."""
    return f"({first}) AND COALESCE(NULLIF(({first}) IS TRUE, true), ({then}))"
