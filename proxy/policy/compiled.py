"""The policy in the form the evaluator uses: table keys normalised, templates compiled.

Built once per (re)load from a validated `ProxyConfig`; immutable afterwards, so a reload
swaps one reference and in-flight requests keep the policy they started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.config.model import AccessRule, ClaimMatch, ProxyConfig, TablePolicy
from proxy.limits.config import RuleLimits
from proxy.policy.sql import ClauseCache, CompiledTemplate, compile_template, parse_table_name

TableKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One allow rule, its where template compiled to `$n` parameters."""

    name: str
    when: Mapping[str, ClaimMatch]
    template: CompiledTemplate | None
    columns: frozenset[str] | None
    column_order: tuple[str, ...] | None
    client_where: bool
    subset: bool
    replica_full: bool
    sse: bool
    limits: RuleLimits | None = None  # overrides of the global per-principal limits


@dataclass(frozen=True, slots=True)
class CompiledDeny:
    when: Mapping[str, ClaimMatch]
    reason: str


@dataclass(frozen=True, slots=True)
class CompiledTable:
    """A table (or named shape) as the client names it upstream, with its rules in order."""

    table: str
    key: TableKey
    allow: tuple[CompiledRule, ...]
    deny: tuple[CompiledDeny, ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    tables: Mapping[TableKey, CompiledTable]
    shapes: Mapping[str, CompiledTable]
    #: Checked client clauses by text; lives as long as this policy (a reload starts empty).
    clauses: ClauseCache = field(default_factory=ClauseCache, compare=False, repr=False)


def _compile_rule(rule: AccessRule, index: int, where: str) -> CompiledRule:
    try:
        template = compile_template(rule.where) if rule.where is not None else None
    except ValueError as exc:
        raise ValueError(f"{where}.allow.{index}.where: {exc}") from None
    return CompiledRule(
        name=rule.name or f"rule{index}",
        when=MappingProxyType(dict(rule.when)),
        template=template,
        columns=frozenset(rule.columns) if rule.columns is not None else None,
        column_order=tuple(rule.columns) if rule.columns is not None else None,
        client_where=rule.client_where == "validated",
        subset=rule.subset,
        replica_full=rule.replica_full,
        sse=rule.sse,
        limits=rule.limits,
    )


def _compile_table(table: str, policy: TablePolicy, where: str) -> CompiledTable:
    try:
        key = parse_table_name(table)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return CompiledTable(
        table=table,
        key=key,
        allow=tuple(_compile_rule(r, i, where) for i, r in enumerate(policy.allow)),
        deny=tuple(
            CompiledDeny(when=MappingProxyType(dict(d.when)), reason=d.reason or "denied")
            for d in policy.deny
        ),
    )


def compile_policy(config: ProxyConfig) -> CompiledPolicy:
    """Compile every table and named shape; raises ValueError naming the offending field."""
    tables: dict[TableKey, CompiledTable] = {}
    for name, table_policy in config.tables.items():
        compiled = _compile_table(name, table_policy, f"tables.{name}")
        if compiled.key in tables:
            raise ValueError(f"tables.{name}: the same table is listed twice")
        tables[compiled.key] = compiled
    shapes = {
        name: _compile_table(shape.table, shape, f"shapes.{name}")
        for name, shape in config.shapes.items()
    }
    return CompiledPolicy(tables=MappingProxyType(tables), shapes=MappingProxyType(shapes))
