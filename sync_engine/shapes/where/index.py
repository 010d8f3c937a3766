"""The equality / IN keys the router files shapes under.

A shape's `Where.index` is `(column, keys)`; a change can only match the shape when its
`index_key(column, text)` is in `keys`. Keys must hash consistently with `==`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.values import Value

from .casts import unicode_space


def keyset(values: Iterable[Value]) -> frozenset[Value]:
    return frozenset(values)


def indexable(values: Iterable[Value]) -> bool:
    """Index keys must hash consistently with `==` (no NaN, also none inside an array:
    `(nan,)` equals itself as one object but not another such tuple, as NaN does not;
    no unhashable values)."""
    try:
        for v in values:
            if _has_nan(v):
                return False
            hash(v)
    except TypeError:
        return False
    return True


def _has_nan(v: Value) -> bool:
    """NaN, or (in an array) a text element holding whitespace Postgres keeps and the
    router's reading of a row's array trims (casts.unicode_space): such a key would not
    meet the row's."""
    if isinstance(v, tuple):
        return any(_has_nan(x) or (isinstance(x, str) and unicode_space(x)) for x in v)
    return bool(v != v)


def index_key(column: ColumnInfo, text: str | None) -> object:
    """Normalise a column's text value the way `Where.index` keys are normalised."""
    if text is None:
        return None
    return pgv.output_parser(column.pg_type)(text)
