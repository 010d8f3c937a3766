"""Load the YAML config: parse, validate, resolve env-var secrets, compile the policy.

`load_config` either returns a complete `LoadedConfig` or raises `ConfigError` whose message
names the file and the field (`tables.items.allow.0.where: does not parse ...`). It never
includes a secret value, only the name of the variable it was read from. The caller decides
what a failure means: exit at start-up, keep the last good config on reload.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.exceptions import PyJWTError
from pydantic import SecretStr, ValidationError

from proxy.config.model import (
    HMAC_ALGORITHMS,
    DenyRule,
    IssuerConfig,
    NumberSettingError,
    ProxyConfig,
    StaticKey,
    TablePolicy,
    YamlWord,
)
from proxy.policy.compiled import CompiledPolicy, compile_policy
from proxy.policy.sql import _split_outside_quotes, parse_identifier
from proxy.policy.tables import TablePattern, parse_table_pattern

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024

StaticKeyMaterial = PublicKeyTypes | bytes

_BOOL_TAG = "tag:yaml.org,2002:bool"
_WORD_TAG = "!shapegate/yaml-1.1-bool-word"


class ShownYamlError(yaml.constructor.ConstructorError):
    """A YAML problem whose text names only keys and number-like scalars, never a line of
    the file (a line may hold a secret): the load error quotes it."""


class DuplicateKey(ShownYamlError):
    """A mapping names one key twice."""


#: The deepest nesting a config may have (a real one has about ten levels). PyYAML composes
#: and constructs recursively: 5,000 `[` ended in a RecursionError out of the loader (a
#: traceback at start; on reload an asyncio traceback while /healthz said all was well).
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_AMBIGUOUS_TAG = "!shapegate/yaml-1.1-1.2-differ"

#: YAML 1.2's core schema numbers (what a YAML 1.2 reader makes of a plain scalar).
_CORE_INT = re.compile(r"[-+]?[0-9]+")
_CORE_OCT = re.compile(r"0o[0-7]+")
_CORE_HEX = re.compile(r"0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_CORE_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_CORE_NAN = re.compile(r"\.(?:nan|NaN|NAN)")


def _yaml12_number(text: str) -> int | float | None:
    """The number YAML 1.2's core schema reads `text` (a plain scalar) as; None: text."""
    if _CORE_INT.fullmatch(text):
        return int(text, 10)
    if _CORE_OCT.fullmatch(text):
        return int(text[2:], 8)
    if _CORE_HEX.fullmatch(text):
        return int(text[2:], 16)
    if _CORE_FLOAT.fullmatch(text):
        return float(text)
    if _CORE_INF.fullmatch(text):
        return float(text.replace(".", "", 1))
    if _CORE_NAN.fullmatch(text):
        return float("nan")
    return None


