"""Clauses that differ only in integer literals share one parse and one deparse.

A storm of new shapes `bucket = 1`, `bucket = 2`, ... spent most of each clause's ~370 µs in
pglast: building Python nodes for the parse tree (~100 µs) and printing the tree back as SQL
(~130 µs). Both are the same work for every clause of one form, so the first clause of a
form leaves what its `Template` needs (`Pending`), the second makes it, and the others are
built from it (~100 µs, most of it the compile). Making a template costs about another parse
and deparse, so a form seen once (a new string constant each time) does not pay for it.

Why the result is exactly `full_parse`'s (the full path):
- The key is libpg_query's own parse tree of the statement (its JSON, from C in ~15 µs)
  without locations, each integer constant of the where clause outside a type name replaced
  by a hole (holding the constant's sign), plus the table's columns and the compile flags.
  Equal keys mean parse trees that differ only in those constants' values and in locations.
- A successful `full_parse` is a function of the parse tree without locations: locations
  only ever go into error messages. So a clause with a known key is compiled from the
  template's pglast tree with its holes filled (the nodes on the way down to a hole are
  copied, the rest shared and never changed); any error falls back to the full path, which
  reports the error at its exact location.
- Its SQL text is the template's deparsed text with each hole's value written in. pglast's
  printer writes an integer constant as `str(value)`, and nothing else it writes depends on
  a constant's value: only type modifiers and array bounds are printed by value (`char(1)`
  prints as `char`), and constants under a type name are never holes. Runtime checks: a
  template is kept only if writing its own values into its text reproduces pglast's output
  and that text parses back to the clause's key; and every filled-in text is parsed again
  (JSON, in C) and must give the clause's key and values, else the full path runs.
- Clauses with `$n` parameters and clauses whose JSON tree this module does not map back
  to pglast's take the full path (no template).

tests/sync_engine/shapes/where/test_template.py compares both paths over the differential
grammar's clauses with their integers changed; test_differential.py runs such variants
against Postgres.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cachetools import LRUCache
from pglast import ast
from pglast.parser import ParseError, parse_sql_json

from sync_engine.pg.catalog import ColumnInfo, ColumnMap

from .errors import PREFIX
from .parse import SqlStream

#: One step from a node to a child: an attribute name, or an index into a tuple.
Step = str | int
Path = tuple[Step, ...]
#: Where the holes are below a node: a child step to a deeper trie, or to a hole's index.
Trie = dict[Step, "Trie | int"]

#: An integer constant in libpg_query's JSON (`{}` is zero). JSON strings escape every `"`
#: inside them, so these patterns (each starting with an unescaped `"` or `{"`) only ever
#: match the tree's own keys, never text inside a string constant.
_INT = re.compile(r'\{"A_Const":\{"ival":\{(?:"ival":(-?[0-9]+))?\}(?:,"location":-?[0-9]+)?\}\}')
#: Positions in the text, not structure.
_POSITION = re.compile(r'"(?:location|stmt_location|stmt_len)":-?[0-9]+')


@dataclass(frozen=True, slots=True)
class Skeleton:
    """A statement's parse tree without positions and with its integer constants taken out
    (in the order they appear in the tree's JSON: the target list's `1` first)."""

    key: str
    values: tuple[int, ...]


def skeleton(statement: str) -> Skeleton | None:
    """The skeleton of `statement` (None when libpg_query refuses it)."""
    try:
        tree = parse_sql_json(statement)
    except (ParseError, RecursionError, ValueError):
        return None
    values = tuple(int(v or 0) for v in _INT.findall(tree))
    key = _POSITION.sub("", _INT.sub(_hole, tree))
    return Skeleton(key, values)


def _hole(match: re.Match[str]) -> str:
    return "#-" if (match.group(1) or "").startswith("-") else "#"


def _integers(
    tree: object, path: Path | None, in_type: bool, found: list[tuple[int, Path | None]]
) -> None:
    """Every integer constant of libpg_query's JSON tree (loaded), in order, each with its
    pglast path from the where clause's root when it may be a hole (None: outside the where
    clause or under a type name). A node's JSON `{"Type": {members}}` is the node, a member
    is an attribute step, a JSON list (or a `List` node's items) a tuple of index steps."""
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            _integers(item, None if path is None else (*path, i), in_type, found)
        return
    if not isinstance(tree, dict):
        return
    if len(tree) == 1:
        ((name, body),) = tree.items()
        if isinstance(body, dict) and name[:1].isupper():
            if name == "List" and set(body) <= {"items"}:
                _integers(body.get("items", []), path, in_type, found)
                return
            if name == "A_Const" and "ival" in body and set(body) <= {"ival", "location"}:
                ival = body["ival"]
                value = ival.get("ival", 0) if isinstance(ival, dict) else None
                if isinstance(value, int) and not isinstance(value, bool):
                    found.append((value, None if in_type else path))
                    return
            under = in_type or name == "TypeName"
            for member, value in body.items():
                if member == "whereClause" and path is None and name == "SelectStmt":
                    _integers(value, (), under, found)
                else:
                    _integers(value, None if path is None else (*path, member), under, found)
            return
    for member, value in tree.items():
        _integers(value, None if path is None else (*path, member), in_type, found)


@dataclass(frozen=True, slots=True)
class Template:
    """The first clause of a form: its pglast tree, which of the skeleton's integers are
    holes (the others must keep their values), where the holes are, its SQL in pieces."""

    where: ast.Node
    fixed: tuple[int | None, ...]  # per skeleton value: None for a hole, else its value
    holes: Trie
    pieces: tuple[str, ...]  # the SQL text around the holes (one more than holes)
    ref_counts: Mapping[str, int]

    def fill(self, values: tuple[int, ...]) -> tuple[int, ...] | None:
        """The holes' values of a clause with this skeleton's `values`; None when a value
        that is not a hole differs (a type modifier, the target list's `1`)."""
        holes = []
        for value, fixed in zip(values, self.fixed, strict=True):
            if fixed is None:
                holes.append(value)
            elif value != fixed:
                return None
        return tuple(holes)

    def tree(self, holes: tuple[int, ...]) -> ast.Node:
        """The template's tree with `holes` filled (copies on the way, shares the rest)."""
        node = _fill(self.where, self.holes, holes)
        assert isinstance(node, ast.Node)
        return node

    def text(self, holes: tuple[int, ...]) -> str:
        out = [self.pieces[0]]
        for value, piece in zip(holes, self.pieces[1:], strict=True):
            out.append(str(value))
            out.append(piece)
        return "".join(out)


def _copy(node: ast.Node) -> ast.Node:
    """A shallow copy of a pglast node. Its members were checked when it was built, so they
    are copied as they are (pglast's `__setattr__` checks each again, ~5 µs a node)."""
    cls = type(node)
    new: ast.Node = cls.__new__(cls)
    for member in cls.__slots__:
        object.__setattr__(new, member, getattr(node, member, None))
    return new


def _fill(node: object, trie: Trie | int, holes: tuple[int, ...]) -> object:
    if isinstance(trie, int):
        assert isinstance(node, ast.A_Const)
        const = _copy(node)
        # (as `ast.Integer(ival=...)` and `const.val = ...` would set them, unchecked: the
        # value is an int, the member a node)
        value = ast.Integer.__new__(ast.Integer)
        object.__setattr__(value, "ival", holes[trie])
        object.__setattr__(const, "val", value)
        return const
    if isinstance(node, tuple):
        items = list(node)
        for step, below in trie.items():
            assert isinstance(step, int)
            items[step] = _fill(items[step], below, holes)
        return tuple(items)
    assert isinstance(node, ast.Node)
    new = _copy(node)
    for step, below in trie.items():
        assert isinstance(step, str)
        object.__setattr__(new, step, _fill(getattr(node, step), below, holes))
    return new


def _at(node: object, path: Path) -> object:
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, tuple) or step >= len(node):
                return None
            node = node[step]
        else:
            if not isinstance(node, ast.Node) or step not in type(node).__slots__:
                return None
            node = getattr(node, step)
    return node


