"""`jsonb -> key`, `jsonb ->> key` (and an int index) on a jsonb column, as Postgres answers.

The engine reads a jsonb value as the text Postgres wrote it (jsonb_out: keys in jsonb's
order, no duplicates, numbers as numeric_out prints them), so a field's value is found by
parsing that text, and its text written back the way jsonb_out writes it: `{"k": v, ...}`
and `[a, b]` with those separators, keys sorted as jsonb sorts them (shorter first, then by
their bytes), strings escaped as escape_json escapes them (\\b \\f \\n \\r \\t \\" \\\\, other
control characters as \\u00xx), numbers as numeric text. `->` gives jsonb (JSON null is the
jsonb `null`), `->>` text (JSON null is SQL NULL, a string its characters). A missing key,
an index past either end (a negative one counts from the end) or the wrong kind of container
is NULL; a scalar document is an array of one for an index (jsonb stores it so: `'5'::jsonb
-> 0` is 5) and has no keys.
"""

from __future__ import annotations

import json
from decimal import Decimal

from sync_engine.pg.values import UnrepresentableValue

from .semantics import pg_numeric
from .text import numeric_text

_MISSING = object()


class _Number(str):
    """A JSON number, kept as its text (jsonb_out wrote it as numeric_out does)."""


def _number(text: str) -> _Number:
    return _Number(numeric_text(pg_numeric(Decimal(text))))


def _load(text: str) -> object:
    return json.loads(text, parse_int=_number, parse_float=_number)


def _key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


def jsonb_text(value: object) -> str:
    """`value` (as `_load` reads it) as jsonb_out writes it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    assert isinstance(value, dict)
    items = sorted(value.items(), key=lambda kv: _key_order(kv[0]))
    return (
        "{"
        + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(v)}" for k, v in items)
        + "}"
    )


def _field(document: str, key: str | int) -> object:
    try:
        doc = _load(document)
    except RecursionError:  # (nested deeper than Python reads: Postgres is asked instead)
        raise UnrepresentableValue("a jsonb value nested too deeply to read here") from None
    if isinstance(key, str):
        return doc.get(key, _MISSING) if isinstance(doc, dict) else _MISSING
    if isinstance(doc, dict):
        return _MISSING
    items = doc if isinstance(doc, list) else [doc]
    if key < 0:
        key += len(items)
    return items[key] if 0 <= key < len(items) else _MISSING


def _text(value: object) -> str:
    try:
        return jsonb_text(value)
    except RecursionError:
        raise UnrepresentableValue("a jsonb value nested too deeply to read here") from None


def field_jsonb(document: str, key: str | int) -> str | None:
    """`document -> key`: the field's jsonb text, NULL when there is none."""
    value = _field(document, key)
    return None if value is _MISSING else _text(value)


def field_text(document: str, key: str | int) -> str | None:
    """`document ->> key`: a string's characters, another value's jsonb text, NULL for a
    JSON null or no field."""
    value = _field(document, key)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, str) and not isinstance(value, _Number):
        return value
    return _text(value)