def _same_number(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # (nan)
    return a == b


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` made to refuse what two readers of the file would read two ways.

    - Booleans are YAML 1.2's: only true/false (any case). The YAML 1.1 words y/yes/n/no/
      on/off stay text, as `YamlWord`, so a claim condition `country: NO` or a setting
      `collapse: yes` is a load error instead of a boolean one reader sees and another does
      not (`model.YamlWord`, `model.YamlBool`).
    - A number YAML 1.1 (PyYAML) and YAML 1.2 read differently is refused wherever it is:
      `01234` (1.1: octal 668; 1.2: 1234), `12:30` (1.1: base 60, 750), `1_000`, `0b1`,
      `1e3` (1.1: text), a 1.1 date. A deny rule `zip: 01234` compared claims with 668 and
      never fired (config probe, 2026-12-07). Quoted, each is the text.
    - No mapping with a key twice: PyYAML keeps the last of two equal keys, and a second
      `todos:` block under `tables` silently replaced the first one's owner filter.
    - Merges (`<<`) follow YAML's rule (the mapping's own keys win over merged ones) and a
      key two mappings of one merge sequence give is refused: PyYAML 6.0.x let the LAST
      one win for every real key (it dedups by `id()`), against the rule (the first wins),
      and `<<: [*tenant, *defaults]` showed the defaults' columns.
    - No nesting deeper than `MAX_DEPTH`.
    - No YAML 1.1-only type (`!!binary`, `!!set`, `!!omap`, `!!pairs`) and no U+0085,
      U+2028 or U+2029 anywhere (`_refuse_yaml11_breaks`): YAML 1.1 ends a line there.
    - No comma with nothing after it in a flow list or mapping (`[a, ]`, `{a: 1, }`): it is
      what an envsubst leaves of `[suspended, ${BANNED}]` with the variable unset, and YAML
      reads it as a trailing comma: a deny rule's `[suspended, ]` silently lost `banned`
      (config probe, 2026-12-07). Refused naming the key (`error_key`).
    """

    _depth = 0
    #: The key path (keys and list indexes) being composed when a YAML error was raised,
    #: for the load error (`error_key`); None until one is.
    error_path: tuple[str, ...] | None = None

    def __init__(self, stream: bytes | str) -> None:
        super().__init__(stream)
        self._path: list[str | None] = []

    def _key_path(self) -> tuple[str, ...]:
        return tuple(part for part in self._path if part is not None)

    def error_key(self) -> str | None:
        """The dotted key path of the YAML error raised while composing, if any."""
        return ".".join(self.error_path) if self.error_path else None

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        # (`index`: a list item's index, a mapping value's key node, None for a key)
        if isinstance(index, yaml.ScalarNode):
            self._path.append(str(index.value))
        elif isinstance(index, yaml.Node):
            self._path.append("?")
        else:
            self._path.append(None if index is None else str(index))
        try:
            if self._depth > MAX_DEPTH:
                raise ShownYamlError(
                    None,
                    None,
                    f"nested too deeply: more than {MAX_DEPTH} levels (a config needs about "
                    "ten): is a bracket left open?",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        except yaml.YAMLError:
            if self.error_path is None:
                self.error_path = self._key_path()
            raise
        finally:
            self._path.pop()
            self._depth -= 1

    def get_token(self) -> yaml.Token:
        token: yaml.Token = super().get_token()
        opens = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.FlowEntryToken)
        if isinstance(token, yaml.FlowEntryToken) and self.check_token(
            yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken
        ):
            bracket = "]" if self.check_token(yaml.FlowSequenceEndToken) else "}"
            self._empty_item(f"a comma with nothing after it before '{bracket}'", token)
        elif isinstance(token, opens) and self.check_token(yaml.FlowEntryToken):
            self._empty_item("a comma with nothing before it", self.peek_token())
        return token

    def _empty_item(self, what: str, comma: yaml.Token) -> None:
        key = ".".join(self._key_path())[:200] or "(top level)"
        self.error_path = ()  # (the message names the key itself)
        raise ShownYamlError(
            None,
            None,
            f"{key}: {what}, as an unset variable leaves `[a, ${{VAR}}]` after envsubst (YAML "
            "drops a last empty item silently): give the value, or remove the comma",
            comma.start_mark,
        )

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        tag: str = super().resolve(kind, value, implicit)
        if kind is not yaml.ScalarNode or not implicit[0]:
            return tag
        if tag == _TIMESTAMP_TAG:
            return _AMBIGUOUS_TAG
        if tag in (_INT_TAG, _FLOAT_TAG) or (tag == _STR_TAG and _yaml12_number(value) is not None):
            if not _same_number(self._yaml11_value(tag, value), _yaml12_number(value)):
                return _AMBIGUOUS_TAG
        return tag

    def _yaml11_value(self, tag: str, value: str) -> object:
        node = yaml.ScalarNode(tag, value)
        if tag == _INT_TAG:
            return self.construct_yaml_int(node)
        if tag == _FLOAT_TAG:
            return self.construct_yaml_float(node)
        return value

    def construct_ambiguous(self, node: yaml.ScalarNode) -> object:
        text = node.value
        tag = yaml.SafeLoader.resolve(self, yaml.ScalarNode, text, (True, False))
        old = self._yaml11_value(tag, text)
        new = _yaml12_number(text)
        if tag == _TIMESTAMP_TAG:
            why = "a date only in YAML 1.1 (YAML 1.2 reads the text)"
            plainly = ""
        elif new is None:
            why = f"a number only in YAML 1.1 ({old!r}; YAML 1.2 reads the text)"
            plainly = f", or write the number plainly ({old!r})"
        elif isinstance(old, str):
            why = f"a number only in YAML 1.2 ({new!r}; YAML 1.1 reads the text)"
            plainly = f", or write the number plainly ({new!r})"
        else:
            why = f"{old!r} in YAML 1.1 but {new!r} in YAML 1.2"
            plainly = f", or write the number you mean plainly ({old!r} or {new!r})"
        raise ShownYamlError(
            None,
            None,
            f"{text} is {why}: quote it ('{text}') for the text{plainly}",
            node.start_mark,
        )

    def construct_checked_bool(self, node: yaml.ScalarNode) -> bool:
        """A boolean, implicit or tagged `!!bool`: true or false only. `!!bool yes` was True
        (PyYAML's YAML 1.1 words); YAML 1.2 has no such boolean."""
        text = str(node.value)
        if text.lower() in ("true", "false") and text in (text.lower(), text.title(), text.upper()):
            return text.lower() == "true"
        raise ShownYamlError(
            None,
            None,
            "!!bool takes true or false only (yes, no, on and off are booleans only in YAML "
            "1.1): write true or false",
            node.start_mark,
        )

    def construct_checked_number(self, node: yaml.ScalarNode) -> int | float:
        """An int or float, implicit or tagged (`!!int 0777`, `!!float 1`): what YAML 1.1 and
        1.2 both read it as. A tagged value they read differently (`!!int 0777`: 511 or 777)
        or not as a number (`!!int abc`, which raised a ValueError out of the loader: a
        traceback at start) is refused; the value is not quoted (it may be any text)."""
        tag, text = node.tag, str(node.value)
        try:
            old = self._yaml11_value(tag, text)
        except (ValueError, TypeError, OverflowError):
            old = None
        new = _yaml12_number(text)
        if tag == _FLOAT_TAG and isinstance(new, int):
            new = float(new)
        if tag == _INT_TAG and not isinstance(new, int):
            new = None
        if isinstance(old, int | float) and new is not None and _same_number(old, new):
            return old
        kind = "!!int" if tag == _INT_TAG else "!!float"
        raise ShownYamlError(
            None,
            None,
            f"a {kind} value that YAML 1.1 and 1.2 read differently, or not as that kind of "
            "number: write the number plainly (decimal), without the tag",
            node.start_mark,
        )

    def construct_refused_timestamp(self, node: yaml.ScalarNode) -> object:
        raise ShownYamlError(
            None,
            None,
            "a date (!!timestamp) is YAML 1.1 only: quote it for the text",
            node.start_mark,
        )

    def construct_refused_yaml11(self, node: yaml.Node) -> object:
        """`!!binary`, `!!set`, `!!omap`, `!!pairs`: YAML 1.1 types a YAML 1.2 reader does
        not know. `where: !!binary b3Jn...` loaded as the filter `org_id = 'a' OR true`,
        which no one reviewing the file could read; a `!!set` of columns went in an order
        that changed from run to run (config probe, 2026-12-07)."""
        kind = node.tag.rsplit(":", 1)[-1]
        unread = ", and its value cannot be read in review" if kind == "binary" else ""
        raise ShownYamlError(
            None,
            None,
            f"!!{kind} is a YAML 1.1 type (YAML 1.2 readers do not know it{unread}): write "
            "the value as text, or a list",
            node.start_mark,
        )

    def _key(self, key_node: yaml.Node, mapping: yaml.Node) -> Any:
        key = self.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", mapping.start_mark, "found unhashable key",
                key_node.start_mark,
            ) from None  # fmt: skip
        return key

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merges: list[tuple[yaml.Node, yaml.Node]] = []
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append((key_node, value_node))
                continue
            if key_node.tag == "tag:yaml.org,2002:value":
                key_node.tag = _STR_TAG
            key = self._key(key_node, node)
            if key in seen:
                raise DuplicateKey(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice",
                    key_node.start_mark,
                )
            seen.add(key)
            own.append((key_node, value_node))
        if not merges:
            node.value = own
            return
        if len(merges) > 1:
            raise DuplicateKey(
                "while constructing a mapping",
                node.start_mark,
                "found the merge key '<<' twice: merge a list instead (<<: [*a, *b])",
                merges[1][0].start_mark,
            )
        merge_key, value_node = merges[0]
        if isinstance(value_node, yaml.MappingNode):
            sources = [value_node]
        elif isinstance(value_node, yaml.SequenceNode):
            sources = value_node.value
        else:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "expected a mapping or list of mappings for merging, but found "
                f"{getattr(value_node, 'id', '?')}",
                value_node.start_mark,
            )  # fmt: skip
        merged: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                kind = getattr(source, "id", "?")
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"expected a mapping for merging, but found {kind}", source.start_mark,
                )  # fmt: skip
            self.flatten_mapping(source)
            for key_node, item in source.value:
                key = self._key(key_node, source)
                if key in seen:
                    continue  # (the mapping's own key wins: YAML's rule)
                if key in merged:
                    first = merged[key][0].start_mark.line + 1
                    raise ShownYamlError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"the key {key!r} is given by more than one of the mappings merged "
                        f"here (lines {first} and {key_node.start_mark.line + 1}): YAML takes "
                        "the first one's, which is easy to misread; set it in this mapping "
                        "itself, or leave it in only one of them",
                        merge_key.start_mark,
                    )
                merged[key] = (key_node, item)
        node.value = [*merged.values(), *own]


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _WORD_TAG,
    re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$"),
    list("yYnNoO"),
)
_Loader.add_constructor(
    _WORD_TAG,
    lambda loader, node: YamlWord(loader.construct_scalar(node)),  # type: ignore[arg-type]
)
_Loader.add_constructor(_AMBIGUOUS_TAG, _Loader.construct_ambiguous)
_Loader.add_constructor(_BOOL_TAG, _Loader.construct_checked_bool)
_Loader.add_constructor(_INT_TAG, _Loader.construct_checked_number)
_Loader.add_constructor(_FLOAT_TAG, _Loader.construct_checked_number)
_Loader.add_constructor(_TIMESTAMP_TAG, _Loader.construct_refused_timestamp)
for _kind in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_kind}", _Loader.construct_refused_yaml11)

#: Characters YAML 1.1 (PyYAML) reads as a line break and YAML 1.2, editors and diffs as
#: part of the line: NEXT LINE, LINE SEPARATOR, PARAGRAPH SEPARATOR.
_YAML11_BREAKS = re.compile("[\x85\u2028\u2029]")


def _refuse_yaml11_breaks(loader: _Loader) -> None:
    """A U+0085, U+2028 or U+2029 anywhere in the file is refused: PyYAML ends a line there,
    so `    # old rule<U+0085>    allow: [{all_rows: true}]` read as a comment in an editor,
    a diff and any YAML 1.2 reader, and as a rule serving every row to this proxy (config
    probe, 2026-12-07). Checked on the decoded text, before parsing."""
    loader.update(1 << 62)  # (the whole stream: the file is at most MAX_CONFIG_BYTES)
    text = loader.buffer
    found = _YAML11_BREAKS.search(text)
    if found is None:
        return
    at = found.start()
    # (PyYAML's lines: a "\r\n", a "\n" or a lone "\r" ends one)
    line = text.count("\n", 0, at) + text.count("\r", 0, at) - text.count("\r\n", 0, at)
    column = at - max(text.rfind("\n", 0, at), text.rfind("\r", 0, at)) - 1
    char = found.group()
    name = unicodedata.name(char, "NEXT LINE")
    raise ShownYamlError(
        None,
        None,
        f"a U+{ord(char):04X} ({name}) character: this proxy's YAML reader (YAML 1.1) ends a "
        "line there, where editors, diffs and YAML 1.2 readers show one line (a `# comment` "
        "before it would go on as config): replace it with a plain line break, or remove it",
        yaml.error.Mark("<file>", at, line, column, "", 0),
    )


#: How many more nodes aliases (`*name`) may add to a file than it has written out. Aliases
#: are expanded by reference, but validation and `compile_policy` walk the expansion: 3.8 KB
#: of nested aliases made 10,000 rules and stalled a reload for 33 s on the event loop
#: (config probe, 2026-12-07). Reusing a rule or a column list a few times stays far below.
MAX_ALIAS_EXPANSION = 10_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """The node count of `node` with every alias written out (memoised: `sizes`)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    return size


def _compose(raw: bytes | str) -> tuple[Any, yaml.Node | None]:
    """The data and the node tree it was built from (for the line of a key path). A YAML
    error raised while composing gets the key path it was under as `key` (or None)."""
    fast = _compose_fast(raw)
    if fast is not None:
        return fast
    loader = _Loader(raw)
    try:
        return _compose_with(loader)
    except yaml.YAMLError as exc:
        exc.key = loader.error_key()  # type: ignore[attr-defined]
        raise
    finally:
        loader.dispose()


#: A shell-style variable reference (`${NAME}`, `${NAME:-default}`) as envsubst or compose
#: would fill in.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+=-][^}]*)?\}")


def _refuse_unexpanded(root: yaml.Node) -> None:
    """A `${NAME}` left in a value or key is refused: the proxy expands no variables in the
    file (only the `*_env` keys name one), so a file deployed without its envsubst step
    loaded `account_status: ${BANNED}` as the text `${BANNED}`, a deny rule no token ever
    matched: the banned were served (config probe, 2026-12-07)."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            found = _VARIABLE.search(str(node.value))
            if found is not None:
                key = ".".join(path)[:200] or "(top level)"
                raise ShownYamlError(
                    None,
                    None,
                    f"{key}: holds ${{{found.group(1)}}}, a variable reference: the proxy "
                    "does not expand variables in its file (only the *_env keys name one); "
                    "fill the file in before it is loaded (envsubst), or write the value",
                    node.start_mark,
                )
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, (*path, str(i))) for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            for key_node, value in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                stack += [(key_node, path), (value, (*path, name))]


def _compose_with(loader: _Loader) -> tuple[Any, yaml.Node | None]:
    _refuse_yaml11_breaks(loader)
    return _checked_and_constructed(loader, loader.get_single_node())


try:
    from yaml.cyaml import CParser as _CParser  # type: ignore[attr-defined]
except ImportError:  # (a PyYAML built without libyaml: every file is read the pure way)
    _CParser = None  # type: ignore[misc,assignment]


class _FastLoader(*([_CParser] if _CParser else []), _Loader):  # type: ignore[misc]
    """`_Loader` with libyaml's scanner, parser and composer (C) in place of PyYAML's pure
    Python ones, its resolver and constructors (the YAML 1.1/1.2 checks) as they are; the
    same node tree (marks included, for `line_of`): 6.9 s of CPU for a 5,000-rule file the
    pure way, 2.5 s this way (with `_compose_fast`'s checks). What only the pure composer
    checks (the depth, an empty flow item, the key path of an error) is not checked here:
    `_compose_fast` takes this reading only for a file where none of them can apply."""

    def __init__(self, stream: str) -> None:
        _CParser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._path = []


#: Text that may hold an empty flow item (`[a, ]`, `{a: 1, }`, `[, a]`, `[a,, b]`), which
#: only `_Loader.get_token` refuses; generous (a comma before a bracket in a comment or a
#: quoted string matches too: such a file is read the pure way).
_MAYBE_EMPTY_FLOW_ITEM = re.compile(r"[\[{,](?:\s|#[^\n]*\n)*,|,(?:\s|#[^\n]*\n)*[\]}]")


def _deeper_than(node: yaml.Node, limit: int) -> bool:
    """Whether the tree under `node` (itself level 1, as `_Loader.compose_node` counts) has
    more than `limit` levels; an alias's node counts where it is used (at least as deep as
    where it was written), and a recursive alias is endless."""
    if limit < 1:
        return True
    if isinstance(node, yaml.SequenceNode):
        return any(_deeper_than(item, limit - 1) for item in node.value)
    if isinstance(node, yaml.MappingNode):
        return any(_deeper_than(k, limit - 1) or _deeper_than(v, limit - 1) for k, v in node.value)
    return False


def _compose_fast(raw: bytes | str) -> tuple[Any, yaml.Node | None] | None:
    """`_compose`'s answer read by `_FastLoader`, or None: read the file the pure way, which
    also words any refusal (its key path, its depth and empty-item checks). None for a file
    that is not plain UTF-8 (a BOM, UTF-16), holds a tab or a character either reader
    refuses or reads as a line break, may hold an empty flow item, nests deeper than
    `MAX_DEPTH` less one, or that anything refuses."""
    if _CParser is None:
        return None
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None
    if (
        text.startswith("\ufeff")
        or "\t" in text  # (libyaml reads `a:<TAB>1`, PyYAML refuses it)
        or _YAML11_BREAKS.search(text)
        or yaml.reader.Reader.NON_PRINTABLE.search(text)
        or _MAYBE_EMPTY_FLOW_ITEM.search(text)
    ):
        return None
    loader = _FastLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _deeper_than(node, MAX_DEPTH - 1):
            return None
        return _checked_and_constructed(loader, node)
    except Exception:  # (any refusal is the pure reading's to say, in its words)
        return None
    finally:
        loader.dispose()


def _checked_and_constructed(
    loader: _Loader, node: yaml.Node | None
) -> tuple[Any, yaml.Node | None]:
    """The checks of a composed file's node tree (variables, alias expansion), then its
    data, built by `loader`'s constructors."""
    if node is not None:
        _refuse_unexpanded(node)
        sizes: dict[int, int] = {}
        expanded = _expanded_size(node, sizes)
        if expanded > len(sizes) + MAX_ALIAS_EXPANSION:
            raise ShownYamlError(
                None,
                None,
                f"aliases (*name) expand this file to {expanded:,} nodes from "
                f"{len(sizes):,} written (at most {MAX_ALIAS_EXPANSION:,} more are "
                "allowed): alias smaller pieces, or write the repeated parts out",
                None,
            )
    try:
        data = None if node is None else loader.construct_document(node)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        # (a backstop: PyYAML's constructors raise these for a tagged value they cannot
        # read; the text is not quoted, it may be any line of the file)
        raise ShownYamlError(
            None,
            None,
            f"a value could not be read as its tag (!!...) says ({type(exc).__name__})",
            None,
        ) from None
    return data, node


def parse_yaml(raw: bytes | str) -> Any:
    """Parse config YAML as `_Loader` reads it; raises `yaml.YAMLError`."""
    return _compose(raw)[0]


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line (1-based) of the deepest part of the key path `loc` (a validation error's
    `loc`: keys and list indexes) found in the node tree; None if not even its first."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(
                (
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part)
                ),
                None,
            )
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


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


