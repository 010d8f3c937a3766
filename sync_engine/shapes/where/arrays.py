"""Array operators and functions (`@>`, `<@`, `&&`, `||`, subscripts, slices, ANY/ALL).

Arrays are nested tuples; NULL elements are `None`.
"""

from __future__ import annotations

from collections.abc import Callable

from sync_engine.pg.values import Value

from .semantics import nan_marked


def flatten(value: Value) -> list[Value]:
    out: list[Value] = []
    for item in value:
        if isinstance(item, tuple):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out


def array_contains(a: Value, b: Value) -> bool:
    """a @> b: every element of b is in a; NULL elements never match (Postgres rule). The
    elements compare with their type's `=`: NaN equals NaN (`'{NaN}'::float8[] @> '{NaN}'`)."""
    have = [x for x in flatten(nan_marked(a)) if x is not None]
    for x in flatten(nan_marked(b)):
        if x is None or x not in have:
            return False
    return True


def array_overlaps(a: Value, b: Value) -> bool:
    have = [x for x in flatten(nan_marked(a)) if x is not None]
    return any(x is not None and x in have for x in flatten(nan_marked(b)))


def array_ndims(a: Value) -> int | None:
    if not a:
        return None
    dims = 0
    while isinstance(a, tuple) and a:
        dims += 1
        a = a[0]
    return dims


def array_element(a: Value, indexes: tuple[int, ...]) -> Value:
    """`a[i][j]...` (array_get_element): NULL unless there is one subscript per dimension,
    each within its bounds (the lower bound is 1)."""
    if not a or len(_shape(a)) != len(indexes):
        return None
    for i in indexes:
        if not isinstance(a, tuple) or not 1 <= i <= len(a):
            return None
        a = a[i - 1]
    return a


def array_slices(a: Value, bounds: tuple[tuple[int | None, int | None], ...]) -> Value:
    """`a[l1:u1][l2:u2]...` (array_get_slice): each written dimension cut to its bounds (an
    omitted bound is the array's own), the others whole; empty when there are more
    subscripts than dimensions or a dimension's cut is empty."""
    shape = _shape(a)
    if not a or len(bounds) > len(shape):
        return ()
    ranges = []
    for (lo, hi), n in zip(bounds, shape, strict=False):
        lo = 1 if lo is None else max(lo, 1)
        hi = n if hi is None else min(hi, n)
        if lo > hi:
            return ()
        ranges.append((lo, hi))

    def cut(x: Value, depth: int) -> Value:
        if depth == len(ranges):
            return x
        lo, hi = ranges[depth]
        return tuple(cut(e, depth + 1) for e in x[lo - 1 : hi])

    return cut(a, 0)


def _shape(a: Value) -> tuple[int, ...]:
    dims = []
    while isinstance(a, tuple) and a:
        dims.append(len(a))
        a = a[0]
    return tuple(dims)


def _incompatible() -> ValueError:
    return ValueError("cannot concatenate incompatible arrays")


def array_cat(a: Value, b: Value) -> Value:
    """`array || array` / array_cat with Postgres's dimension rules: equal dimensions
    concatenate along the first, one less adds an element (row), anything else fails."""
    if a is None:
        return b
    if b is None or not b:
        return a
    if not a:
        return b
    sa, sb = _shape(a), _shape(b)
    if len(sa) == len(sb):
        if sa[1:] != sb[1:]:
            raise _incompatible()
        return tuple(a) + tuple(b)
    if len(sa) == len(sb) - 1 and sa == sb[1:]:
        return (tuple(a), *b)
    if len(sa) - 1 == len(sb) and sa[1:] == sb:
        return (*a, tuple(b))
    raise _incompatible()


#: Postgres's MAXDIM.
MAX_DIMENSIONS = 6


def array_of_arrays(*items: Value) -> Value:
    """`ARRAY[a, b, ...]` of array values (ExecEvalArrayExpr's multidimensional case): a NULL
    or empty item counts as empty; all empty is the empty array; otherwise every item must
    have the same dimensions (an empty one beside a non-empty one fails too)."""
    filled = [x for x in items if x]
    if not filled:
        return ()
    shape = _shape(filled[0])
    if len(filled) != len(items) or any(_shape(x) != shape for x in filled[1:]):
        raise ValueError(
            "multidimensional arrays must have array expressions with matching dimensions"
        )
    if len(shape) + 1 > MAX_DIMENSIONS:
        raise ValueError(
            f"number of array dimensions ({len(shape) + 1}) exceeds the maximum allowed"
            f" ({MAX_DIMENSIONS})"
        )
    return tuple(items)


def array_append(a: Value, x: Value) -> Value:
    if a and isinstance(a[0], tuple):
        raise ValueError("argument must be empty or one-dimensional array")
    return (*(a or ()), x)


def array_prepend(x: Value, a: Value) -> Value:
    if a and isinstance(a[0], tuple):
        raise ValueError("argument must be empty or one-dimensional array")
    return (x, *(a or ()))


def array_ndims_nullable(a: Value) -> Value:
    return None if a is None else array_ndims(a)


def quantified_op(
    op: Callable[[Value, Value], Value], is_all: bool
) -> Callable[[Value, Value], Value]:
    """`x op ANY(arr)` / `x op ALL(arr)` with Postgres's NULL rules."""

    def quantified(value: Value, array: Value) -> Value:
        if array is None:
            return None
        items = flatten(array)
        if not items:
            return is_all
        if value is None:
            return None
        saw_null = False
        for item in items:
            if item is None:
                saw_null = True
                continue
            hit = bool(op(value, item))
            if hit and not is_all:
                return True
            if not hit and is_all:
                return False
        return None if saw_null else is_all

    return quantified
