"""Postgres identifiers in request parameters: `table` and `columns` (pure).

Unquoted names are downcased and must look like identifiers; quoted names keep their case
and use `""` for a literal quote; names split on `.` (table) or `,` (columns) outside quotes.
The messages are the ones Electric gives, which clients and docs already show people.
"""

from __future__ import annotations

import re

_UNQUOTED = re.compile(r"\A[^\W\d][\w$]*\Z")
MAX_IDENT = 63


class InvalidIdentifier(ValueError):
    pass


def _split(text: str, sep: str) -> list[tuple[str, bool]]:
    """Split on `sep` outside double quotes; each part with whether it was quoted."""
    parts: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] == '"':
            j = i + 1
            buf = []
            while True:
                if j >= n:
                    raise InvalidIdentifier(f"Invalid identifier, unterminated quote: {text}")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            parts.append(("".join(buf), True))
            i = j + 1
            while i < n and text[i] == " ":
                i += 1
            if i < n and text[i] != sep:
                raise InvalidIdentifier(f"Invalid identifier: {text}")
        else:
            j = text.find(sep, i)
            j = n if j < 0 else j
            parts.append((text[i:j].strip(), False))
            i = j
        if i >= n:
            return parts
        i += 1  # skip separator


def _normalise(name: str, quoted: bool) -> str:
    if name == "":
        raise InvalidIdentifier("Invalid zero-length delimited identifier")
    if not quoted:
        if not _UNQUOTED.match(name) or not name.isascii():
            raise InvalidIdentifier(
                f"Invalid unquoted identifier contains special characters: {name}"
            )
        name = name.lower()
    if len(name.encode()) > MAX_IDENT:
        raise InvalidIdentifier(f"Identifier is too long (max length is {MAX_IDENT})")
    return name


def parse_relation(text: str) -> tuple[str, str]:
    """`items`, `s.items` or `"S"."It.ems"` -> (schema, name); schema defaults to public."""
    parts = _split(text, ".")
    if len(parts) > 2:
        raise InvalidIdentifier(f"Invalid relation identifier, too many delimiters: {text}")
    names = [_normalise(p, q) for p, q in parts]
    if len(names) == 1:
        return "public", names[0]
    return names[0], names[1]


def parse_columns(text: str) -> list[str]:
    """`id,title` or `"id","Title"` -> ["id", "Title"]."""
    return [_normalise(p, q) for p, q in _split(text, ",")]