def _format_validation(error: ValidationError, node: yaml.Node | None = None) -> str:
    """Each error's key path, its line in the file when known, and what is wrong."""
    lines = []
    for item in error.errors():
        path = tuple(item["loc"])
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, NumberSettingError):
            path += (cause.key,)  # (raised for the mapping holding the setting)
        loc = ".".join(str(part) for part in path) or "(top level)"
        line = line_of(node, path)
        where = f" (line {line})" if line is not None else ""
        lines.append(f"{loc}{where}: {item['msg']}")
    return "; ".join(lines)


#: A variable's name as one is written by convention (`ENGINE_SECRET`, `JWT_KEY`,
#: `SECRET`): upper case, and with a `_` or short. Only such a name is repeated in a load
#: error: an upper-case hex or base32 secret (`ABCDEF0123...`) is neither (newuser 13:46).
_SHOWN_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]{0,23}|[A-Z_][A-Z0-9_]*_[A-Z0-9_]*")


def _env(environ: Mapping[str, str], name: str, field_name: str) -> str:
    """The value of the variable `name`; `ConfigError` when it is unset or empty. The name is
    said only when it is written as variable names are (upper case): a secret pasted where
    its variable's name goes (`secret_env: 3fa9...`, as `openssl rand -hex` prints it)
    passes the name's pattern when it starts with a letter, and the error put it in the log
    and in `/healthz` for a metrics reader (config probe, 2026-12-07)."""
    value = environ.get(name)
    if not value:
        if len(name) <= 64 and _SHOWN_ENV_NAME.fullmatch(name):
            raise ConfigError(f"{field_name}: environment variable {name} is not set or empty")
        raise ConfigError(
            f"{field_name}: the environment variable it names is not set or empty (the name "
            "is not repeated here: it is not written as variable names are, and may be a "
            "secret pasted where the name goes; give the name, e.g. ENGINE_SECRET)"
        )
    return value


