"""Collations: which one each text operation uses (Postgres's derivation), and what the
engine can reproduce of it.

Postgres orders text (`<`, BETWEEN, GREATEST) by a collation's LC_COLLATE and maps case
(`upper`, `lower`, ILIKE) by its LC_CTYPE. Which collation an operation uses is derived from
its inputs (parse_collate.c): a column carries its own collation implicitly, a literal or a
computed text the database default implicitly, `x COLLATE "C"` its named one explicitly;
explicit beats implicit, a non-default implicit beats the default, two different explicit
ones are an error at once ("collation mismatch between explicit collations"), two different
non-default implicit ones a conflict that fails only where a function needs the collation
(`a < b`, `a = b`, IN, ILIKE, `upper(a || b)`: "could not determine which collation to
use"; LIKE does not need one). `CollState` and `merge` are that derivation; the compiler
gives every node its state and asks `Collations.rules` at each operation that uses one.

The engine evaluates live changes in Python and accepts an operation only where it
reproduces Postgres exactly, refusing it (a 400 naming the construct and the collation)
everywhere else:

- ordering: code-point order, which is Postgres's under the `C`/`POSIX` collations and
  glibc's `C.UTF-8` (and the builtin provider's `C` / `C.UTF-8`);
- case mapping: ASCII-only under a `C`/`POSIX` ctype; Unicode simple (one character to one
  character) mappings under glibc's `C.UTF-8`, which is what `towupper`/`towlower` do
  there (`tests/.../where/test_collation.py` checks every code point against the
  database). Only a UTF8 database takes a `C.UTF-8` ctype (any other encoding refuses it,
  for the database and for CREATE COLLATION), but SQL_ASCII, where Postgres maps byte by
  byte (`toupper_l`): such a database is never served (`sync_engine.pg.encoding`);
- equality and LIKE: byte equality, which holds for every deterministic collation.

A collatable column's `ColumnInfo.collation` (catalog.py) is
`provider|collate|ctype|deterministic|oid|dbprovider|dbcollate|dbctype|dbdeterministic|encoding`:
its own collation (the database default resolved), the collation's OID (100 for the
default), the database default's and the database encoding (for `ucs_basic`); a column of
any other type has the last five (`||||0|...`), so a table without text columns knows the
default too (`i::text < '5'` uses it). A column
recorded before the OID and the database default were (four fields) keeps its own rules
but counts as a collation of its own (a second such column conflicts with it) and tells
nothing of the default; one recorded before collations were (None) has unknown rules:
what depends on them is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.types import PgType

from .resolution import STRING_TYPES

C_LOCALES = frozenset({"C", "POSIX"})
C_UTF8_LOCALES = frozenset({"C.UTF-8", "C.utf8", "C.UTF8", "C.utf-8"})

DEFAULT_OID = 100
C_OID = 950
POSIX_OID = 951

#: Collations a COLLATE clause may name (their OIDs are fixed in every Postgres); others
#: (libc and ICU locales, user-defined ones) the engine cannot look up.
NAMED = {"C": C_OID, "POSIX": POSIX_OID, "default": DEFAULT_OID}
#: ...and `ucs_basic`, code point order with ASCII-only case mapping (libc "C" up to
#: Postgres 16, builtin "C" from 17), which exists only in UTF8 databases and whose OID
#: initdb assigns: an explicit COLLATE names it (explicit ones are compared by name).
UCS_BASIC = "ucs_basic"


@dataclass(frozen=True, slots=True)
class TextRules:
    """What text semantics the compiler may use; `blocker` names the collation (or the
    reason) that rules a refused one out, for the error message."""

    ordering: bool
    case_map: str | None  # "ascii", "unicode" or None (refused)
    equality: bool
    blocker: str = ""


UNKNOWN = TextRules(False, None, False, "unknown collation")
C_RULES = TextRules(True, "ascii", True, 'collation "C"')
# A clause only Postgres evaluates (a subset query): nothing to reproduce.
SQL_ONLY = TextRules(True, "unicode", True, "")
# The database default of a table whose columns do not tell it: deterministic (a
# nondeterministic collation cannot be a database default), ordering and case unknown.
UNKNOWN_DEFAULT = TextRules(False, None, True, "the database default collation (unknown here)")

# -- derivation (parse_collate.c) --

NONE, IMPLICIT, CONFLICT, EXPLICIT = 0, 1, 2, 3

Ident = int | str
"""A collation: its OID, or `?column` for a column whose OID was not recorded."""


@dataclass(frozen=True, slots=True)
class CollState:
    """A node's collation and its strength; with CONFLICT, `ident` and `other` are the two
    implicit collations that clash."""

    strength: int
    ident: Ident | None = None
    other: Ident | None = None


NO_COLLATION = CollState(NONE)
DEFAULT_IMPLICIT = CollState(IMPLICIT, DEFAULT_OID)


class ExplicitMismatch(Exception):
    def __init__(self, a: Ident | None, b: Ident | None) -> None:
        super().__init__(a, b)
        self.a, self.b = a, b


def merge(a: CollState, b: CollState) -> CollState:
    """merge_collation_state: `a` (the siblings so far) with `b` (the next sibling)."""
    if b.strength > a.strength:
        return b
    if b.strength < a.strength or a.ident == b.ident:
        return a
    if a.strength == IMPLICIT:
        if a.ident == DEFAULT_OID:  # a non-default implicit collation beats the default
            return b
        if b.ident != DEFAULT_OID:
            return CollState(CONFLICT, a.ident, b.ident)
        return a
    if a.strength == EXPLICIT:
        raise ExplicitMismatch(a.ident, b.ident)
    return a


def merge_all(states: Iterable[CollState]) -> CollState:
    result = NO_COLLATION
    for s in states:
        result = merge(result, s)
    return result


# -- what the engine reproduces of a collation --


def _parts(collation: str) -> list[str]:
    return collation.split("|")


def _rules_of(provider: str, collate: str, ctype: str, deterministic: str) -> TextRules:
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


def column_ident(col: ColumnInfo) -> Ident | None:
    """The column's collation (None: not collatable). A domain's is collatable as its
    base type is (`d::text` of a domain over text COLLATE "C" is "C")."""
    if col.pg_type.element not in STRING_TYPES and (
        col.type_kind != "d" or PgType(col.domain_base or "") not in STRING_TYPES
    ):
        return None
    parts = _parts(col.collation) if col.collation is not None else []
    if len(parts) >= 5 and parts[4].isdigit():
        return int(parts[4])
    return f"?{col.name}"


@dataclass(frozen=True, slots=True)
class Collations:
    """The collations a table's clauses can meet: its columns' and the database default."""

    rules_by_ident: dict[Ident, TextRules]
    default: TextRules
    utf8: bool = False
    """The database's encoding is UTF8 (False: not, or not known)."""

    def rules(self, ident: Ident | None) -> TextRules:
        if ident in (C_OID, POSIX_OID, UCS_BASIC):
            return C_RULES
        if ident == DEFAULT_OID:
            return self.default
        return self.rules_by_ident.get(ident, UNKNOWN) if ident is not None else UNKNOWN

    def name(self, ident: Ident | None) -> str:
        """The collation as an error message names it."""
        for named, oid in NAMED.items():
            if ident == oid and oid != DEFAULT_OID:
                return f'collation "{named}"'
        if ident == UCS_BASIC:
            return f'collation "{UCS_BASIC}"'
        if isinstance(ident, str):
            return f"{self.rules(ident).blocker} of column {ident[1:]} (recorded without its OID)"
        return self.rules(ident).blocker


