"""Random policies x random users x random requests, through the real proxy and engine, each
answer checked against PostgreSQL's own `SELECT` of what the policy allows.

Each round draws a policy from the config grammar (three tables in several spellings, rules
with claim filters -- equality, `= ANY` of a list claim, a `LIKE` prefix claim, `lower`,
numbers, nested paths, OR/AND of them --, column lists, `client_where`, subset, replica,
deny rules, named shapes) and users whose claims are odd on purpose (quotes, backslashes,
`%`/`_`, unicode, numbers as text, lists, `{...}` text, null). Then random requests: table
names spelt every way, client `where`s built from atoms that stay inside the policy and
atoms that try to leave it (top-level OR, comments, unbalanced parentheses, dollar quotes,
`E''` strings, `$n` with odd params, subqueries, functions, casts), column lists with
duplicates, quoted names, the key left out or a hidden column, `replica=full`, subsets by GET
and POST. The oracle is written independently of the proxy: which rule applies is decided
here from the claims, and the rule's filter is evaluated by PostgreSQL with the claims as
typed literals (a `LIKE {{prefix}} || '%'` as `starts_with`), guarded as the proxy guards
it (`CASE WHEN <policy> THEN <client> END`), with only the rule's columns.

Checked for every answer: a 200 shows exactly the oracle's rows and columns (none beyond:
that would be a leak; none missing); a request the oracle refuses (no rule, a hidden column,
a clause PostgreSQL rejects) is a 4xx, never a 200 or 5xx; and a request made only of the
plain atoms every rule accepts is served. Then rows change (org moves, titles, inserts,
deletes) and every followed shape is caught up live and checked again. Between users: one
user's handle and offset reused by another (with the other's own definition and with the
first's), and every answer the proxy marks `public` (a CDN may share it) asked for with
every other user's token, which must get the same rows.

`PROXY_POLICY_ORACLE_SEEDS` (comma list or `a-b`) and `PROXY_POLICY_ORACLE_REQUESTS` run
longer sweeps (out of tree: /work/policy-fuzz); CI runs one short seed (24). Up to
`PROXY_POLICY_ORACLE_NPM` (3) served shapes per round are also followed by the real npm client
(`policy_npm_shapes.mjs`), snapshot and live, and its rows compared with the oracle's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, apply_messages


def _seeds() -> list[int]:
    # (CI's seed: one whose policy serves shapes, public answers, live changes and handle
    # reuse; pick another when the generator changes)
    text = os.environ.get("PROXY_POLICY_ORACLE_SEEDS", "24")
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


SEEDS = _seeds()
REQUESTS = int(os.environ.get("PROXY_POLICY_ORACLE_REQUESTS", "40"))
#: How many served shapes per round the real npm client follows too (snapshot, then live).
NPM_SHAPES = int(os.environ.get("PROXY_POLICY_ORACLE_NPM", "3"))
NPM_SCRIPT = Path(__file__).with_name("policy_npm_shapes.mjs")

ORGS = ["org-a", "org-b", "o'q", "b\\s", "Ärzte", "%", "org_a", " org-a", "org-a ", "x,y"]
OWNERS = ["u1", "u2", "U1", "o'q", "%", "_1", "u\\1", '"q"']
TITLES = ["t1", "t_2", "T3", "%x", "t%", "\\t", "a\\%", None, "tx", "ü"]
PREFIXES = ["t", "t_", "%", "T", "t%", "\\", "a\\%", "", "ü"]


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    columns: tuple[str, ...]  # the key first
    types: dict[str, str]
    #: config keys and client spellings naming it
    spellings: tuple[str, ...]


ITEMS = Table(
    "public",
    "items",
    ("id", "org_id", "owner", "title", "n", "secret"),
    {"id": "int", "org_id": "text", "owner": "text", "title": "text", "n": "int", "secret": "text"},
    (
        "items",
        "public.items",
        '"items"',
        'public."items"',
        "ITEMS",
        "Public.Items",
        '"public"."items"',
    ),
)
NOTES = Table(
    "public",
    "Notes",
    ("id", "owner", "Body", "hidden"),
    {"id": "int", "owner": "text", "Body": "text", "hidden": "text"},
    ('"Notes"', 'public."Notes"', '"public"."Notes"'),
)
DOCS = Table(
    "app",
    "docs",
    ("id", "org_id", "title", "pin"),
    {"id": "int", "org_id": "text", "title": "text", "pin": "text"},
    ("app.docs", '"app".docs', '"app"."docs"', "APP.DOCS"),
)
EVENTS = Table(
    "public",
    "events",
    ("id", "org_id", "title", "secret"),
    {"id": "int", "org_id": "text", "title": "text", "secret": "text"},
    ("events", "public.events", '"events"'),
)
#: The partitions of `events` (by id: 1-15, 16 on), in schema `app`: a pattern `app.*` or
#: `app.events_*` reaches them, and must never show more of their rows than `events`'s own
#: rule shows the caller (`_refuse_unsafe_pattern`).
EVENTS_LO = Table("app", "events_lo", EVENTS.columns, EVENTS.types, ("app.events_lo",))
EVENTS_HI = Table("app", "events_hi", EVENTS.columns, EVENTS.types, ('app."events_hi"',))
PARTITIONS = (EVENTS_LO, EVENTS_HI)
TABLES = (ITEMS, NOTES, DOCS, EVENTS)
#: Spellings that name no table here (another case, another schema, junk).
WRONG = (
    '"ITEMS"', "notes", "public.docs", "items.public", "app.items", "items;", "", '"it""ems"',
    "\u0131tems", "\uff29\uff34\uff25\uff2d\uff33", "items\u200b", '"public.items"', 'U&"items"',
    '"items "', "public.items.x", "app.docs.id",
)  # fmt: skip
#: More client spellings of `items` (the engine's reading trims around names)
ITEMS_TOO = (" items", "items\n", " public . items ", '\tpUblic."items" ')


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    """A SQL string literal (standard_conforming_strings on: only `'` doubled)."""
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------------------- policy filters


@dataclass(frozen=True)
class Filter:
    """A rule's filter: the policy's text and the oracle's own predicate builder."""

    template: str
    claims: tuple[str, ...]
    #: claim path -> bound text (None: refused) -> oracle SQL over the table's columns
    oracle: Any


def _eq(column: str, claim: str, cast: str = "text") -> Filter:
    return Filter(
        f"{_ident(column)} = {{{{{claim}}}}}",
        (claim,),
        lambda b: f"{_ident(column)} = {_lit(b[claim])}::{cast}",
    )