#: The most a secret file may hold: a secret is a line, not a file's worth.
SECRET_FILE_MAX_BYTES = 64 * 1024


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
            # (a FIFO there blocked the load for good, at start and on a reload)
            pem = _read_regular_file(
                key.public_key_file,
                SECRET_FILE_MAX_BYTES,
                f"{where}.public_key_file: {key.public_key_file}",
            )
        else:
            pem = (key.public_key or "").encode()
        return load_pem_public_key(pem)
    except (ValueError, TypeError, OSError, PyJWTError) as exc:
        raise ConfigError(f"{where}: not a usable public key ({type(exc).__name__})") from None


def build_config(
    data: object,
    environ: Mapping[str, str] | None = None,
    *,
    source: str = "<memory>",
    node: yaml.Node | None = None,
) -> LoadedConfig:
    """Validate already-parsed YAML data. Raises `ConfigError`.

    `node`: the YAML node tree `data` was built from, for the line of a key an error names."""
    try:
        return _build_config(data, environ, source=source, node=node)
    except RecursionError:
        raise ConfigError(
            f"{source}: nested too deeply to check (more than {MAX_DEPTH} levels)"
        ) from None


def _build_config(
    data: object, environ: Mapping[str, str] | None, *, source: str, node: yaml.Node | None
) -> LoadedConfig:
    environ = os.environ if environ is None else environ
    try:
        config = ProxyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation(exc, node)}") from None
    try:
        _quoted_globs(config)
        config = _with_covering_denies(config)
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
    unverifiable = token_rules_without_issuers(config)
    if unverifiable and len(unverifiable) == _rule_count(config):
        raise ConfigError(
            f"{source}: issuers: none is configured, and every rule needs a token (none is "
            "anonymous): no token can be verified, so nothing would ever be served; add the "
            "issuer of your tokens under issuers:"
        )
    warnings = [
        *unverifiable,
        *shadowed_rules(config),
        *exposure_warnings(config),
        *folded_names(config),
        *named_shape_wheres(config),
    ]
    for warning in warnings:
        logger.warning("%s: %s", source, warning)
    return LoadedConfig(
        config=config,
        policy=policy,
        upstream_secret=secret,
        static_keys=keys,
        source=source,
        metrics_token=metrics_token,
    )