#: Marks a hole in the text of a template being made: unlike any integer a client writes.
_MARK = 7_310_000_000_000_000_000


def make_template(
    where: ast.Node, statement: str, shape: Skeleton, text: str, ref_counts: Mapping[str, int]
) -> Template | None:
    """A template from a clause the full path just accepted: `where` its tree (before any
    `$n` substitution), `statement` what was parsed, `shape` its skeleton, `text` its SQL.
    None when any check fails."""
    found: list[tuple[int, Path | None]] = []
    try:
        _integers(json.loads(parse_sql_json(statement)), None, False, found)
    except (ParseError, RecursionError, ValueError):
        return None
    if tuple(v for v, _ in found) != shape.values:
        return None
    holes: Trie = {}
    fixed: list[int | None] = []
    hole_values: list[int] = []
    for value, path in found:
        if path is None:
            fixed.append(value)
            continue
        const = _at(where, path)
        if not (
            path
            and isinstance(const, ast.A_Const)
            and not const.isnull
            and isinstance(const.val, ast.Integer)
            and (const.val.ival or 0) == value
        ):
            return None
        trie = holes
        for step in path[:-1]:
            below = trie.setdefault(step, {})
            if not isinstance(below, dict):
                return None
            trie = below
        if path[-1] in trie:
            return None
        trie[path[-1]] = len(hole_values)
        fixed.append(None)
        hole_values.append(value)
    template = Template(where, tuple(fixed), holes, (text,), ref_counts)
    if hole_values:
        marks = tuple((_MARK + i) * (-1 if v < 0 else 1) for i, v in enumerate(hole_values))
        marked: str = SqlStream()(template.tree(marks))  # type: ignore[no-untyped-call]
        cut = [marked]
        for mark in marks:
            head, sep, tail = cut[-1].partition(str(mark))
            if not sep or str(mark) in tail or head[-1:].isdigit() or tail[:1].isdigit():
                return None
            cut[-1:] = [head, tail]
        template = Template(where, tuple(fixed), holes, tuple(cut), ref_counts)
    if template.text(tuple(hole_values)) != text:
        return None
    again = skeleton(PREFIX + text)
    if again is None or again.key != shape.key or again.values != shape.values:
        return None
    return template