def collations(columns: Iterable[ColumnInfo]) -> Collations:
    return _collations(tuple(columns))


@functools.lru_cache(maxsize=1024)
def _collations(columns: tuple[ColumnInfo, ...]) -> Collations:
    """`collations`, once per table (every clause compiled asks; the columns are frozen)."""
    by_ident: dict[Ident, TextRules] = {}
    default = UNKNOWN_DEFAULT
    utf8 = False
    for col in columns:
        ident = column_ident(col)
        if col.collation is None:
            if ident is not None:
                by_ident[ident] = UNKNOWN
            continue
        parts = [*_parts(col.collation), "", "", "", "", "", "", "", "", ""]
        if ident is not None:
            by_ident[ident] = _rules_of(*parts[:4])
        if parts[5]:  # (every column of any type recorded since the default was)
            rules = _rules_of(*parts[5:9])
            default = replace(rules, blocker=f"the database default {rules.blocker}")
        utf8 = utf8 or parts[9] == "UTF8"
    return Collations(by_ident, default, utf8)


def text_rules(columns: Iterable[ColumnInfo]) -> TextRules:
    """The rules of every collatable column together (each allowed only if all allow it);
    what an operation on these columns' values alone may at most use."""
    columns = tuple(columns)
    result: TextRules | None = None
    table = collations(columns)
    for col in columns:
        ident = column_ident(col)
        if ident is None:
            continue
        rules = table.rules(ident)
        if result is None:
            result = rules
            continue
        result = TextRules(
            result.ordering and rules.ordering,
            result.case_map if result.case_map == rules.case_map else None,
            result.equality and rules.equality,
            result.blocker if not _complete(result) else rules.blocker,
        )
    return table.default if result is None else result


def _complete(rules: TextRules) -> bool:
    return rules.ordering and rules.case_map is not None and rules.equality