def _quoted_globs(config: ProxyConfig) -> None:
    """A quoted part of a table name holding `*`, `?` or `[` is refused when the policy
    would match it as a pattern: `TablePattern` read a name holding them as one, so
    `'"user*"'`, the table literally named `user*`, served every table whose name starts
    with `user` by its rule, `user_secrets` too (config probe, 2026-12-07). A policy that
    reads a quoted part as a name (w-proxy e742ebb1: exact, or escaped inside a pattern)
    passes. Raises ValueError naming the entry; a name that does not parse is left for
    `compile_policy` to refuse."""
    named = [(f"tables.{name}", name) for name in config.tables]
    named += [(f"shapes.{name}.table", shape.table) for name, shape in config.shapes.items()]
    for where, name in named:
        parts = [part.strip() for part in _split_outside_quotes(name, ".")]
        try:
            pattern = parse_table_pattern(name)
            read = [pattern.schema, pattern.table][-len(parts) :]
            quoted = [parse_identifier(part) if part.startswith('"') else None for part in parts]
        except ValueError:
            continue
        for part, literal, parsed in zip(parts, quoted, read, strict=True):
            if literal is not None and _GLOB_CHARS.search(literal) and not pattern.exact:
                if parsed == literal:  # (fnmatch'ed as written: a pattern)
                    raise ValueError(
                        f"{where}: the quoted name {part} holds *, ? or [, and this proxy "
                        "matches such a name as a pattern (every table it matches would be "
                        "served by this entry): a table named so cannot be listed; rename it, "
                        "or write the pattern you mean unquoted"
                    )