def _filters(table: Table) -> list[Filter]:
    found = []
    if "owner" in table.columns:
        found.append(_eq("owner", "sub"))
        found.append(
            Filter(
                "lower(owner) = lower({{sub}})",
                ("sub",),
                lambda b: f"lower(owner) = lower({_lit(b['sub'])}::text)",
            )
        )
    if "org_id" in table.columns:
        found += [_eq("org_id", "org_id"), _eq("org_id", "org.id")]
        found.append(
            Filter(
                "org_id = ANY({{orgs}})",
                ("orgs",),
                lambda b: f"org_id = ANY({_lit(b['orgs'])}::text[])",
            )
        )
    if "title" in table.columns:
        # A claim in a LIKE pattern is a literal (its % and _ escaped): each oracle says the
        # same without LIKE.
        def p(b: dict[str, str]) -> str:
            return f"{_lit(b['prefix:raw'])}::text"

        found += [
            Filter(
                "title LIKE {{prefix}} || '%'", ("prefix",), lambda b: f"starts_with(title, {p(b)})"
            ),
            Filter(
                "lower(title) LIKE lower({{prefix}}) || '%'",
                ("prefix",),
                lambda b: f"starts_with(lower(title), lower({p(b)}))",
            ),
            Filter(
                "title ILIKE {{prefix}} || '%'",
                ("prefix",),
                lambda b: f"starts_with(lower(title), lower({p(b)}))",
            ),
            Filter(
                "title LIKE '%' || {{prefix}} || '%'",
                ("prefix",),
                lambda b: f"strpos(title, {p(b)}) > 0",
            ),
            Filter("title LIKE {{prefix}}", ("prefix",), lambda b: f"title = {p(b)}"),
            Filter(
                "title NOT LIKE {{prefix}} || '%'",
                ("prefix",),
                lambda b: f"NOT starts_with(title, {p(b)})",
            ),
            Filter(
                "title LIKE concat({{prefix}}, '%') ESCAPE '#'",
                ("prefix",),
                lambda b: f"starts_with(title, {p(b)})",
            ),
        ]
    if "org_id" in table.columns:
        found.append(
            Filter(
                "org_id LIKE ANY({{orgs}})",
                ("orgs",),
                lambda b: f"org_id = ANY({_lit(b['orgs'])}::text[])",
            )
        )
    if "n" in table.columns:
        found.append(
            Filter("n <= {{level}}", ("level",), lambda b: f"n <= {_lit(b['level'])}::int")
        )
    return found


def _combine(rng: random.Random, table: Table) -> Filter:
    options = _filters(table)
    first = rng.choice(options)
    if rng.random() < 0.6:
        return first
    second = rng.choice(options)
    op = rng.choice(["AND", "OR"])
    return Filter(
        f"({first.template}) {op} ({second.template})",
        first.claims + second.claims,
        lambda b: f"({first.oracle(b)}) {op} ({second.oracle(b)})",
    )


# ---------------------------------------------------------------------------- claims


def _bound(value: Any) -> str | None:
    """What the proxy binds for a claim, by the documented rules (docs/proxy-claims.md),
    or None when it must refuse (missing, null, object, `{`/`[` text, NUL)."""
    if value is None or isinstance(value, dict):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return None  # only used through `_bound_list`
    assert isinstance(value, str)
    if value.lstrip()[:1] in ("{", "[") or "\x00" in value:
        return None
    return value


def _claim(claims: dict[str, Any], path: str) -> Any:
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _bindings(claims: dict[str, Any], paths: tuple[str, ...]) -> dict[str, str] | None:
    """The oracle's values of `paths`, or None when a claim cannot be bound (a 403)."""
    bound: dict[str, str] = {}
    for path in paths:
        value = _claim(claims, path)
        if path == "orgs":
            if not isinstance(value, list) or any(
                isinstance(v, dict | list) or v is None for v in value
            ):
                return None
            items = [_bound(v) if not isinstance(v, str) else v for v in value]
            if any(i is None or "\x00" in i for i in items):
                return None
            # the oracle's own array: ARRAY['a', 'b'] as text (psycopg-free, typed)
            bound[path] = "{" + ",".join(_array_item(i) for i in items if i is not None) + "}"
            continue
        text = _bound(value)
        if text is None:
            return None
        if path == "prefix":
            bound["prefix:raw"] = text
        bound[path] = text
    return bound