@dataclass(frozen=True, slots=True)
class Pending:
    """What `make_template` needs, kept from the first clause of a form: the template is
    made only when a second clause of that form comes. Making it costs about a parse and a
    deparse, wasted on the many forms seen once (`name = 'x' AND n > 0` for every `x`)."""

    where: ast.Node
    statement: str
    shape: Skeleton
    text: str
    ref_counts: Mapping[str, int]

    def make(self) -> Template | None:
        return make_template(self.where, self.statement, self.shape, self.text, self.ref_counts)


class Templates:
    """Templates by (skeleton key, columns, flags), the least recently used dropped."""

    def __init__(self, maxsize: int = 512) -> None:
        self._cache: LRUCache[object, Template | Pending] = LRUCache(maxsize=maxsize)
        #: Clauses built from a template (tests check the fast path was taken).
        self.hits = 0

    def get(self, key: object) -> Template | None:
        """The form's template, made now if its first clause left only a `Pending`."""
        entry = self._cache.get(key)
        if isinstance(entry, Pending):
            entry = entry.make()
            if entry is None:
                del self._cache[key]  # the next clause of the form leaves a new `Pending`
            else:
                self._cache[key] = entry
        return entry

    def put(self, key: object, entry: Template | Pending) -> None:
        self._cache[key] = entry

    def __len__(self) -> int:
        return len(self._cache)


class _Key:
    """A cache key hashed once: the columns in it are dataclasses hashed field by field, and
    a plain tuple is hashed again at every lookup of the LRU cache (three times a hit)."""

    __slots__ = ("_hash", "parts")

    def __init__(self, parts: tuple[object, ...]) -> None:
        self.parts = parts
        self._hash = hash(parts)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._hash == other._hash and self.parts == other.parts


def cache_key(
    shape: Skeleton, columns: Mapping[str, ColumnInfo], flags: tuple[bool, ...]
) -> object:
    """What the compiled result depends on besides the holes' values."""
    labels = tuple(sorted(columns.enum_labels.items())) if isinstance(columns, ColumnMap) else ()
    return _Key((shape.key, tuple(columns.items()), labels, flags))