def _with_covering_denies(config: ProxyConfig) -> ProxyConfig:
    """Every entry also refused where another entry covering its tables refuses (a deny only
    narrows, so adding one can never open anything; allow rules stay each entry's own, as
    docs/policy-tables.md says):

    - a table listed by name takes the deny of every pattern matching it: `public.*` denying
      suspended accounts read as "nobody suspended syncs anything in public", yet `items`,
      also listed by name, served them (config probe, 2026-12-07);
    - a named shape takes the deny of its table's entry and of those patterns: the shipped
      multi-tenant example's `shapes.my-items` served the suspended account `items` denies
      (config probe, 2026-12-07);
    - a pattern takes the deny of every later pattern that may match a table it serves: the
      table is reached through the first pattern that matches it, and a later `*.*` denying
      suspended accounts did not apply to it.

    What each takes is `_denies_covering`'s, from the entries as written. A name that does
    not parse is left for `compile_policy` to refuse."""
    try:
        entries = [parse_table_pattern(name) for name in config.tables]
        shape_tables = {name: parse_table_pattern(s.table) for name, s in config.shapes.items()}
    except ValueError:
        return config
    policies = list(config.tables.values())
    # (only entries with deny rules give any: looking at every entry for every entry made a
    # file of 8,000 tables take 35 s to load, and a reload as long)
    covering = [
        (i, entry, policy)
        for i, (entry, policy) in enumerate(zip(entries, policies, strict=True))
        if policy.deny
    ]
    near = _BySchema(covering)
    tables = {
        name: _add_denies(policy, _denies_covering(near.of(entries[i]), entries[i], index=i))
        for i, (name, policy) in enumerate(config.tables.items())
    }
    shapes = {
        name: _add_denies(shape, _denies_covering(near.of(shape_tables[name]), shape_tables[name]))
        for name, shape in config.shapes.items()
    }
    return config.model_copy(update={"tables": tables, "shapes": shapes})


_Entry = tuple[int, TablePattern, TablePolicy]


class _BySchema:
    """The entries with deny rules, indexed by a schema written without `*`, `?` or `[`, so
    that each entry is compared only with those that could name the same schema: compared
    pair by pair, a file of 5,000 schema-scoped patterns (`s1.t_*`, `s2.t_*`, ...) with deny
    rules took 16 s to load (4.5M comparisons at 3,000). A schema without those characters
    matches only itself, both as an exact name and as a pattern's part, so the entries left
    out could never cover the target; a target whose schema has them is compared with all."""

    def __init__(self, entries: list[_Entry]) -> None:
        self.every = entries
        self.literal: dict[str, list[_Entry]] = {}
        self.patterned: list[_Entry] = []
        for entry in entries:
            schema = entry[1].schema
            if _GLOB_CHARS.search(schema):
                self.patterned.append(entry)
            else:
                self.literal.setdefault(schema, []).append(entry)

    def of(self, target: TablePattern) -> list[_Entry]:
        """The entries that may cover `target`, in file order."""
        if _GLOB_CHARS.search(target.schema):
            return self.every
        same = self.literal.get(target.schema, [])
        if not self.patterned:
            return same
        return sorted([*same, *self.patterned], key=lambda entry: entry[0])


_P = TypeVar("_P", bound=TablePolicy)


def _add_denies(policy: _P, denies: list[DenyRule]) -> _P:
    extra = [deny for deny in denies if deny not in policy.deny]
    return policy.model_copy(update={"deny": [*policy.deny, *extra]}) if extra else policy


def _denies_covering(
    entries: list[tuple[int, TablePattern, TablePolicy]], target: TablePattern, index: int = -1
) -> list[DenyRule]:
    """The deny rules that cover the table key `target` names, from `entries` (the
    `tables:` entries that have deny rules, parsed, with their places in the file, in file
    order): for one table (a table listed by name, or a
    named shape's), those of its exact entry and of every pattern matching it; for a pattern
    (the entry at `index`), those of every later pattern that may match a table it matches
    (an earlier one matching such a table serves it itself; where which tables two patterns
    share cannot be told, `_may_share`, the deny is taken, failing closed)."""
    out: list[DenyRule] = []
    for i, pattern, policy in entries:
        if target.exact:
            covers = pattern.key == target.key if pattern.exact else pattern.matches(target.key)
        else:
            covers = i > index and not pattern.exact and _may_share(target, pattern)
        if covers:
            out.extend(deny for deny in policy.deny if deny not in out)
    return out


