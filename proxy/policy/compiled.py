"""The policy in the form the evaluator uses: table keys normalised, templates compiled.

Built once per (re)load from a validated `ProxyConfig`; immutable afterwards, so a reload
swaps one reference and in-flight requests keep the policy they started with. Exact table
names are looked up in a dict; patterns (`public.*`) are tried after them, in file order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.config.model import AccessRule, ClaimMatch, ProxyConfig, TablePolicy
from proxy.limits.config import RuleLimits
from proxy.policy.slots import claim_slots
from proxy.policy.sql import (
    PLACEHOLDER,
    ClauseCache,
    CompiledTemplate,
    compile_template,
    without_collate,
)
from proxy.policy.tables import TableKey, TablePattern, parse_table_pattern
from sync_engine.shapes.where import WhereError, check_where_constructs


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One allow rule, its where template compiled to `$n` parameters."""

    name: str
    when: Mapping[str, ClaimMatch]
    template: CompiledTemplate | None
    columns: frozenset[str] | None
    column_order: tuple[str, ...] | None
    client_where: str  # "forbid", "validated" or "passthrough"
    subset: bool
    replica_full: bool
    sse: bool
    anonymous: bool
    delete: bool

    @property
    def caller_independent(self) -> bool:
        """Every caller, with or without a token, gets the same rows and columns."""
        return self.anonymous and not self.when and not self.claim_paths

    @property
    def claim_paths(self) -> tuple[str, ...]:
        return self.template.claim_paths if self.template is not None else ()

    limits: RuleLimits | None = None  # overrides of the global per-principal limits
    #: Indexes (into `claim_paths`) of the claims the filter reads as one value wherever it
    #: uses them (`slots.single_value_slots`): text in array syntax is bound there as is.
    single_slots: frozenset[int] = frozenset()
    #: Indexes of the claims the filter reads whole as an array wherever it uses them
    #: (`slots.list_slots`): the only places a JSON-list claim is bound.
    list_slots: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class CompiledDeny:
    when: Mapping[str, ClaimMatch]
    reason: str


@dataclass(frozen=True, slots=True)
class CompiledTable:
    """A table (or named shape) as the client names it upstream, with its rules in order."""

    table: str
    pattern: TablePattern
    allow: tuple[CompiledRule, ...]
    deny: tuple[CompiledDeny, ...]

    @property
    def key(self) -> TableKey:
        return self.pattern.key

    @property
    def shared(self) -> bool:
        """Whoever asks, the same rule applies: no deny rule and a first rule for everyone.

        Then the engine's answer does not depend on the caller and may be cached publicly
        (a CDN may share it); otherwise it is private to the caller.
        """
        return not self.deny and self.allow[0].caller_independent


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    tables: Mapping[TableKey, CompiledTable]
    #: Tables given as patterns, tried in file order after the exact names.
    patterns: tuple[CompiledTable, ...]
    shapes: Mapping[str, CompiledTable]
    #: Some rule serves requests without a token.
    anonymous: bool
    #: Checked client clauses by text; lives as long as this policy (a reload starts empty).
    clauses: ClauseCache = field(default_factory=ClauseCache, compare=False, repr=False)


def _check_columns(columns: list[str], label: str) -> None:
    """What a rule's `columns` can be checked for without the table (the proxy has no
    catalog): names Postgres can hold, each once. Whether they include the primary key is
    known only to the engine, which refuses every request of a rule that omits it
    (`rule_columns_error` then names the rule)."""
    seen: set[str] = set()
    for name in columns:
        if not name or "\x00" in name or len(name.encode("utf-8", "surrogatepass")) > 63:
            raise ValueError(
                f"{label}: {name!r} cannot be a column name (1 to 63 bytes, no NUL; "
                "write names exactly as Postgres stores them, without quotes)"
            )
        if name in seen:
            raise ValueError(f"{label}: {name!r} is listed twice")
        seen.add(name)


#: A rule's filter compiled (`_compile_where`): its template and `claim_slots`.
CompiledWhere = tuple[CompiledTemplate, tuple[frozenset[int], frozenset[int]]]


def _compile_where(text: str, compiled: dict[str, CompiledWhere]) -> CompiledWhere:
    """A rule's filter compiled and checked, once per load: the rules of many tables often
    share one (`org_id = {{org_id}}`), and each was parsed, printed and checked the whole
    way again (`compiled`: the filters of this load so far, by their text; what it holds is
    immutable). Raises ValueError."""
    known = compiled.get(text)
    if known is not None:
        return known
    template = compile_template(text)
    # The engine ships with the proxy: a filter it would refuse (a subquery, a function it
    # does not evaluate...) would make every request of the rule fail, so it fails here.
    try:
        # (its COLLATE clauses are checked by `compile_template`: "C" and "POSIX" only)
        check_where_constructs(without_collate(template.sql))
    except WhereError as exc:
        raise ValueError(
            f"the sync engine does not accept this filter ({template.sql!r}): {exc}"
        ) from None
    compiled[text] = template, claim_slots(template.sql)
    return compiled[text]