def _array_item(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _user(rng: random.Random, n: int) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": rng.choice(OWNERS) + ("" if rng.random() < 0.7 else str(n))}
    claims["role"] = rng.choice(
        ["member", "member", "member", "admin", "admin", "viewer", "Admin", ["x", "member"]]
    )
    if rng.random() < 0.85:
        claims["org_id"] = rng.choice([*ORGS, "{org-a,org-b}", 7])
    if rng.random() < 0.5:
        claims["org"] = {"id": rng.choice(ORGS)}
    if rng.random() < 0.8:
        claims["orgs"] = rng.sample(ORGS, rng.randint(0, 3)) + rng.choice([[], [1], ['a"b']])
    if rng.random() < 0.8:
        claims["prefix"] = rng.choice(PREFIXES)
    if rng.random() < 0.8:
        claims["level"] = rng.choice([0, 5, 20, 7.0, "5", "abc", True])
    suspended = rng.choice([_ABSENT, _ABSENT, _ABSENT, True, False, "true", "no", None])
    if suspended is not _ABSENT:
        claims["suspended"] = suspended
    mfa = rng.choice(
        [_ABSENT, True, True, False, "true", 1, 0, "no", None, [True], [False, "x"], "\uff34RUE"]
    )
    if mfa is not _ABSENT:
        claims["mfa"] = mfa
    return claims


_ABSENT = object()


def _denied(claims: dict[str, Any]) -> bool:
    """The deny rule `{suspended: true}`: matches true, "true", and a present null."""
    if "suspended" not in claims:
        return False
    value = claims["suspended"]
    return value is True or value is None or value == "true"


def _mfa_denied(claims: dict[str, Any]) -> bool:
    """The deny rule `{mfa: false}`: false, 0, "no" (a word for false), null, or a list
    holding one; not true, 1, "true" or a missing claim."""
    if "mfa" not in claims:
        return False
    items = claims["mfa"] if isinstance(claims["mfa"], list) else [claims["mfa"]]
    return any(
        v is None or v is False or (type(v) is int and v == 0) or v in ("no", "false")
        for v in items
    )


def _mfa(claims: dict[str, Any]) -> bool:
    """The allow condition `mfa: true`: the boolean true, or a list holding it."""
    value = claims.get("mfa")
    items = value if isinstance(value, list) else [value]
    return any(v is True for v in items)


def _role_matches(claims: dict[str, Any], wanted: list[str] | None) -> bool:
    if wanted is None:
        return True
    role = claims.get("role")
    roles = role if isinstance(role, list) else [role]
    return any(isinstance(r, str) and r in wanted for r in roles)


# ---------------------------------------------------------------------------- policies


@dataclass
class Rule:
    name: str
    roles: list[str] | None
    filter: Filter | None  # None: all_rows
    columns: tuple[str, ...] | None
    client_where: str
    subset: bool
    replica_full: bool
    anonymous: bool = False
    mfa: bool = False  # `when` also asks for `mfa: true`

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.anonymous:
            out["anonymous"] = True
        if self.roles is not None:
            out["when"] = {"role": self.roles if len(self.roles) > 1 else self.roles[0]}
            if self.mfa:
                out["when"]["mfa"] = True
        if self.filter is None:
            out["all_rows"] = True
        else:
            out["where"] = self.filter.template
        if self.columns is not None:
            out["columns"] = list(self.columns)
        out.update(
            client_where=self.client_where, subset=self.subset, replica_full=self.replica_full
        )
        return out


@dataclass
class Listing:
    table: Table
    key: str
    rules: list[Rule]
    deny: bool
    #: a second deny rule, `{mfa: false}`
    deny_mfa: bool = False
    #: reached through a pattern (`app.*`): may be refused (`pattern_not_safe`), never more
    pattern: bool = False

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allow": [r.config() for r in self.rules]}
        if self.deny:
            out["deny"] = [{"when": {"suspended": True}, "reason": "suspended"}]
        if self.deny_mfa:
            out.setdefault("deny", []).append({"when": {"mfa": False}})
        return out

    def rule_for(self, claims: dict[str, Any] | None) -> Rule | None:
        """The rule serving `claims` (None: a request without a token)."""
        if claims is None:  # (no claims: no deny rule matches, only anonymous rules serve)
            return next((r for r in self.rules if r.anonymous), None)
        if (self.deny and _denied(claims)) or (self.deny_mfa and _mfa_denied(claims)):
            return None
        return next(
            (
                r
                for r in self.rules
                if _role_matches(claims, r.roles) and (not r.mfa or _mfa(claims))
            ),
            None,
        )


#: Filters without claims, for anonymous rules (the same text for the oracle).
_PLAIN_FILTERS = ("id % 2 = 1", "id < 8 OR id > 20", "owner IS NOT NULL", "title LIKE 't%'")


def _rule(rng: random.Random, table: Table, name: str, roles: list[str] | None) -> Rule:
    anonymous = roles is None and rng.random() < 0.3
    filt = None if rng.random() < 0.25 else _combine(rng, table)
    if anonymous and filt is not None:
        text = rng.choice([f for f in _PLAIN_FILTERS if f.split()[0] in (*table.columns, "id")])
        filt = Filter(text, (), lambda b, text=text: text)
    columns = None
    if rng.random() < 0.7:
        rest = [c for c in table.columns[1:] if rng.random() < 0.6]
        columns = (table.columns[0], *rest) if rng.random() < 0.93 else tuple(rest or ["owner"])
    client_where = rng.choice(["validated", "validated", "validated", "forbid"])
    if filt is None and columns is None and rng.random() < 0.3:
        client_where = "passthrough"
    return Rule(
        name,
        roles,
        filt,
        columns,
        client_where,
        rng.random() < 0.8,
        rng.random() < 0.4,
        anonymous,
        roles is not None and rng.random() < 0.3,
    )


def _policy(rng: random.Random) -> tuple[list[Listing], dict[str, Listing]]:
    if rng.random() < 0.2:
        return _partition_policy(rng), {}
    listings = []
    for table in TABLES:
        if rng.random() < 0.15:
            continue
        roles_seq: list[list[str] | None] = rng.choice(
            [[["admin"], ["member"]], [["member", "viewer"]], [None], [["admin"], None], [None]]
        )
        rules = [_rule(rng, table, f"r{i}", roles) for i, roles in enumerate(roles_seq)]
        if table is DOCS and rng.random() < 0.3:
            key = rng.choice(["app.*", "*.docs", "app.d*", "app.[dx]ocs"])
            listings.append(Listing(table, key, rules, rng.random() < 0.5, pattern=True))
            continue
        if table is EVENTS and rng.random() < 0.4:
            # (besides `events` itself: a pattern over its partitions, with rules of its own)
            roles: list[list[str] | None] = rng.choice([[None], [["member"]], [["admin"], None]])
            more = [_rule(rng, table, f"p{i}", r) for i, r in enumerate(roles)]
            key = rng.choice(["app.events_*", "app.*", "*.events_?i"])
            listings.append(Listing(EVENTS_LO, key, more, rng.random() < 0.5, pattern=True))
        listings.append(
            Listing(
                table,
                rng.choice(table.spellings),
                rules,
                rng.random() < 0.5,
                deny_mfa=rng.random() < 0.3,
            )
        )
    shapes = {}
    for i in range(rng.randint(0, 2)):
        table = rng.choice(TABLES)
        rule = _rule(rng, table, "s", rng.choice([None, ["member"]]))
        rule.client_where = "forbid"
        shapes[f"s{i}"] = Listing(table, rng.choice(table.spellings), [rule], rng.random() < 0.5)
    return listings, shapes


def _partition_policy(rng: random.Random) -> list[Listing]:
    """`events` listed and its partitions reached only through a pattern whose rules are
    copies of `events`'s (served: they show no more) or other rules (some showing more,
    refused `pattern_not_safe`): either way, never more than `events`'s rule."""
    roles_seq: list[list[str] | None] = rng.choice(
        [[["admin"], ["member"]], [None], [["member", "viewer"]]]
    )
    rules = [_rule(rng, EVENTS, f"r{i}", roles) for i, roles in enumerate(roles_seq)]
    events = Listing(EVENTS, rng.choice(EVENTS.spellings), rules, rng.random() < 0.5)
    copies = []
    for rule in rules:
        if rng.random() < 0.7:
            copies.append(Rule(**{**rule.__dict__, "name": "p" + rule.name}))
        else:
            copies.append(_rule(rng, EVENTS, "p" + rule.name, rule.roles))
    key = rng.choice(["app.events_*", "app.*", "*.events_?i"])
    partitions = Listing(EVENTS_LO, key, copies, events.deny, pattern=True)
    return [events, partitions]


def _config(base: dict[str, Any], listings: list[Listing], shapes: dict[str, Listing]) -> Any:
    config = dict(base)
    config["tables"] = {lst.key: lst.config() for lst in listings}
    config["shapes"] = {name: {"table": lst.key, **lst.config()} for name, lst in shapes.items()}
    return config


# ---------------------------------------------------------------------------- client clauses


@dataclass(frozen=True)
class Atom:
    text: str
    columns: frozenset[str]
    #: plain: every rule that shows its columns must serve it
    plain: bool = False


def _atoms(table: Table, rng: random.Random) -> list[Atom]:
    n, m = rng.randint(0, 30), rng.randint(0, 30)
    c = {name: frozenset({name}) for name in table.columns}
    out = [
        Atom(f"id > {n}", c["id"], True),
        Atom(f"id IN ({n}, {m})", c["id"], True),
        Atom(f"NOT (id = {n})", c["id"], True),
        Atom(f"id BETWEEN {n} AND {m}", c["id"], True),
        Atom("true", frozenset(), True),
        Atom("id = $1", c["id"]),
        Atom("true) OR (true", frozenset()),
        Atom("id > 0 --", c["id"]),
        Atom("id > 0 -- ) OR (true", c["id"]),
        Atom("id < 0 /* ) OR (true */", c["id"]),
        Atom("id < 0 /* unterminated", c["id"]),
        Atom("(id < 0))", c["id"]),
        Atom("((id < 0)", c["id"]),
        Atom("id::text = $$1$$ OR true", c["id"]),
        Atom("id::text = E'\\'' OR true --'", c["id"]),
        Atom("id::text = E'1\\' OR true --'", c["id"]),
        Atom("id IN (SELECT id FROM items)", c["id"]),
        Atom("EXISTS (SELECT 1)", frozenset()),
        Atom("(SELECT true)", frozenset()),
        Atom("generate_series(1, 2) = 1", frozenset()),
        Atom("current_user = 'x' OR true", frozenset()),
        Atom("pg_sleep(0) IS NULL", frozenset()),
        Atom("id = 1; SELECT 1", c["id"]),
        Atom("$1 = $1", frozenset()),
        Atom("id = $2", c["id"]),
        Atom("ctid IS NOT NULL", frozenset({"ctid"})),
        Atom("items.id > 0", c["id"]),
        Atom("ROW(id) IS NOT NULL", c["id"]),
        Atom("id::text::int > 0", c["id"]),
        Atom("abs(id) > -1", c["id"]),
        Atom("id = ANY('{1,2,3}')", c["id"], True),
    ]
    for name in table.columns[1:]:
        typ = table.types[name]
        col = _ident(name) if name != name.lower() else name
        if typ == "int":
            out += [Atom(f"{col} > {n}", c[name], True), Atom(f"{col} IS NULL", c[name], True)]
        else:
            value = rng.choice([*ORGS, *OWNERS, "t1", "x"])
            out += [
                Atom(f"{col} = {_lit(value)}", c[name], True),
                Atom(f"{col} LIKE 't%'", c[name], True),
                Atom(f"{col} IS NOT NULL", c[name], True),
                Atom(f"upper({col}) = 'T1'", c[name]),
                Atom(f"{col} = $1 OR {col} IS NULL", c[name]),
                Atom(f"\"{name}\" = 'x' OR \"{name}\" <> 'x'", c[name], True),
                Atom(f"{col} COLLATE \"C\" > 't'", c[name]),
            ]
    return out


def _clause(
    rng: random.Random, atoms: list[Atom], depth: int = 0
) -> tuple[str, frozenset[str], bool]:
    if depth >= 2 or rng.random() < 0.45:
        plain = [a for a in atoms if a.plain]
        atom = rng.choice(plain if rng.random() < 0.6 else atoms)
        return atom.text, atom.columns, atom.plain
    parts = [_clause(rng, atoms, depth + 1) for _ in range(rng.randint(2, 3))]
    op = rng.choice([" AND ", " OR "])
    text = "(" + op.join(f"({p[0]})" for p in parts) + ")"
    return text, frozenset().union(*(p[1] for p in parts)), all(p[2] for p in parts)


#: Parameters a client adds to confuse the proxy: repeated, odd names, the proxy's own.
NOISE = [
    ("params[01]", "org-b"), ("params[0]", "1"), ("params[x]", "1"), ("params", '{"1":"org-b"}'),
    ("params[1]", "org-b"), ("params[2]", "org-b"), ("where", "true"), ("where", "id > 0 OR true"),
    ("columns", "id,secret"), ("columns", 'id,"hidden"'), ("replica", "FULL"),
    ("queryable_columns", "secret"), ("secret", "x"), ("source_id", "x"), ("api_secret", "x"),
    ("subset__params", '{"1":"org-b"}'), ("subset__where", "true"), ("log", "changes_only"),
    ("live", "false"), ("cursor", "1"), ("handle", "x"), ("Where", "true"), ("where ", "true"),
    ("params[1]", "1) OR (true"),
]  # fmt: skip

PARAM_VALUES = [
    "1", "5", "x", "'", "1) OR (true", "t1", "", "u1", "%", "\\", "NULL", "{1}", "org-b", "o'q",
]  # fmt: skip


# ---------------------------------------------------------------------------- the oracle


def _with_params(clause: str, params: list[str]) -> str:
    """The client's clause with `$n` replaced by untyped literals, as the engine binds
    them (found by the SQL scanner, so a `$1` inside a string stays text)."""
    from pglast.parser import scan

    try:
        tokens = scan(clause)
    except Exception:
        return clause
    out, last = [], 0
    for token in tokens:
        if token.name == "PARAM":
            number = int(clause[token.start + 1 : token.end + 1])
            if 1 <= number <= len(params):
                out.append(clause[last : token.start])
                out.append(_lit(params[number - 1]))
                last = token.end + 1
    out.append(clause[last:])
    return "".join(out)


@dataclass
class Expected:
    """What the oracle says of one request: refused (with why), or these rows."""

    refused: str | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    #: the proxy must serve it (no odd construct): a refusal is a finding
    must_serve: bool = False
    #: a partition served through a pattern: the ids and columns its listed parent's rule
    #: shows the caller, beyond which nothing may be served
    parent: tuple[set[str], tuple[str, ...]] | None = None


def _text(value: Any) -> Any:
    return None if value is None else str(value)


def _select(
    conn: psycopg.Connection[Any],
    table: Table,
    columns: tuple[str, ...],
    predicate: str | None,
    clause: str | None,
) -> dict[str, dict[str, Any]]:
    where = predicate or "true"
    if clause is not None:
        # (a newline: a client's trailing `--` comment must not swallow the rest)
        where = f"CASE WHEN ({where}) THEN ({clause}\n) ELSE false END"
    query = (
        f"SELECT {', '.join(_ident(c) for c in columns)} FROM "
        f"{_ident(table.schema)}.{_ident(table.name)} WHERE {where}"
    )
    with conn.transaction():
        rows = conn.execute(query).fetchall()
    key = columns.index("id")
    return {str(r[key]): {c: _text(v) for c, v in zip(columns, r, strict=True)} for r in rows}


# ---------------------------------------------------------------------------- requests


@dataclass
class Request:
    path: str  # with the query, without offset/handle
    table: Table | None
    listing: Listing | None
    named: bool
    where: tuple[str, frozenset[str], bool] | None
    params: list[str]
    columns: list[str] | None  # exact names asked for (None: not sent)
    columns_ok: bool  # every spelling names an existing column
    replica_full: bool
    subset: str | None  # "get" / "post"
    body: bytes | None = None
    #: a subset's shape where (with its own params), beside the subset's where
    outer: tuple[str, frozenset[str], bool] | None = None
    outer_params: tuple[str, ...] = ()
    #: the shape's `params` as the npm client takes them (None: a subset, or not for it)
    client: dict[str, Any] | None = None
    #: junk parameters added (repeated, odd names): only "nothing beyond the policy" holds
    noisy: bool = False
    #: for a partition of `events`: the listing of `events` itself, if any
    parent: Listing | None = None


def _listing_of(listings: list[Listing], table: Table) -> Listing | None:
    """The listing the proxy serves `table` by: its exact name first, then patterns in order."""
    exact = next((x for x in listings if x.table is table and not x.pattern), None)
    if exact is not None:
        return exact
    for listing in listings:
        if listing.pattern:
            schema, _, name = listing.key.partition(".")
            if fnmatchcase(table.schema, schema) and fnmatchcase(table.name, name):
                return listing
    return None


def _columns_param(rng: random.Random, table: Table) -> tuple[str, list[str], bool]:
    names = rng.sample(table.columns, rng.randint(1, len(table.columns)))
    if rng.random() < 0.15:
        names.append(names[0])  # a duplicate
    spelt, exact, ok = [], [], True
    for name in names:
        form = rng.random()
        if form < 0.4:
            spelt.append(_ident(name))
            exact.append(name)
        elif form < 0.5 and name.islower():
            spelt.append(name.upper())  # unquoted: folded back to the name
            exact.append(name)
        elif form < 0.55:
            spelt.append(_ident(name.upper()))  # quoted: another (missing) column
            exact.append(name.upper())
            ok = ok and name.upper() in table.columns
        elif name == name.lower():
            spelt.append(name)
            exact.append(name)
        else:
            spelt.append(_ident(name))
            exact.append(name)
    return ",".join(spelt), exact, ok


def _request(
    rng: random.Random,
    listings: list[Listing],
    shapes: dict[str, Listing],
) -> Request:
    lst: Listing | None
    if shapes and rng.random() < 0.15:
        name = rng.choice(sorted(shapes))
        lst = shapes[name]
        return Request(
            f"/shapes/{name}?", lst.table, lst, True, None, [], None, True, False, None, client={}
        )
    if rng.random() < 0.08:
        spelling, table, lst = rng.choice(WRONG), None, None
    else:
        table = rng.choice((*TABLES, *PARTITIONS))
        spelling = rng.choice(table.spellings)
        if table is ITEMS and rng.random() < 0.2:
            spelling = rng.choice(ITEMS_TOO)
        lst = _listing_of(listings, table)
    query = [("table", spelling)]
    where = None
    params: list[str] = []
    columns = None
    columns_ok = True
    schema_table = table or ITEMS
    if rng.random() < 0.75:
        where = _clause(rng, _atoms(schema_table, rng))
        if "$" in where[0] and rng.random() < 0.9:
            params = [rng.choice(PARAM_VALUES) for _ in range(rng.choice([1, 1, 2]))]
    if rng.random() < 0.4:
        text, columns, columns_ok = _columns_param(rng, schema_table)
        query.append(("columns", text))
    replica = rng.random() < 0.15
    if replica:
        query.append(("replica", "full"))
    subset = None
    body = None
    outer = None
    outer_params: list[str] = []
    if rng.random() < 0.3 and where is not None:
        subset = rng.choice(["get", "post"])
        if rng.random() < 0.6:  # a subset of a filtered shape, each with its own params
            outer = _clause(rng, _atoms(schema_table, rng))
            if "$" in outer[0]:
                outer_params = [rng.choice(PARAM_VALUES) for _ in range(rng.choice([1, 2]))]
            query.append(("where", outer[0]))
            query += [(f"params[{i}]", p) for i, p in enumerate(outer_params, 1)]
        if subset == "get":
            query.append(("subset__where", where[0]))
            if params:
                query.append(("subset__params", json.dumps(dict(enumerate(params, 1)))))
        else:
            payload: dict[str, Any] = {"where": where[0]}
            if params:
                payload["params"] = {str(i): p for i, p in enumerate(params, 1)}
            body = json.dumps(payload).encode()
    elif where is not None:
        query.append(("where", where[0]))
        query += [(f"params[{i}]", p) for i, p in enumerate(params, 1)]
    noisy = rng.random() < 0.12
    if noisy:
        for _ in range(rng.randint(1, 3)):
            query.insert(rng.randint(1, len(query)), rng.choice(NOISE))
    path = "/v1/shape?" + "&".join(f"{quote(k, safe='[]')}={quote(v, safe='')}" for k, v in query)
    client: dict[str, Any] | None = None
    if subset is None and not noisy:
        client = {"table": spelling}
        if where is not None:
            client["where"] = where[0]
            if params:
                client["params"] = dict(enumerate(params, 1))
        if columns is not None:
            client["columns"] = columns  # (the names: the client quotes them itself)
        if replica:
            client["replica"] = "full"
    return Request(
        path,
        table,
        lst,
        False,
        where,
        params,
        columns,
        columns_ok,
        replica,
        subset,
        body,
        outer,
        tuple(outer_params),
        client,
        noisy,
        next((x for x in listings if x.table is EVENTS and not x.pattern), None)
        if table in PARTITIONS
        else None,
    )


def _expect(conn: psycopg.Connection[Any], req: Request, claims: dict[str, Any] | None) -> Expected:
    if req.table is None:
        return Expected("no such table")
    if req.listing is None:
        return Expected("table not listed")
    rule = req.listing.rule_for(claims)
    if rule is None:
        return Expected("no rule")
    table = req.table
    visible = rule.columns or table.columns
    forbid = rule.client_where == "forbid" and req.subset is None  # (a subset may narrow)
    if req.where is not None and not req.named and forbid:
        return Expected("client where forbidden")
    if req.outer is not None and rule.client_where == "forbid":
        return Expected("client where forbidden")
    if req.outer is not None and not req.outer[1] <= set(visible):
        return Expected("hidden or unknown column in where")
    if req.subset is not None and not rule.subset:
        return Expected("subset forbidden")
    if req.replica_full and not rule.replica_full:
        return Expected("replica forbidden")
    if req.where is not None and not req.where[1] <= set(visible):
        return Expected("hidden or unknown column in where")
    if req.columns is not None:
        if not req.columns_ok or not set(req.columns) <= set(visible):
            return Expected("hidden or unknown column")
        if "id" not in req.columns:
            return Expected("key left out")
        shown = tuple(c for c in table.columns if c in req.columns)
    else:
        shown = tuple(c for c in table.columns if c in visible)
    if "id" not in shown:
        return Expected("rule without the key")
    predicate = None
    if rule.filter is not None:
        bound = _bindings(claims or {}, rule.filter.claims)
        if bound is None:
            return Expected("claim unusable")
        predicate = rule.filter.oracle(bound)
    clause = None
    if req.where is not None:
        clause = _with_params(req.where[0], req.params)
    if req.outer is not None:
        outer = _with_params(req.outer[0], list(req.outer_params))
        clause = f"({outer}\n) AND ({clause}\n)"
    try:
        rows = _select(conn, table, shown, predicate, clause)
    except psycopg.Error as exc:
        return Expected(f"postgres: {str(exc).splitlines()[0]}")
    must = req.where is None or (req.where[2] and not req.params)
    must = must and (req.outer is None or (req.outer[2] and not req.outer_params))
    must = must and not req.named and not req.listing.pattern
    parent = None
    if table in PARTITIONS:
        events = req.parent
        if events is not None:
            prule = events.rule_for(claims)
            if prule is None:
                return Expected("a partition of a table this caller may not read")
            pvisible = tuple(c for c in table.columns if c in (prule.columns or table.columns))
            ppred = None
            if prule.filter is not None:
                bound = _bindings(claims or {}, prule.filter.claims)
                ppred = "false" if bound is None else prule.filter.oracle(bound)
            try:
                pids = set(_select(conn, table, ("id",), ppred, None))
            except psycopg.Error:
                pids = set()
            parent = (pids, pvisible)
    return Expected(None, rows, shown, must_serve=must, parent=parent)


# ---------------------------------------------------------------------------- the run


class Leak(AssertionError):
    pass


def _values(reply: Any, subset: bool) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    data = reply.json()
    messages = data["data"] if subset else data
    # Every column the answer names: its rows' values, their old values (replica=full) and
    # the columns its `electric-schema` header describes (a hidden one's name and type are
    # not to be told either).
    values = [
        m[part]
        for m in messages
        if isinstance(m, dict)
        for part in ("value", "old_value")
        if isinstance(m.get(part), dict)
    ]
    schema = reply.headers.get("electric-schema")
    if schema:
        values.append(dict.fromkeys(json.loads(schema)))
    rows: dict[str, dict[str, Any]] = {}
    if subset:  # (a subset answer is whole: inserts only)
        apply_messages(rows, messages)
    return rows, values


def _by_id(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {value["id"]: value for value in rows.values() if "id" in value}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    items = ", ".join(
        f"({i}, {_lit(ORGS[i % len(ORGS)])}, {_lit(OWNERS[i % len(OWNERS)])}, "
        f"{_lit(t) if (t := TITLES[i % len(TITLES)]) is not None else 'NULL'}, {i % 25}, "
        f"'s{i}')"
        for i in range(1, 31)
    )
    notes = ", ".join(
        f"({i}, {_lit(OWNERS[i % len(OWNERS)])}, 'b{i}', 'h{i}')" for i in range(1, 13)
    )
    docs = ", ".join(
        f"({i}, {_lit(ORGS[(i * 3) % len(ORGS)])}, {_lit(TITLES[i % len(TITLES)] or 'd')}, 'p')"
        for i in range(1, 13)
    )
    events = ", ".join(
        f"({i}, {_lit(ORGS[(i * 7) % len(ORGS)])}, {_lit(TITLES[(i * 3) % len(TITLES)] or 'e')},"
        f" 's{i}')"
        for i in range(1, 31)
    )
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, owner text, title text,"
        " n int, secret text)",
        f"INSERT INTO items VALUES {items}",
        'CREATE TABLE "Notes" (id int PRIMARY KEY, owner text, "Body" text, hidden text)',
        f'INSERT INTO "Notes" VALUES {notes}',
        "CREATE TABLE events (id int PRIMARY KEY, org_id text, title text, secret text)"
        " PARTITION BY RANGE (id)",
        "CREATE TABLE marker (id int PRIMARY KEY, n int)",
        "INSERT INTO marker VALUES (1, 0)",
        "CREATE SCHEMA app",
        "CREATE TABLE app.docs (id int PRIMARY KEY, org_id text, title text, pin text)",
        f"INSERT INTO app.docs VALUES {docs}",
        "CREATE TABLE app.events_lo PARTITION OF events FOR VALUES FROM (MINVALUE) TO (16)",
        "CREATE TABLE app.events_hi PARTITION OF events FOR VALUES FROM (16) TO (MAXVALUE)",
        f"INSERT INTO events VALUES {events}",
    )


@dataclass
class Follower:
    user: int
    req: Request
    rows: dict[str, dict[str, Any]]
    handle: str
    offset: str


async def _fetch(proxy: Any, req: Request, token: str | None, extra: str) -> Any:
    path = req.path + extra
    for attempt in range(6):
        if req.body is not None:
            reply = await proxy.request(
                "POST",
                path,
                token=token,
                data=req.body,
                headers={"Content-Type": "application/json"},
            )
        else:
            reply = await proxy.get(path, token=token)
        if reply.status not in (502, 503, 504):
            break
        # (a busy machine: the engine slow to answer; the client retries these too)
        await asyncio.sleep(0.5 * (attempt + 1))
    if reply.status == 200:
        _check_caching(reply, f"{path} {req.body!r}")
    return reply


def _shared(reply: Any) -> bool:
    """The answer says a shared cache may keep it (not `private`, not `no-store`): it must
    be the same for everyone (re-asked by every other caller in `_round`)."""
    cache_control = reply.headers.get("cache-control", "").lower()
    return "private" not in cache_control and "no-store" not in cache_control


def _check_caching(reply: Any, note: str) -> None:
    """An answer for its caller only is `private` (or not kept at all) with `Vary:
    Authorization`, so that a browser shared by two users does not hand one's answer to
    the other."""
    cache_control = reply.headers.get("cache-control", "").lower()
    if _shared(reply) or "no-store" in cache_control:
        return
    vary = ",".join(reply.headers.getall("vary", [])).lower()
    assert "authorization" in vary, (note, cache_control, vary)


#: Refusals that junk parameters cannot lift: who the caller is, which table.
_STRICT = ("no such table", "table not listed", "no rule", "claim unusable")


def _check_noisy(
    conn: psycopg.Connection[Any],
    req: Request,
    claims: dict[str, Any] | None,
    reply: Any,
    followed: tuple[dict[str, dict[str, Any]], list[dict[str, Any]]] | None,
    note: str,
    stats: Counter[str],
) -> None:
    """A request with junk parameters: refused, or rows of the policy's own (whatever the
    client's clause turned out to be), in the rule's columns, as they are in the table."""
    expected = _expect(conn, req, claims)
    if reply.status != 200:
        assert reply.status < 500, (note, reply.status, reply.body)
        stats["noisy: refused"] += 1
        return
    if expected.refused is not None and expected.refused.startswith(_STRICT):
        raise Leak(f"{note}: served though {expected.refused}")
    assert req.table is not None and req.listing is not None, note
    rule = req.listing.rule_for(claims)
    assert rule is not None, note
    visible = tuple(c for c in req.table.columns if c in (rule.columns or req.table.columns))
    predicate = None
    if rule.filter is not None:
        bound = _bindings(claims or {}, rule.filter.claims)
        assert bound is not None, note
        predicate = rule.filter.oracle(bound)
    allowed = _select(conn, req.table, visible, predicate, None)
    rows, values = followed if followed is not None else _values(reply, req.subset is not None)
    for value in values:
        if not set(value) <= set(visible):
            raise Leak(f"{note}: columns {sorted(value)} beyond {visible}")
    for row_id, value in _by_id(rows).items():
        if row_id not in allowed:
            raise Leak(f"{note}: row {row_id} beyond the policy's")
        assert all(allowed[row_id][c] == v for c, v in value.items()), (note, value)
    stats["noisy: served"] += 1


def _check(
    req: Request,
    expected: Expected,
    reply: Any,
    followed: tuple[dict[str, dict[str, Any]], list[dict[str, Any]]] | None,
    note: str,
    stats: Counter[str],
) -> dict[str, dict[str, Any]] | None:
    """Compare an answer (the last reply; `followed`: the rows and values of every reply
    from -1 to up-to-date) with the oracle; the rows served, if any."""
    if reply.status >= 500:
        raise AssertionError(f"{note}: {reply.status} {reply.body[:300]!r}")
    if expected.refused is not None:
        if reply.status == 200:
            subset = req.subset is not None
            _, values = _values(reply, subset)
            raise Leak(f"{note}: served though {expected.refused}: {values[:3]}")
        assert 400 <= reply.status < 500, (note, reply.status)
        stats[f"refused as expected: {expected.refused[:24]}"] += 1
        return None
    if reply.status != 200:
        stats[f"refused: {reply.status}"] += 1
        if os.environ.get("PROXY_POLICY_ORACLE_DEBUG"):
            print("REFUSED", note, reply.status, reply.body[:300])
        if expected.must_serve:
            raise AssertionError(f"{note}: a plain request refused: {reply.status} {reply.body!r}")
        return None
    rows, values = followed if followed is not None else _values(reply, req.subset is not None)
    for value in values:
        if not set(value) <= set(expected.columns):
            raise Leak(f"{note}: columns {sorted(value)} beyond {expected.columns}")
    got = _by_id(rows)
    if expected.parent is not None:
        beyond = set(got) - expected.parent[0]
        if beyond:
            raise Leak(f"{note}: partition rows {sorted(beyond)} its parent's rule hides")
        for value in values:
            if not set(value) <= set(expected.parent[1]):
                raise Leak(f"{note}: columns {sorted(value)} its parent's rule hides")
    extra = set(got) - set(expected.rows)
    if extra:
        raise Leak(f"{note}: rows {sorted(extra)} beyond the oracle's")
    assert got == expected.rows, (note, got, expected.rows)
    stats["served"] += 1
    return rows


@dataclass
class Synced:
    reply: Any  # the last one
    rows: dict[str, dict[str, Any]]
    values: list[dict[str, Any]]  # every row value served on the way
    handle: str | None = None
    offset: str | None = None


async def _sync(proxy: Any, req: Request, token: str | None, note: str) -> Synced:
    """Follow from -1 to up-to-date (a subset: one answer)."""
    rows: dict[str, dict[str, Any]]
    values: list[dict[str, Any]]
    if req.subset is not None:
        reply = await _fetch(proxy, req, token, "&offset=-1")
        if reply.status != 200:
            return Synced(reply, {}, [])
        rows, values = _values(reply, True)
        return Synced(reply, rows, values)
    rows = {}
    values = []
    offset, handle = "-1", None
    for _ in range(30):
        extra = f"&offset={offset}" + (f"&handle={handle}" if handle else "")
        reply = await _fetch(proxy, req, token, extra)
        if reply.status == 409:
            rows, offset, handle = {}, "-1", None
            continue
        if reply.status != 200:
            return Synced(reply, rows, values)
        if reply.headers.get("electric-snapshot"):  # (junk subset params made it a subset)
            rows, values = _values(reply, True)
            return Synced(reply, rows, values)
        apply_messages(rows, reply.json())
        values += _values(reply, False)[1]
        handle = reply.headers["electric-handle"]
        offset = reply.headers["electric-offset"]
        if "electric-up-to-date" in reply.headers:
            return Synced(reply, rows, values, handle, offset)
    raise AssertionError(f"{note}: never up to date: {dict(reply.headers)} {reply.body[:200]!r}")


async def _settle(conn: psycopg.Connection[Any], engine: EngineProcess, secret: str) -> None:
    """Wait until the engine has read every committed write: a write to `marker`, after
    them, seen in its shape (the engine reads transactions in commit order)."""
    (n,) = conn.execute("UPDATE marker SET n = n + 1 RETURNING n").fetchone() or (0,)
    url = f"{engine.url}/v1/shape?table=marker&secret={secret}"
    async with aiohttp.ClientSession() as session:
        rows: dict[str, dict[str, Any]] = {}
        offset, handle = "-1", ""
        for _ in range(100):
            live = "&live=true" if offset != "-1" else ""
            async with session.get(f"{url}&offset={offset}{handle}{live}") as reply:
                if reply.status == 409:
                    rows, offset, handle = {}, "-1", ""
                    continue
                assert reply.status == 200, await reply.text()
                apply_messages(rows, await reply.json())
                offset = reply.headers["electric-offset"]
                handle = f"&handle={reply.headers['electric-handle']}"
            if rows.get('"public"."marker"/"1"', {}).get("n") == str(n):
                return
    raise AssertionError("the engine never saw the last write")


def _npm_check(got: dict[str, Any], expected: Expected, note: str) -> None:
    """The npm client's rows (values as text) against the oracle's."""
    assert "rows" in got, (note, got)
    rows = got["rows"]
    for value in rows.values():
        if not set(value) <= set(expected.columns):
            raise Leak(f"{note}: columns {sorted(value)} beyond {expected.columns}")
    extra = set(rows) - set(expected.rows)
    if extra:
        raise Leak(f"{note}: rows {sorted(extra)} beyond the oracle's")
    assert rows == expected.rows, (note, rows, expected.rows)


def _write(conn: psycopg.Connection[Any], rng: random.Random) -> None:
    for _ in range(12):
        table = rng.choice(TABLES)
        name = f"{_ident(table.schema)}.{_ident(table.name)}"
        i = rng.randint(1, 36)
        action = rng.random()
        if action < 0.3 and "org_id" in table.columns:
            conn.execute(f"UPDATE {name} SET org_id = %s WHERE id = %s", (rng.choice(ORGS), i))
        elif action < 0.55:
            conn.execute(
                f"UPDATE {name} SET owner = %s WHERE id = %s"
                if "owner" in table.columns
                else f"UPDATE {name} SET title = %s WHERE id = %s",
                (rng.choice(OWNERS), i),
            )
        elif action < 0.65 and "title" in table.columns:
            conn.execute(f"UPDATE {name} SET title = %s WHERE id = %s", (rng.choice(TITLES), i))
        elif action < 0.85:
            values: dict[str, Any] = {c: None for c in table.columns}
            values["id"] = i
            for c in table.columns[1:]:
                values[c] = (
                    rng.randint(0, 30) if table.types[c] == "int" else rng.choice(ORGS + OWNERS)
                )
            cols = ", ".join(_ident(c) for c in values)
            marks = ", ".join(["%s"] * len(values))
            conn.execute(
                f"INSERT INTO {name} ({cols}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING",
                list(values.values()),
            )
        else:
            conn.execute(f"DELETE FROM {name} WHERE id = %s", (i,))


async def _round(
    seed: int,
    engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    stats: Counter[str],
    procs: list[asyncio.subprocess.Process],
) -> None:
    rng = random.Random(seed)
    listings, shapes = _policy(rng)
    base = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    base["upstream"] = {**base["upstream"], "first_byte_timeout": 10}
    base["limits"] = {"max_concurrent": 1000, "rate": 100000, "burst": 100000}
    config = _config(base, listings, shapes)
    try:
        loaded = build_config(config, environ)
    except Exception as exc:  # a policy the loader refuses is fine, but say which
        stats[f"policy refused: {type(exc).__name__}"] += 1
        return
    if os.environ.get("PROXY_POLICY_ORACLE_DEBUG"):
        print("POLICY", seed, json.dumps(config["tables"]), json.dumps(config["shapes"]))
    proxy = await make_proxy(loaded)
    users: list[dict[str, Any] | None] = [_user(rng, n) for n in range(rng.randint(3, 5))]
    tokens: list[str | None] = [  # (without the helper's default role and org_id)
        proxy.tokens.make(drop=tuple({"role", "org_id"} - set(claims)), **claims)
        for claims in cast(list[dict[str, Any]], users)  # (no None in it yet)
    ]
    users.append(None)  # and someone without a token
    tokens.append(None)
    followers: list[Follower] = []
    public: list[tuple[Request, str, dict[str, dict[str, Any]]]] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for r in range(REQUESTS):
            req = _request(rng, listings, shapes)
            u = rng.randrange(len(users))
            note = f"seed {seed} req {r} user {users[u]} {req.path} {req.body!r}"
            expected = _expect(conn, req, users[u])
            synced = await _sync(proxy, req, tokens[u], note)
            reply = synced.reply
            followed = (synced.rows, synced.values) if reply.status == 200 else None
            if req.noisy:
                _check_noisy(conn, req, users[u], reply, followed, note, stats)
                continue
            served = _check(req, expected, reply, followed, note, stats)
            if served is None:
                continue
            if req.outer is not None:
                stats["served: a subset of a filtered shape"] += 1
            if req.table in PARTITIONS:
                stats["served: a partition through a pattern"] += 1
            if req.subset is None:
                assert synced.handle is not None and synced.offset is not None
                followers.append(Follower(u, req, synced.rows, synced.handle, synced.offset))
            if _shared(reply):
                public.append((req, note, _by_id(synced.rows)))

        # The real npm client, following some of the served shapes through the proxy.
        npm_followers = [f for f in followers if f.req.client is not None][:NPM_SHAPES]
        npm = None
        if npm_followers:
            url_base = str(proxy.client.make_url("")).rstrip("/")
            specs = [
                {
                    "url": url_base + f.req.path.partition("?")[0],
                    "params": f.req.client,
                    "token": tokens[f.user],
                }
                for f in npm_followers
            ]
            npm = await asyncio.create_subprocess_exec(
                "node",
                str(NPM_SCRIPT),
                json.dumps(specs),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            procs.append(npm)
            assert npm.stdout is not None and npm.stdin is not None
            answers = json.loads(await asyncio.wait_for(npm.stdout.readline(), 60))
            for follower, got in zip(npm_followers, answers, strict=True):
                note = f"seed {seed} npm client {users[follower.user]} {follower.req.client}"
                _npm_check(got, _expect(conn, follower.req, users[follower.user]), note)
                stats["npm client: snapshot"] += 1

        # Another user with the first one's handle and offset: an answer of the other
        # user's own shape (its handle, its columns) or a refetch, never the first one's.
        for follower in rng.sample(followers, min(len(followers), 8)):
            v = rng.randrange(len(users))
            if v == follower.user:
                continue
            mine = follower.req
            expected = _expect(conn, mine, users[v])
            own = await _sync(proxy, mine, tokens[v], "own")
            for extra in (
                f"&offset={follower.offset}&handle={follower.handle}",
                f"&offset=-1&handle={follower.handle}",
                f"&offset=0_0&handle={follower.handle}",
            ):
                note = f"seed {seed} {users[v]} reuses {users[follower.user]}: {mine.path}{extra}"
                reply = await _fetch(proxy, mine, tokens[v], extra)
                if reply.status == 200:
                    if expected.refused is not None:
                        raise Leak(f"{note}: served though {expected.refused}")
                    handle = reply.headers.get("electric-handle")
                    if handle != own.handle:
                        raise Leak(f"{note}: served shape {handle}, not the user's {own.handle}")
                    for value in _values(reply, False)[1]:
                        assert set(value) <= set(expected.columns), (note, value)
                    stats["handle reuse: served"] += 1
                else:
                    assert reply.status < 500, (note, reply.status, reply.body)
                    stats[f"handle reuse: {reply.status}"] += 1

        # A shared (public) answer: every other user asking the same gets the same rows.
        for req, note, rows in public:
            for v, token in enumerate(tokens):
                again = await _sync(proxy, req, token, note)
                assert again.reply.status == 200, (note, users[v], again.reply.status)
                assert _by_id(again.rows) == rows, (note, users[v])
                stats["public re-asked"] += 1

        _write(conn, rng)
        await _settle(conn, engine, environ["ENGINE_SECRET"])
        if npm is not None:
            assert npm.stdout is not None and npm.stdin is not None
            wanted = [_expect(conn, f.req, users[f.user]) for f in npm_followers]
            npm.stdin.write(json.dumps([w.rows for w in wanted]).encode() + b"\n")
            await npm.stdin.drain()
            answers = json.loads(await asyncio.wait_for(npm.stdout.readline(), 60))
            for follower, got, expected in zip(npm_followers, answers, wanted, strict=True):
                note = f"seed {seed} npm client live {users[follower.user]} {follower.req.client}"
                _npm_check(got, expected, note)
                stats["npm client: live"] += 1
            await npm.wait()
        for follower in followers:
            note = f"seed {seed} live user {users[follower.user]} {follower.req.path}"
            expected = _expect(conn, follower.req, users[follower.user])
            for _ in range(20):
                extra = f"&offset={follower.offset}&handle={follower.handle}"
                reply = await _fetch(proxy, follower.req, tokens[follower.user], extra)
                if reply.status == 409:
                    again = await _sync(proxy, follower.req, tokens[follower.user], note)
                    assert again.handle is not None and again.offset is not None, note
                    follower.rows, follower.handle = again.rows, again.handle
                    follower.offset = again.offset
                else:
                    assert reply.status == 200, (note, reply.status, reply.body)
                    apply_messages(follower.rows, reply.json())
                    _, values = _values(reply, False)
                    for value in values:
                        assert set(value) <= set(expected.columns), (note, value)
                    follower.offset = reply.headers["electric-offset"]
                if _by_id(follower.rows) == expected.rows:
                    break
                live = await _fetch(
                    proxy,
                    follower.req,
                    tokens[follower.user],
                    f"&offset={follower.offset}&handle={follower.handle}&live=true&cursor=1",
                )
                if live.status == 200:
                    apply_messages(follower.rows, live.json())
                    follower.offset = live.headers["electric-offset"]
            extra_rows = set(_by_id(follower.rows)) - set(expected.rows)
            if extra_rows:
                raise Leak(f"{note}: live rows {sorted(extra_rows)} beyond the oracle's")
            assert _by_id(follower.rows) == expected.rows, note
            stats["live checked"] += 1
    await proxy.client.close()


async def test_random_policies_serve_exactly_the_oracles_rows(
    engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
) -> None:
    stats: Counter[str] = Counter()
    procs: list[asyncio.subprocess.Process] = []  # the npm clients, stopped whatever happens
    try:
        for seed in SEEDS:
            await _round(seed, engine, db_url, idp_server, environ, make_proxy, stats, procs)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    print("POLICY ORACLE", sorted(stats.items()))
    assert stats["served"] > 0, stats
