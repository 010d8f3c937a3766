"""Table names in rules: exact names and patterns (`public.*`, `*.*`, `app.user_*`).

A config key names one table (`items`, `public.items`, `"Sales"."Q1"`) or, when an unquoted
part holds a glob character (`*`, `?`, `[...]`), every table whose schema and name match, as
`fnmatch` matches them, case-sensitively, against the names as Postgres stores them (the ASCII
letters of unquoted parts are lower-cased first, as Postgres does: `Ärzte` is `Ärzte`). An
unqualified key means schema `public`. A quoted part is always literal. The client's table is
parsed the same way, so what is matched is what the engine will read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from proxy.policy.sql import _split_outside_quotes, ascii_lower, parse_identifier, quote_identifier
from sync_engine.pg.identifiers import parse_relation

TableKey = tuple[str, str]

_GLOB = re.compile(r"[*?\[]")
_GLOB_PART = re.compile(r"^[\w$*?\[\]!-]+$")


@dataclass(frozen=True, slots=True)
class TablePattern:
    """A schema and a table name; with `glob`, `fnmatch` patterns for them instead (a quoted
    part escaped to match itself only: `[*]`).

    Whether it is a pattern is what the key's unquoted parts say, never what the parsed names
    hold: `'"user*"'`, the table literally named `user*`, was read as a pattern from its name
    (`*` in it), matched `user_secrets` and served it by its rule (config probe, 2026-12-07).
    """

    schema: str
    table: str
    glob: bool = False

    @property
    def exact(self) -> bool:
        return not self.glob

    @property
    def key(self) -> TableKey:
        return (self.schema, self.table)

    def matches(self, key: TableKey) -> bool:
        if not self.glob:
            return key == (self.schema, self.table)
        return fnmatchcase(key[0], self.schema) and fnmatchcase(key[1], self.table)


def _literal(name: str) -> str:
    """`name` as an `fnmatch` pattern matching itself only (`*`, `?`, `[` in brackets)."""
    return _GLOB.sub(lambda m: f"[{m.group(0)}]", name)


def _pattern_part(text: str) -> str:
    text = text.strip()
    if text.startswith('"') or not _GLOB.search(text):
        return _literal(parse_identifier(text))
    if not _GLOB_PART.match(text):
        raise ValueError(f"invalid table pattern part {text!r}")
    return ascii_lower(text)


def parse_table_pattern(text: str) -> TablePattern:
    """`items`, `public.*`, `*.*` or `"Sch".tab_*` -> TablePattern (raises ValueError).

    An exact name is read by the engine's own parser: the engine is sent the key as written
    (`evaluate._find_table`), so the table the rule is for is the one the engine reads (an
    unquoted `Ärzte`, which the engine refuses and Postgres reads as `Ärzte`, is a load error:
    quote it)."""
    parts = _split_outside_quotes(text, ".")
    if not any(_GLOB.search(p) and not p.strip().startswith('"') for p in parts):
        try:
            return TablePattern(*parse_relation(text))
        except ValueError as exc:
            raise ValueError(
                f"table {text!r}: {exc} (quote a name as Postgres stores it)"
            ) from None
    if len(parts) == 1:
        return TablePattern("public", _pattern_part(parts[0]), glob=True)
    if len(parts) == 2:
        return TablePattern(_pattern_part(parts[0]), _pattern_part(parts[1]), glob=True)
    raise ValueError(f"invalid table name {text!r}")


def format_table(key: TableKey) -> str:
    """The engine's `table` parameter for a parsed name: both parts quoted, never ambiguous."""
    return f"{quote_identifier(key[0])}.{quote_identifier(key[1])}"
