"""The equality / IN keys the router files shapes under.

A shape's `Where.index` is `(column, keys)`; a change can only match the shape when its
`index_key(column, text)` is in `keys`. Keys must hash consistently with `==`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo


def keyset(values: Iterable[Any]) -> frozenset[Any]:
    return frozenset(values)


def indexable(values: Iterable[Any]) -> bool:
    """Index keys must hash consistently with `==` (no NaN, no unhashable values)."""
    try:
        for v in values:
            if v != v:
                return False
            hash(v)
    except TypeError:
        return False
    return True


def index_key(column: ColumnInfo, text: str | None) -> object:
    """Normalise a column's text value the way `Where.index` keys are normalised."""
    if text is None:
        return None
    return pgv.output_parser(column.pg_type)(text)
