"""The config file's keys, their types, defaults and meaning, as Markdown tables made from the
model itself (`proxy.config.model`): `docs/policy-reference.md` holds this output, and a test
(`tests/proxy/test_config_reference.py`) keeps the two the same, so a new or changed key
cannot go undocumented. `python -m proxy.config.reference` prints it.

Written because the docs explained edge cases in depth but listed no keys (newuser,
2026-12-07): an operator writing a first policy had to read `model.py` to learn that
`client_where` exists and defaults to `forbid`.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from proxy.config.model import (
    AccessRule,
    CacheConfig,
    CorsConfig,
    DenyRule,
    IssuerConfig,
    MetricsConfig,
    NamedShape,
    ProxyConfig,
    ServerConfig,
    StaticKey,
    TablePolicy,
    UpstreamConfig,
)
from proxy.limits.config import LimitsConfig, RuleLimits

#: (heading, model): every section of the file, in the order a file is written.
SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("The top level", ProxyConfig),
    ("`server:`", ServerConfig),
    ("`upstream:`", UpstreamConfig),
    ("`issuers:` (a list; each item)", IssuerConfig),
    ("`issuers[].keys:` (a list; each item gives exactly one key)", StaticKey),
    ("`cors:`", CorsConfig),
    ("`cache:`", CacheConfig),
    ("`limits:` (per principal: a user, or an anonymous client address)", LimitsConfig),
    ("`metrics:`", MetricsConfig),
    ("`tables.<name>:`", TablePolicy),
    ("`tables.<name>.allow:` and `shapes.<name>.allow:` (a list; each rule)", AccessRule),
    ("`...allow[].limits:` (this rule's overrides of `limits:`)", RuleLimits),
    ("`tables.<name>.deny:` and `shapes.<name>.deny:` (a list; each rule)", DenyRule),
    ("`shapes.<name>:` (a named shape)", NamedShape),
)

_SCALARS = {str: "text", int: "integer", float: "number", bool: "true/false"}


def type_text(annotation: Any) -> str:
    """A field's type in an operator's words."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section (below)"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        named = any(
            isinstance(meta, FieldInfo) and meta.description == "environment variable"
            for meta in args[1:]
        )
        return "environment variable name" if named else type_text(args[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(kinds))
    if origin in (list, tuple):
        item = args[0] if args else Any
        if getattr(item, "__name__", "") == "IPvAnyNetwork":
            return "list of networks (CIDR)"
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "list of sections (below)"
        return f"list of {type_text(item)}"
    if origin is dict:
        value = args[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return "name -> section (below)"
        if typing.get_origin(value) is not None and str in typing.get_args(value):
            return "claim -> value or list"
        return f"name -> {type_text(value)}"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """A field's default as YAML would spell it; `required`; `unset` for None."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(its defaults)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | dict) and not value:
        return "`[]`" if not isinstance(value, dict) else "`{}`"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{value}`"


def description(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    if field.description:
        return field.description
    if model is RuleLimits:
        return f"overrides `limits.{name}` for this rule"
    return ""


def render() -> str:
    """Every section's table of keys (Markdown)."""
    out: list[str] = []
    for heading, model in SECTIONS:
        out += [f"### {heading}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            meaning = description(model, name, field).replace("|", "\\|")
            cells = (f"`{name}`", type_text(field.annotation), default_text(field), meaning)
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def undocumented() -> list[str]:
    """Keys with no meaning given (`description`): a test keeps this empty."""
    return [
        f"{model.__name__}.{name}"
        for _, model in SECTIONS
        for name, field in model.model_fields.items()
        if not description(model, name, field)
    ]


if __name__ == "__main__":
    print(render(), end="")
