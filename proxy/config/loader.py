"""Load the YAML config: parse, validate, resolve env-var secrets, compile the policy.

`load_config` either returns a complete `LoadedConfig` or raises `ConfigError` whose message
names the file and the field (`tables.items.allow.0.where: does not parse ...`). It never
includes a secret value, only the name of the variable it was read from. The caller decides
what a failure means: exit at start-up, keep the last good config on reload.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.exceptions import PyJWTError
from pydantic import SecretStr, ValidationError

from proxy.config.model import (
    HMAC_ALGORITHMS,
    IssuerConfig,
    ProxyConfig,
    StaticKey,
    TablePolicy,
    YamlNumber,
    YamlWord,
)
from proxy.policy.compiled import CompiledPolicy, compile_policy

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024

StaticKeyMaterial = PublicKeyTypes | bytes

_BOOL_TAG = "tag:yaml.org,2002:bool"
_WORD_TAG = "!shapegate/yaml-1.1-bool-word"


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names one key twice."""


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2's booleans: only true/false (any case) are booleans,
    and no mapping with a key twice.

    The YAML 1.1 words yes/no/on/off stay text, as `YamlWord`, so a claim condition
    `country: NO` is a load error instead of a comparison with false (`model.YamlWord`).
    PyYAML keeps the last of two equal keys without a word: a second `todos:` block under
    `tables` silently replaced the first one's owner filter (the policy failed open). YAML
    1.2 requires keys to be unique; a merge (`<<`) may still be overridden, as intended.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # (an unhashable key: SafeLoader refuses it in its words)
                if duplicate:
                    raise DuplicateKey(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key!r} twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Merge keys (`<<`) as the YAML merge spec has them: a key in the mapping itself
        overrides a merged one, and of merged mappings the *earlier* in a `<<: [*a, *b]`
        list wins.

        PyYAML 6 keeps the first merged key by `id()` of its text, which only interned
        (one-letter) keys share: `<<: [*member, {columns: [..., secret]}]` took the *later*
        mapping's `columns`, and a rule showed the column the operator's first mapping left
        out (config probe 05:30, HIGH). Keys are compared by their tag and text here."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        seen: set[object] = set()
        index = 0
        while index < len(node.value):
            key_node, value_node = node.value[index]
            if key_node.tag == _MERGE_TAG:
                del node.value[index]
                if isinstance(value_node, yaml.MappingNode):
                    sources = [value_node]
                elif isinstance(value_node, yaml.SequenceNode):
                    sources = value_node.value
                else:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "expected a mapping or list of mappings for merging, but found "
                        f"{value_node.id}",
                        value_node.start_mark,
                    )
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping",
                            node.start_mark,
                            f"expected a mapping for merging, but found {source.id}",
                            source.start_mark,
                        )
                    self.flatten_mapping(source)
                    for pair in source.value:
                        name = _key_identity(pair[0])
                        if name not in seen:
                            seen.add(name)
                            merged.append(pair)
            elif key_node.tag == "tag:yaml.org,2002:value":
                key_node.tag = "tag:yaml.org,2002:str"
                index += 1
            else:
                index += 1
        if merged:
            node.value = merged + node.value

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        """An integer that YAML 1.1 and 1.2 read alike; the others stay their text (below)."""
        text = self.construct_scalar(node)
        if _YAML11_ONLY_INT.search(str(text)):
            return YamlNumber(text)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        text = self.construct_scalar(node)
        if _YAML11_ONLY_FLOAT.search(str(text)):
            return YamlNumber(text)
        return super().construct_yaml_float(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Numbers PyYAML reads by YAML 1.1 alone, where YAML 1.2 (and most other readers) differ: a
#: leading-zero octal (`01234` is 668, 1234 in 1.2), binary `0b...`, base 60 (`12:30` is
#: 750), digits with `_` (1.2: text). Kept as their text, `YamlNumber`: a claim condition
#: with one is a load error (a deny rule `zip: 01234` compared the claim with 668 and never
#: fired: config probe, HIGH); a numeric setting reads the text as decimal (pydantic).
_YAML11_ONLY_INT = re.compile(r"^[-+]?0(?:b|[0-7_])|[_:]")
_YAML11_ONLY_FLOAT = re.compile(r"[_:]")


def _key_identity(key_node: yaml.Node) -> object:
    """A merged key as its reader sees it: a scalar's tag and text; any other key node by
    identity (PyYAML's own rule, which never names one key twice)."""
    if isinstance(key_node, yaml.ScalarNode):
        return (key_node.tag, key_node.value)
    return id(key_node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)

_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _WORD_TAG,
    re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$"),
    list("yYnNoO"),
)
_Loader.add_constructor(
    _WORD_TAG,
    lambda loader, node: YamlWord(loader.construct_scalar(node)),  # type: ignore[arg-type]
)


