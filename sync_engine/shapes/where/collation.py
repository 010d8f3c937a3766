"""Which text semantics the engine can reproduce, decided by the table's collations.

Postgres orders text (`<`, BETWEEN, GREATEST) by the collation's LC_COLLATE and maps case
(`upper`, `lower`, ILIKE) by its LC_CTYPE; the engine evaluates live changes in Python. It
accepts those constructs only where it reproduces Postgres exactly, and refuses them
(a 400 naming the construct and the collation) everywhere else:

- ordering: code-point order, which is Postgres's under the `C`/`POSIX` collations and
  glibc's `C.UTF-8` (and the builtin provider's `C` / `C.UTF-8`);
- case mapping: ASCII-only under a `C`/`POSIX` ctype; Unicode simple (one character to one
  character) mappings under glibc's `C.UTF-8`, which is what `towupper`/`towlower` do
  there (`tests/.../where/test_differential.py` checks every code point against the
  database);
- equality and LIKE: byte equality, which holds for every deterministic collation.

A table's rules are the meet over its collatable columns (a literal takes the database
default, which a default-collated column carries); a collatable column whose collation is
unknown (a shape restored from before collations were recorded) makes them all refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from sync_engine.pg.catalog import ColumnInfo

from .resolution import STRING_TYPES

C_LOCALES = frozenset({"C", "POSIX"})
C_UTF8_LOCALES = frozenset({"C.UTF-8", "C.utf8", "C.UTF8", "C.utf-8"})


@dataclass(frozen=True, slots=True)
class TextRules:
    """What text semantics the compiler may use; `blocker` names the collation (or the
    reason) that rules a refused one out, for the error message."""

    ordering: bool
    case_map: str | None  # "ascii", "unicode" or None (refused)
    equality: bool
    blocker: str = ""


UNKNOWN = TextRules(False, None, False, "unknown collation")
# A table without text columns: its text values (casts, literals) take the database default,
# which is deterministic (a nondeterministic collation cannot be a database default) but
# whose ordering and case mapping the engine does not know.
# A clause only Postgres evaluates (a subset query): nothing to reproduce.
SQL_ONLY = TextRules(True, "unicode", True, "")
NO_TEXT_COLUMN = TextRules(False, None, True, "the database default collation (unknown here)")


def _rules_of(collation: str) -> TextRules:
    provider, collate, ctype, deterministic = [*collation.split("|"), "", "", ""][:4]
    if provider == "c":
        ordering = collate in C_LOCALES or collate in C_UTF8_LOCALES
        case_map = "ascii" if ctype in C_LOCALES else "unicode" if ctype in C_UTF8_LOCALES else None
    elif provider == "b":
        ordering = collate in ("C", "C.UTF-8")
        case_map = "ascii" if ctype == "C" else None
    else:
        ordering, case_map = False, None
    name = collate if collate == ctype else f"{collate}, ctype {ctype}"
    if provider == "i":
        name = f"ICU {collate}"
    return TextRules(ordering, case_map, deterministic != "f", f'collation "{name}"')


def text_rules(columns: Iterable[ColumnInfo]) -> TextRules:
    """The meet of the rules of every collatable column."""
    return _text_rules(tuple(columns))


@functools.lru_cache(maxsize=1024)
def _text_rules(columns: tuple[ColumnInfo, ...]) -> TextRules:
    """`text_rules`, once per table: every clause compiled asks (~12 µs for 3 columns, 10x
    that for a 30-column table), and the answer depends only on the columns (frozen)."""
    result: TextRules | None = None
    for col in columns:
        if col.pg_type.element not in STRING_TYPES:
            continue
        rules = UNKNOWN if col.collation is None else _rules_of(col.collation)
        if result is None:
            result = rules
            continue
        result = TextRules(
            result.ordering and rules.ordering,
            result.case_map if result.case_map == rules.case_map else None,
            result.equality and rules.equality,
            result.blocker if not _complete(result) else rules.blocker,
        )
    return NO_TEXT_COLUMN if result is None else result


def _complete(rules: TextRules) -> bool:
    return rules.ordering and rules.case_map is not None and rules.equality