_GLOB_CHARS = re.compile(r"[*?\[]")


def _may_share(a: TablePattern, b: TablePattern) -> bool:
    """Whether some table could match both patterns: False only when certain (a literal
    part the other's does not match, literal prefixes or suffixes that disagree)."""
    return _parts_may_meet(a.schema, b.schema) and _parts_may_meet(a.table, b.table)


def _parts_may_meet(a: str, b: str) -> bool:
    if not _GLOB_CHARS.search(a):
        return fnmatchcase(a, b)
    if not _GLOB_CHARS.search(b):
        return fnmatchcase(b, a)
    prefix_a, prefix_b = _GLOB_CHARS.split(a, 1)[0], _GLOB_CHARS.split(b, 1)[0]
    if not (prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a)):
        return False
    suffix_a, suffix_b = re.split(r"[*?\]]", a)[-1], re.split(r"[*?\]]", b)[-1]
    if "[" in suffix_a or "[" in suffix_b:
        return True
    return suffix_a.endswith(suffix_b) or suffix_b.endswith(suffix_a)


def exposure_warnings(config: ProxyConfig) -> list[str]:
    """Settings that load but hand an outsider a lever (config probe, 2026-12-07): keys
    fetched over plain http from another host (anyone on the path can serve keys and mint
    tokens), a `trusted_proxies` network holding every address (any client then picks its
    own address for the anonymous limits)."""
    out = []
    for i, issuer in enumerate(config.issuers):
        url = issuer.jwks_url
        if url is not None and url.startswith("http://"):
            host = (urlsplit(url).hostname or "").lower()
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                out.append(
                    f"issuers.{i}.jwks_url is plain http to another host: anyone on the path "
                    "can serve keys and mint tokens; use https"
                )
    for version, everything in ((4, 1 << 32), (6, 1 << 128)):
        # (the networks of one family together: `0.0.0.0/1` and `128.0.0.0/1` trust every
        # address as `0.0.0.0/0` does, and were not warned of)
        networks = [n for n in config.server.trusted_proxies if n.version == version]
        collapsed: Iterable[Any] = ipaddress.collapse_addresses(networks)
        covered: int = sum(n.num_addresses for n in collapsed)
        if networks and covered * 2 >= everything:
            listed = ", ".join(str(n) for n in networks)
            what = "every address" if covered == everything else "half of all addresses or more"
            out.append(
                f"server.trusted_proxies: {listed} trusts {what}, so any client picks its own "
                "address for the anonymous limits with X-Forwarded-For; list your load "
                "balancers' networks"
            )
    return out


def folded_names(config: ProxyConfig) -> list[str]:
    """Table names with capitals outside double quotes: Postgres folds an unquoted name to
    lower case, so `User:` is the table `user`, and with an ORM's `"User"` table the rule
    never matched (only 403s; config probe, 2026-12-07). Loads (it may be meant); says so,
    with the name as it would be quoted part by part (`Sales.Q1`: `"Sales"."Q1"`, not one
    table named `Sales.Q1`); a pattern part cannot be quoted (a quoted glob is a load error)."""
    named = [(f"tables.{name}", name) for name in config.tables]
    named += [(f"shapes.{name}.table", shape.table) for name, shape in config.shapes.items()]
    out = []
    for where, name in named:
        parts = [part.strip() for part in _split_outside_quotes(name, ".")]
        folded = [part for part in parts if not part.startswith('"') and _has_upper(part)]
        if not folded:
            continue
        read = ".".join(part if part.startswith('"') else part.lower() for part in parts)
        if any(_GLOB_CHARS.search(part) for part in folded):
            fix = (
                "a pattern matches names as Postgres stores them, so it matches the lower-case "
                "ones only: list a table spelt with capitals by its quoted name"
            )
        else:
            quoted = ".".join(f'"{part}"' if part in folded else part for part in parts)
            fix = f"for a table spelt with capitals quote it: '{quoted}'"
        out.append(
            f"{where}: {name} names {read} (Postgres folds unquoted names to lower case); {fix}"
        )
    return out


def _has_upper(text: str) -> bool:
    return any(char.isupper() for char in text)


def _rule_label(policy: TablePolicy, index: int) -> str:
    name = policy.allow[index].name
    return f"rule {name!r} (allow.{index})" if name else f"rule allow.{index}"


def named_shape_wheres(config: ProxyConfig) -> list[str]:
    """A named shape's rule saying `client_where: validated`: a named shape's URL is its
    whole definition, so a client's `where` (and `params`, `columns`) is refused there
    whatever the rule says (`proxy.policy.evaluate._find_table`), and the setting does
    nothing; its subsets are checked as they are under `forbid` (config probe, 2026-12-07).
    Errs safe, so it loads; this says so."""
    out = []
    for name, shape in config.shapes.items():
        for index, rule in enumerate(shape.allow):
            if rule.client_where == "validated":
                out.append(
                    f"shapes.{name}: allow {_rule_label(shape, index)} says client_where: "
                    "validated, but a named shape takes no client where (its URL is its "
                    "definition): the setting does nothing; remove it, or list the table "
                    "under tables: for clients that filter"
                )
    return out