def parse_yaml(raw: bytes | str) -> Any:
    """Parse config YAML with YAML 1.2 booleans (see `_Loader`); raises `yaml.YAMLError`."""
    return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


#: A `/metrics` token shorter than this is refused at load (a guessable token is no gate).
METRICS_TOKEN_MIN_BYTES = 16


class ConfigError(Exception):
    """The configuration file is unusable; the message says where and why."""


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with its secrets resolved and its policy compiled."""

    config: ProxyConfig
    policy: CompiledPolicy
    upstream_secret: SecretStr | None
    static_keys: Mapping[str, tuple[tuple[str | None, Any], ...]] = field(default_factory=dict)
    source: str = "<memory>"
    metrics_token: SecretStr | None = None


def _format_validation(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{loc}: {item['msg']}")
    return "; ".join(lines)


def _env(environ: Mapping[str, str], name: str, field_name: str) -> str:
    value = environ.get(name)
    if not value:
        raise ConfigError(f"{field_name}: environment variable {name} is not set or empty")
    return value


#: The most a secret file may hold: a secret is a line, not a file's worth.
SECRET_FILE_MAX_BYTES = 64 * 1024


def read_regular_file(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The bytes of the regular file at `path` (at most `max_bytes` + 1 of them, so a caller
    can tell a larger one), or `ConfigError` naming `what`. Opened without blocking and
    checked before it is read: `open()` of a FIFO with no writer blocks, and the config file
    (or a key file) replaced by one hung the whole proxy, at start and at every reload
    (config probe, MEDIUM)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{what}: {path} is not a regular file")
            chunks = []
            left = max_bytes + 1
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"{what}: cannot read {path} ({why})") from None


def _secret_file(path: str, field_name: str) -> str:
    """A secret kept in a file (a mounted Docker or Kubernetes secret): its text without a
    leading byte order mark and the line end an editor or `echo` leaves. Read at every load,
    so a reload picks up a rotated one; a file that cannot be read, is no regular file (a FIFO
    would block the proxy's loop at a reload: attack 02:35), is larger than
    `SECRET_FILE_MAX_BYTES` or holds nothing fails the load (a reload keeps the config it
    had)."""
    try:
        # (non-blocking: a FIFO with no writer opens at once, and is then refused)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{field_name}: {path} is not a regular file")
            raw = os.read(fd, SECRET_FILE_MAX_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > SECRET_FILE_MAX_BYTES:
            raise ConfigError(f"{field_name}: {path} is larger than {SECRET_FILE_MAX_BYTES} bytes")
        value = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{field_name}: cannot read {path} ({why})") from None
    if not value:
        raise ConfigError(f"{field_name}: {path} is empty")
    return value


def _static_key(
    key: StaticKey, issuer: IssuerConfig, environ: Mapping[str, str], where: str
) -> StaticKeyMaterial:
    if key.secret_env is not None:
        secret = _env(environ, key.secret_env, f"{where}.secret_env").encode()
        need = max(int(a[2:]) // 8 for a in issuer.algorithms if a in HMAC_ALGORITHMS)
        if len(secret) < need:
            raise ConfigError(
                f"{where}.secret_env: the secret in {key.secret_env} must be at least "
                f"{need} bytes for {', '.join(issuer.algorithms)}"
            )
        return secret
    try:
        if key.jwk is not None:
            return PyJWK(dict(key.jwk)).key
        if key.public_key_file is not None:
            pem = read_regular_file(key.public_key_file, MAX_CONFIG_BYTES, where)
        else:
            pem = (key.public_key or "").encode()
        return load_pem_public_key(pem)
    except (ValueError, TypeError, OSError, PyJWTError) as exc:
        raise ConfigError(f"{where}: not a usable public key ({type(exc).__name__})") from None


def build_config(
    data: object, environ: Mapping[str, str] | None = None, *, source: str = "<memory>"
) -> LoadedConfig:
    """Validate already-parsed YAML data. Raises `ConfigError`."""
    environ = os.environ if environ is None else environ
    try:
        config = ProxyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation(exc)}") from None
    try:
        policy = compile_policy(config)
        secret = None
        if config.upstream.secret_env is not None:
            secret = SecretStr(_env(environ, config.upstream.secret_env, "upstream.secret_env"))
        elif config.upstream.secret_file is not None:
            secret = SecretStr(_secret_file(config.upstream.secret_file, "upstream.secret_file"))
        metrics_token = None
        if config.metrics.token_env is not None:
            metrics_token = SecretStr(_env(environ, config.metrics.token_env, "metrics.token_env"))
            if len(metrics_token.get_secret_value().encode()) < METRICS_TOKEN_MIN_BYTES:
                raise ConfigError(
                    f"metrics.token_env: the token in {config.metrics.token_env} must be at "
                    f"least {METRICS_TOKEN_MIN_BYTES} bytes"
                )
        keys = {
            issuer.issuer: tuple(
                (key.kid, _static_key(key, issuer, environ, f"issuers.{i}.keys.{j}"))
                for j, key in enumerate(issuer.keys)
            )
            for i, issuer in enumerate(config.issuers)
        }
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for warning in shadowed_rules(config):
        logger.warning("%s: %s", source, warning)
    return LoadedConfig(
        config=config,
        policy=policy,
        upstream_secret=secret,
        static_keys=keys,
        source=source,
        metrics_token=metrics_token,
    )


def _rule_label(policy: TablePolicy, index: int) -> str:
    name = policy.allow[index].name
    return f"rule {name!r} (allow.{index})" if name else f"rule allow.{index}"


def shadowed_rules(config: ProxyConfig) -> list[str]:
    """An allow rule after one that matches every request it would can never apply (rules
    are first-match): the operator's grant silently does nothing. The config errs safe
    (the earlier rule serves), so it loads; this says which rule, where and why. Only
    certain cases are named (`model.covers`): no warning does not mean every rule applies."""
    out = []
    for kind, policies in (("tables", config.tables), ("shapes", config.shapes)):
        for name, policy in policies.items():
            for later, earlier in policy.shadowed():
                first = _rule_label(policy, earlier)
                out.append(
                    f"{kind}.{name}: allow {_rule_label(policy, later)} can never apply: "
                    f"{first} comes before it and matches every request it would (the first "
                    f"matching rule serves); move it before {first} or narrow that rule's when"
                )
    return out


def load_config(
    path: str | Path, environ: Mapping[str, str] | None = None, *, raw: bytes | None = None
) -> LoadedConfig:
    """Read, parse and validate the YAML file at `path`. Raises `ConfigError`.

    `raw`: the file's bytes, already read (a reload reads them itself, to be sure the file
    did not change while it read: `proxy.runtime.RuntimeHolder.reload`)."""
    path = Path(path)
    if raw is None:
        raw = read_regular_file(path, MAX_CONFIG_BYTES, "config")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: file is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = parse_yaml(raw)
    except RecursionError:
        # (`[[[[...]]]]` 5,000 deep: PyYAML's composer recurses; a 3,000-line traceback at
        # start, and on a reload an error nobody saw: config probe, MEDIUM)
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # (a key's name only: other problems may quote a line, and a line may hold a secret)
        why = f": {exc.problem}" if isinstance(exc, DuplicateKey) else ""
        raise ConfigError(f"{path}: invalid YAML{where}{why}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return build_config(data, environ, source=str(path))
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to validate") from None