def _compile_rule(
    rule: AccessRule, index: int, where: str, compiled: dict[str, CompiledWhere]
) -> CompiledRule:
    named = f" (rule {rule.name!r})" if rule.name else ""
    label = f"{where}.allow.{index}{named}.where"
    template: CompiledTemplate | None = None
    slots: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
    if rule.where is not None:
        try:
            template, slots = _compile_where(rule.where, compiled)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
    if rule.columns is not None:
        _check_columns(rule.columns, f"{where}.allow.{index}.columns{named}")
    return CompiledRule(
        name=rule.name or f"rule{index}",
        when=MappingProxyType(dict(rule.when)),
        template=template,
        columns=frozenset(rule.columns) if rule.columns is not None else None,
        column_order=tuple(rule.columns) if rule.columns is not None else None,
        client_where=rule.client_where,
        subset=rule.subset,
        replica_full=rule.replica_full,
        sse=rule.sse,
        anonymous=rule.anonymous,
        delete=rule.delete,
        limits=rule.limits,
        single_slots=slots[0],
        list_slots=slots[1],
    )


def _compile_table(
    table: str, policy: TablePolicy, where: str, compiled: dict[str, CompiledWhere]
) -> CompiledTable:
    try:
        pattern = parse_table_pattern(table)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return CompiledTable(
        table=table,
        pattern=pattern,
        allow=tuple(_compile_rule(r, i, where, compiled) for i, r in enumerate(policy.allow)),
        deny=tuple(
            CompiledDeny(when=MappingProxyType(dict(d.when)), reason=d.reason or "denied")
            for d in policy.deny
        ),
    )


#: Claims that name a user only within the issuer that minted them (RFC 7519 §4.1.2: "locally
#: unique in the context of the issuer"): two issuers may give two people the same `sub`.
ISSUER_SCOPED_CLAIMS = frozenset({"sub"})


def _check_subject_scope(rule: AccessRule, index: int, where: str, issuers: int) -> None:
    """With several issuers, a rule that picks rows or grants access by `sub` must say whose
    subjects it means (`when: {iss: ...}`): else a user of one issuer whose `sub` happens to
    equal another issuer's user's (sequential ids, user names, e-mail addresses) is served
    that user's rows (`owner = {{sub}}`) or rule (`when: {sub: ...}`)."""
    if issuers < 2 or "iss" in rule.when:
        return
    named = f" (rule {rule.name!r})" if rule.name else ""
    bound = set(PLACEHOLDER.findall(rule.where or ""))
    for claim in sorted(ISSUER_SCOPED_CLAIMS):
        if claim in bound or claim in rule.when:
            use = f"binds {{{{{claim}}}}}" if claim in bound else f"matches on {claim}"
            raise ValueError(
                f"{where}.allow.{index}{named}: the rule {use}, and with {issuers} issuers a "
                f"{claim} names a user only within its own issuer (RFC 7519 4.1.2): another "
                f"issuer's user with the same {claim} would be served as that user. Say whose "
                f"users the rule means: add iss to its when (one rule per issuer, or a list "
                f"of the issuers whose {claim} values name the same users)"
            )


def compile_policy(config: ProxyConfig) -> CompiledPolicy:
    """Compile every table and named shape; raises ValueError naming the offending field."""
    issuers = len(config.issuers)
    for name, table_policy in (
        *((f"tables.{n}", t) for n, t in config.tables.items()),
        *((f"shapes.{n}", s) for n, s in config.shapes.items()),
    ):
        for index, rule in enumerate(table_policy.allow):
            _check_subject_scope(rule, index, name, issuers)
    tables: dict[TableKey, CompiledTable] = {}
    patterns: list[CompiledTable] = []
    # (a set beside the list: `any(...)` over the list made 20,000 patterns a 170 s load)
    pattern_keys: set[TableKey] = set()
    wheres: dict[str, CompiledWhere] = {}
    for name, table_policy in config.tables.items():
        compiled = _compile_table(name, table_policy, f"tables.{name}", wheres)
        if not compiled.pattern.exact:
            if compiled.key in pattern_keys:
                raise ValueError(f"tables.{name}: the same pattern is listed twice")
            pattern_keys.add(compiled.key)
            patterns.append(compiled)
            continue
        if compiled.key in tables:
            raise ValueError(f"tables.{name}: the same table is listed twice")
        tables[compiled.key] = compiled
    shapes = {}
    for name, shape in config.shapes.items():
        compiled = _compile_table(shape.table, shape, f"shapes.{name}", wheres)
        if not compiled.pattern.exact:
            raise ValueError(f"shapes.{name}.table: a named shape names one table, not a pattern")
        shapes[name] = compiled
    everything = [*tables.values(), *patterns, *shapes.values()]
    return CompiledPolicy(
        tables=MappingProxyType(tables),
        patterns=tuple(patterns),
        shapes=MappingProxyType(shapes),
        anonymous=any(rule.anonymous for table in everything for rule in table.allow),
    )
