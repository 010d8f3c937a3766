"""The equality / IN keys the router files shapes under.

A shape's `Where.index` is `(column, keys)`; a change can only match the shape when its
`index_key(column, text)` is in `keys`. Keys must hash consistently with `==`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo

from .semantics import identity


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


def enum_array_parser() -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return pgv.parse_array(text, identity)

    return parse


def index_key(column: ColumnInfo, text: str | None) -> object:
    """Normalise a column's text value the way `Where.index` keys are normalised."""
    if text is None:
        return None
    if column.type_kind == "e":
        return pgv.parse_array(text, identity) if column.is_array else text
    return pgv.output_parser(column.type_name)(text)
