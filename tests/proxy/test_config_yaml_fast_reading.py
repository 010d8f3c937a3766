"""The config loader reads a file with libyaml (`_FastLoader`) where the pure PyYAML reading
(`_Loader`) would give the same: the same data and the same node tree (kinds, tags, values,
lines and columns, which `line_of` names in load errors), or it leaves the file to the pure
reading (`_compose_fast` gives None), which also words every refusal. Checked on the shipped
configs and on YAML's corners (block scalars, quoting, escapes, anchors and merges, complex
keys, directives, tabs, CRLF, comments by brackets, deep nesting, empty flow items, odd
characters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import loader

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "config").rglob("*.yaml"))

CORNERS = [
    "a: 1\nb: [x, y]\nc: {d: e}\n",
    "a: |\n  line one\n  line two\n\nb: >-\n  folded\n  text\n",
    "a: 'it''s'\nb: \"tab\\there \\u00e9 \\x41\"\nc: plain text with: colon\n",
    "base: &b {x: 1, y: [1, 2]}\nuse:\n  <<: *b\n  y: 3\n",
    "list:\n- &i item\n- *i\n- - nested\n  - more\n",
    "? complex key\n: value\n? [a, b]\n: c\n",
    "%YAML 1.1\n---\na: 1\n...\n",
    "%YAML 1.2\n---\na: 1\n",
    "--- !!map\na: !!str 1\nb: !!int 3\n",
    "a: 1\r\nb:\r\n  - x\r\n  - y\r\n",
    "a:\t1\n",
    "a: [x,\n    y]  # a comment\nb: {k: v,\n    l: w}\n",
    "a: [x, y, ]\n",
    "a: {x: 1, }\n",
    "a: [, x]\n",
    "a: [x, # comment\n  ]\n",
    "a: '[x, ]'\n",
    "a: " + "[" * 70 + "]" * 70 + "\n",
    "a: " + "[" * 62 + "]" * 62 + "\n",
    "\ufeffa: 1\n",
    "a: b\x85c\n",
    "a: \x07\n",
    "a: ${VAR}\n",
    "a: 01234\nb: 1_000\nc: 12:30\n",
    "a: yes\nb: True\nc: ~\nd: null\ne: 1e3\nf: .inf\ng: -.5\n",
    "a: 2001-12-14\n",
    "a: !!binary aGVsbG8=\n",
    "a: 1\na: 2\n",
    "r: &r [*r]\n",
    'a: "unterminated\n',
    "a:\n  - b\n c: d\n",
    'a: é ü 日本\n\'b c\': "d\\"e"\n',
    "",
    "# only a comment\n",
    "- a\n- b\n",
    "a: @x\n",
    "a: `x\n",
    "a: x\n---\nb: y\n",
    'tables:\n  items:\n    allow:\n      - where: "org_id = {{org_id}}"\n        columns: [id, org_id]\n',
]


def _tree(node: Any) -> Any:
    if node is None:
        return None
    mark = (node.start_mark.line, node.start_mark.column, node.end_mark.line, node.end_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return ("scalar", node.tag, node.value, node.style or None, mark)  # (plain: "" or None)
    if isinstance(node, yaml.SequenceNode):
        return ("seq", node.tag, mark, [_tree(item) for item in node.value])
    return ("map", node.tag, mark, [(_tree(k), _tree(v)) for k, v in node.value])


def _pure(text: str) -> Any:
    try:
        return loader._compose_with(loader._Loader(text))
    except yaml.YAMLError as exc:
        return ("refused", str(exc))


@pytest.mark.parametrize("text", [p.read_text() for p in SHIPPED] + CORNERS)
def test_the_fast_reading_is_the_pure_one_or_none(text: str) -> None:
    fast = loader._compose_fast(text.encode("utf-8", "surrogatepass"))
    if fast is None:
        return  # (read the pure way)
    pure = _pure(text)
    assert not (isinstance(pure, tuple) and pure[0] == "refused"), pure
    assert fast[0] == pure[0]
    if "&r" not in text:  # (a recursive alias: compared by data alone)
        assert _tree(fast[1]) == _tree(pure[1])


def test_the_shipped_configs_take_the_fast_reading() -> None:
    assert SHIPPED
    assert all(loader._compose_fast(p.read_bytes()) is not None for p in SHIPPED)
