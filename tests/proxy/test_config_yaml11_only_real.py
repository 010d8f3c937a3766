"""What PyYAML (YAML 1.1) reads in a config file and a reviewer cannot see is refused.

- U+0085 (NEXT LINE), U+2028, U+2029: PyYAML ends a line there; editors, diffs and YAML 1.2
  readers show one line. `# - {...} (removed 2026-11)<U+0085>      - {all_rows: true}` read
  as a comment to whoever reviewed the file and as a first rule serving every row to this
  proxy (config probe, 2026-12-07).
- `!!binary` (and the other YAML 1.1 types, `!!set`, `!!omap`, `!!pairs`): `where: !!binary
  b3Jn...` loaded as a filter no reviewer could read, here `... OR true`.

Real path: each file loaded by `load_config` (a load error naming the line now); on the old
code it loaded, and the real proxy in front of a real `sync-engine` and Postgres served the
member of org-a the rows of org-b. The file as the reviewer read it serves org-a only.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
MEMBER = "      - where: 'org_id = {{org_id}}'\n        columns: [id, org_id, title]\n"
HIDDEN = "      - {all_rows: true}"
COMMENT = "      # - {when: {role: contractor}, all_rows: true}   (removed 2026-11)"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1')",
    )


async def _org_a_sees(proxy_from_yaml: Any, text: str, name: str) -> set[str]:
    proxy = await proxy_from_yaml(text, name=name)
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(org_id="org-a"))
    assert reply.status == 200, reply.body
    return {m["value"]["org_id"] for m in json.loads(reply.body) if "value" in m}


async def _refused_or_narrow(proxy_from_yaml: Any, text: str, said: str) -> None:
    try:
        proxy_from_yaml.load(text, name="probe")
    except ConfigError as exc:
        assert said in str(exc), exc
    else:  # (the old code: what it served)
        assert await _org_a_sees(proxy_from_yaml, text, "probe") == {"org-a"}
        pytest.fail("loaded")


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\u2029"])
async def test_a_yaml11_line_break_in_a_comment_is_refused(
    char: str, engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    head = proxy_from_yaml.head(engine.url) + "tables:\n  items:\n    allow:\n"
    line = head.count("\n") + 1
    text = head + COMMENT + char + HIDDEN + "\n" + MEMBER
    await _refused_or_narrow(
        proxy_from_yaml, text, f"at line {line}, column {len(COMMENT) + 1}: a U+{ord(char):04X}"
    )
    # the file as its reviewer read it: one comment line, then the member's rule
    reviewed = head + COMMENT + " " + HIDDEN.strip() + "\n" + MEMBER
    assert await _org_a_sees(proxy_from_yaml, reviewed, "reviewed") == {"org-a"}


async def test_a_binary_filter_is_refused(engine: EngineProcess, proxy_from_yaml: Any) -> None:
    hidden = base64.b64encode(b"org_id = {{org_id}} OR true").decode()
    head = proxy_from_yaml.head(engine.url) + "tables:\n  items:\n    allow:\n"
    line = head.count("\n") + 1
    text = head + f"      - where: !!binary {hidden}\n        columns: [id, org_id, title]\n"
    await _refused_or_narrow(
        proxy_from_yaml, text, f"at line {line}, column 16: !!binary is a YAML 1.1 type"
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [("!!set {id, org_id}", "set"), ("!!omap [{id: 1}]", "omap"), ("!!pairs [{id: 1}]", "pairs")],
)
def test_other_yaml11_types_are_refused(proxy_from_yaml: Any, value: str, kind: str) -> None:
    text = proxy_from_yaml.head("http://127.0.0.1:9") + (
        f"tables:\n  items:\n    allow:\n      - all_rows: true\n        columns: {value}\n"
    )
    with pytest.raises(ConfigError, match=rf"!!{kind} is a YAML 1\.1 type"):
        proxy_from_yaml.load(text)