def _rule_count(config: ProxyConfig) -> int:
    return sum(len(p.allow) for p in (*config.tables.values(), *config.shapes.values()))


def token_rules_without_issuers(config: ProxyConfig) -> list[str]:
    """With no `issuers:`, each allow rule that needs a token (not `anonymous`): it can never
    serve. The file loaded silently and every token was a 401 "the token signature is
    invalid" (newuser, 2026-12-07); `_build_config` refuses the file when this is every rule,
    and warns otherwise (its anonymous rules serve)."""
    if config.issuers:
        return []
    out = []
    for kind, policies in (("tables", config.tables), ("shapes", config.shapes)):
        for name, policy in policies.items():
            for index, rule in enumerate(policy.allow):
                if not rule.anonymous:
                    out.append(
                        f"{kind}.{name}: allow {_rule_label(policy, index)} needs a token, and "
                        "no issuers are configured: it never serves; add the issuer under "
                        "issuers:, or make the rule anonymous: true"
                    )
    return out


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


def read_config_file(path: str | Path) -> bytes:
    """The config file's bytes, read without blocking the event loop on something that is
    not a file: a FIFO at the config path blocked open() for good (config probe, 2026-12-07:
    the proxy hung at start; a reload hung every request), so it is opened non-blocking and
    refused unless it is a regular file. At most `MAX_CONFIG_BYTES` + 1 bytes are read.
    Raises `ConfigError`."""
    return _read_regular_file(path, MAX_CONFIG_BYTES + 1, str(path))


def read_regular_file(path: str | Path, max_bytes: int, what: str) -> bytes:
    """At most `max_bytes` + 1 bytes of the regular file at `path` (so a caller can tell a
    larger one), or `ConfigError` naming `what` and the path (`_read_regular_file`). The
    reload's read (`proxy.runtime.RuntimeHolder._read_whole`)."""
    return _read_regular_file(path, max_bytes + 1, f"{what}: {path}")


def _read_regular_file(path: str | Path, limit: int, label: str) -> bytes:
    """At most `limit` bytes of the regular file at `path` (opened non-blocking: a FIFO
    with no writer would block open() for good); `ConfigError` naming `label` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(
                f"{label} is not a regular file (a FIFO, device or directory): give the path "
                "of the file itself"
            )
        os.set_blocking(fd, True)
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)


def _reader_problem(exc: yaml.reader.ReaderError, raw: bytes | None) -> str:
    """Where and what of a character YAML refuses. A byte that is no UTF-8 (`encoding` the
    codec's name, `position` a byte offset) and a control character (`encoding` "unicode",
    `position` a character index, as an ESC a terminal's colour codes leave) were both "at
    byte N: ... (the file must be UTF-8 text)", the second wrong twice; now each says its line
    and what it is (never the text around it)."""
    if exc.encoding != "unicode":
        lines = None if raw is None else raw[: exc.position].count(b"\n") + 1
        line = "" if lines is None else f" at line {lines}"
        return f"{line} (byte {exc.position}): {exc.reason}: the file must be UTF-8 text"
    char = chr(exc.character) if isinstance(exc.character, int) else "?"
    name = unicodedata.name(char, "")
    what = f"U+{ord(char):04X}" + (f" ({name})" if name else "")
    where = f" at character {exc.position}"
    if raw is not None:
        codec = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}.get(raw[:2], "utf-8")
        # (decoded as PyYAML does, byte order mark kept: its index counts it as a character)
        text = raw.decode(codec, "replace")
        at = exc.position
        start = text.rfind("\n", 0, at) + 1
        column = at - start + 1 - (start == 0 and text.startswith("\ufeff"))
        where = f" at line {text.count(chr(10), 0, at) + 1}, column {column}"
    return (
        f"{where}: a control character {what}, which YAML does not allow (left by a "
        "terminal's colour codes or a paste?): remove it"
    )


def _yaml_problem(exc: yaml.YAMLError, raw: bytes | None = None) -> str:
    """Where and what of a YAML error, without the file's text: PyYAML's `problem` names a
    token, a character, a tag or a key ("expected a single document in the stream", "found
    character '\\t' that cannot start any token"); its `context` and snippet quote lines of
    the file, and a line may hold a secret, so they are left out."""
    if isinstance(exc, yaml.reader.ReaderError):
        return _reader_problem(exc, raw)
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None)
    if not isinstance(problem, str):
        return where
    context = getattr(exc, "context", None)
    if problem.startswith("but ") and isinstance(context, str):
        problem = f"{context}, {problem}"  # ("expected a single document in the stream")
    return f"{where}: {problem[:300]}"


def load_config(
    path: str | Path, environ: Mapping[str, str] | None = None, *, raw: bytes | None = None
) -> LoadedConfig:
    """Read, parse and validate the YAML file at `path`. Raises `ConfigError`.

    `raw`: the file's bytes, already read (a reload reads them itself, to be sure the file
    did not change while it read: `proxy.runtime.RuntimeHolder.reload`; it should read them
    with `read_config_file`)."""
    path = Path(path)
    if raw is None:
        raw = read_config_file(path)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: file is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data, node = _compose(raw)
    except yaml.YAMLError as exc:
        key = getattr(exc, "key", None)
        under = f" (in {key})" if key else ""
        raise ConfigError(f"{path}: invalid YAML{_yaml_problem(exc, raw)}{under}") from None
    except RecursionError:  # (a backstop: `_Loader` refuses deep nesting first)
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return build_config(data, environ, source=str(path), node=node)
