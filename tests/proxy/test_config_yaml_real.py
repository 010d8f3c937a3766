"""What the operator wrote in YAML is what the proxy enforces (config probe 05:30, three HIGHs).

- A merge of a list, `<<: [*member, {columns: [..., secret]}]`: the YAML merge spec has the
  *earlier* mapping win, and PyYAML 6 let the later one win for any key longer than a letter
  (it told keys apart by `id()`): the rule served `secret`, the column the first mapping
  leaves out; `<<: [*filtered, {where: "true"}]` served every row. Which one an operator
  meant is easy to misread, so a key two merged mappings give is a load error now (proxycfg,
  `_Loader.flatten_mapping`) unless the rule sets it itself; merges that say one thing serve
  what they say.
- YAML 1.1 numbers: a deny rule `zip: 01234` compared the claim with 668 (octal), `shift:
  12:30` with 750 (base 60), so neither ever fired for the claims the operator meant. Such
  numbers are a load error in a condition now (quote them), as the yes/no words are.
- `columns:` left empty (or `${COLUMNS}` unset after envsubst) read as null: every column.
  A load error now; leaving the key out still shows every column.

Each config is a real file loaded by `load_config` (`proxy_from_yaml`), the proxy in front
of a real engine.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.proxy.proxy_fakes import now
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, secret text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1', 's1'), (2, 'org-b', 'b1', 's2')",
    )


def _rows(reply: Any) -> list[dict[str, Any]]:
    assert reply.status == 200, reply.body
    return [m["value"] for m in reply.json() if "value" in m]


async def test_a_merge_of_a_list_giving_a_key_twice_is_refused_one_saying_one_thing_serves(
    engine: EngineProcess,
    proxy_from_yaml: Any,
) -> None:
    # (anchors on rules of tables nobody syncs, as the config probe wrote them)
    anchors = """
tables:
  spare_a:
    allow:
      - &member {name: member, where: "org_id = {{org_id}}", columns: [id, org_id, title]}
  spare_b:
    allow:
      - &filtered {name: filtered, where: "org_id = {{org_id}}", columns: [id, title]}
  items:
    allow:
"""
    for rule in (
        "      - <<: [*member, {name: defaults, client_where: validated,"
        " columns: [id, org_id, secret]}]\n",
        '      - <<: [*filtered, {where: "true", columns: [id, secret]}]\n',
    ):
        with pytest.raises(ConfigError, match=r"is given by more than one of the mappings merged"):
            proxy_from_yaml.load(proxy_from_yaml.head(engine.url) + anchors + rule)
    text = (
        proxy_from_yaml.head(engine.url)
        + anchors
        + """      - <<: [*member, {client_where: validated}]
        when: {role: member}
      - <<: [*filtered, {sse: false}]
        when: {role: other}
"""
    )
    proxy = await proxy_from_yaml(text)
    rules = proxy.app.holder.current.loaded.config.tables["items"].allow
    assert (rules[0].name, rules[0].columns) == ("member", ["id", "org_id", "title"])
    assert (rules[1].name, rules[1].where) == ("filtered", "org_id = {{org_id}}")
    member = proxy.tokens.make(role="member", org_id="org-a")
    assert _rows(await proxy.get(SHAPE, token=member)) == [
        {"id": "1", "org_id": "org-a", "title": "a1"}
    ]
    other = proxy.tokens.make(role="other", org_id="org-a")
    assert _rows(await proxy.get(SHAPE, token=other)) == [{"id": "1", "title": "a1"}]


@pytest.mark.parametrize("value", ["01234", "0b101", "12:30", "1_000", "-017", "1:30.5", "1_0.5"])
def test_a_yaml_1_1_number_in_a_condition_is_refused_at_load(
    engine: EngineProcess,
    proxy_from_yaml: Any,
    value: str,
) -> None:
    base = proxy_from_yaml.head(engine.url) + (
        "tables:\n  items:\n    deny:\n      - when: {zip: VALUE}\n"
        '    allow: [{where: "org_id = {{org_id}}", columns: [id, org_id, title]}]\n'
    )
    with pytest.raises(ConfigError, match=rf"{re.escape(value)} is .* in YAML 1\.[12].*quote it"):
        proxy_from_yaml.load(base.replace("VALUE", value))
    # quoted, the text; a plain decimal, the number
    for spelt, expected in ((f"'{value}'", value), ("1234", 1234), ("0", 0), ("0x1F", 31)):
        loaded = proxy_from_yaml.load(base.replace("VALUE", spelt))
        assert loaded.config.tables["items"].deny[0].when == {"zip": expected}


async def test_a_deny_on_a_quoted_zip_refuses_the_token_it_names(
    engine: EngineProcess,
    proxy_from_yaml: Any,
) -> None:
    text = proxy_from_yaml.head(engine.url) + (
        "tables:\n  items:\n    deny:\n      - when: {zip: '01234'}\n"
        "      - when: {shift: '12:30'}\n"
        '    allow: [{where: "org_id = {{org_id}}", columns: [id, org_id, title]}]\n'
    )
    proxy = await proxy_from_yaml(text)
    for claims in ({"zip": "01234"}, {"shift": "12:30"}):
        reply = await proxy.get(SHAPE, token=proxy.tokens.make(**claims))
        assert (reply.status, reply.json()["code"]) == (403, "denied_by_rule"), claims
    assert _rows(await proxy.get(SHAPE, token=proxy.tokens.make(zip="99999")))


async def test_columns_left_empty_is_refused_and_left_out_shows_every_column(
    engine: EngineProcess,
    proxy_from_yaml: Any,
) -> None:
    rule = '    allow:\n      - where: "org_id = {{org_id}}"\n'
    base = proxy_from_yaml.head(engine.url) + "tables:\n  items:\n" + rule
    for empty in ("        columns:\n", "        columns: null\n", "        columns: ~\n"):
        with pytest.raises(ConfigError, match=r"columns \(line \d+\): .*empty.*list the columns"):
            proxy_from_yaml.load(base + empty)
    proxy = await proxy_from_yaml(base)
    assert _rows(await proxy.get(SHAPE, token=proxy.tokens.make())) == [
        {"id": "1", "org_id": "org-a", "title": "a1", "secret": "s1"}
    ]


@pytest.mark.parametrize("empty", ["", " null", " ~"])
async def test_max_lifetime_left_empty_is_refused_and_unlimited_is_said_in_words(
    engine: EngineProcess, proxy_from_yaml: Any, empty: str
) -> None:
    """`max_lifetime:` left empty (`max_lifetime: ${MAX_LIFETIME}` after an envsubst with the
    variable unset) read as null: no cap, and a token living a year was served (config probe
    MEDIUM). A load error naming the line now; no cap is `max_lifetime: unlimited`."""
    ten_days = 10 * 86400
    base = proxy_from_yaml.head(engine.url) + (
        "    max_lifetime:LIFETIME\n"
        'tables:\n  items:\n    allow: [{where: "org_id = {{org_id}}", columns: [id, title]}]\n'
    )
    with pytest.raises(
        ConfigError, match=r"issuers\.0\.max_lifetime \(line 7\): .*empty.*unlimited for no cap"
    ):
        proxy_from_yaml.load(base.replace("LIFETIME", empty))
    with pytest.raises(
        ConfigError, match=r"max_lifetime \(line 7\): Value error, 'forever'.*unlimited"
    ):
        proxy_from_yaml.load(base.replace("LIFETIME", " forever"))
    capped = await proxy_from_yaml(base.replace("LIFETIME", " 86400"), name="capped")
    token = capped.tokens.make(iat=now(), exp=now() + ten_days)
    reply = await capped.get(SHAPE, token=token)
    assert (reply.status, reply.json()["code"]) == (401, "token_lifetime_too_long")
    unlimited = await proxy_from_yaml(base.replace("LIFETIME", " unlimited"), name="open")
    assert unlimited.app.holder.current.loaded.config.issuers[0].max_lifetime is None
    assert _rows(await unlimited.get(SHAPE, token=token)) == [{"id": "1", "title": "a1"}]


BOOLEAN_SETTINGS = [
    ("collapse: VALUE\n", "collapse"),
    ("cors: {allow_origins: ['https://a.example'], allow_credentials: VALUE}\n", "cors"),
    ("metrics: {allow_loopback: VALUE}\n", "metrics"),
    *(
        (f"RULE_{name}", f"tables.items.allow.0.{name}")
        for name in ("anonymous", "all_rows", "subset", "replica_full", "sse", "delete")
    ),
]


@pytest.mark.parametrize(("setting", "where"), BOOLEAN_SETTINGS)
async def test_a_boolean_setting_takes_true_or_false_only(
    engine: EngineProcess, proxy_from_yaml: Any, setting: str, where: str
) -> None:
    """`sse: no`, `collapse: yes`, `anonymous: y`: YAML 1.1 booleans (and 1, 0, a quoted
    'true') were read as booleans by the proxy, as text by a YAML 1.2 reader (config probe
    LOW). Every boolean setting refuses them at load, naming the setting and its line, as the
    YAML 1.1 numbers are; true and false load, and the proxy serves by them."""
    rule = proxy_from_yaml.head(engine.url) + (
        "tables:\n  items:\n    allow:\n      - columns: [id, title]\n"
        '        where: "org_id = {{org_id}}"\n'
    )
    if setting.startswith("RULE_"):
        name = setting.removeprefix("RULE_")
        if name == "all_rows":
            rule = rule.replace('        where: "org_id = {{org_id}}"\n', "")
        elif name == "anonymous":
            rule = rule.replace("{{org_id}}", "'org-a'")
        text = rule + f"        {name}: VALUE\n"
    else:
        text = setting + rule
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if "VALUE" in text_line)
    for value in ("yes", "No", "ON", "off", "y", "N", "1", "0", "'true'", "'no'"):
        quoted = value.startswith("'")
        words = r"a boolean only in YAML 1\.1" if not quoted and value[0] not in "01" else ""
        with pytest.raises(
            ConfigError,
            match=rf"{re.escape(where)}.* \(line {line}\): Value error, .*{words}.*write true or "
            "false",
        ):
            proxy_from_yaml.load(text.replace("VALUE", value))
    proxy = await proxy_from_yaml(text.replace("VALUE", "true"))
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(org_id="org-a"))
    assert _rows(reply)[0]["id"] == "1"
    if "all_rows" not in setting:  # (all_rows: false needs a where)
        proxy_from_yaml.load(text.replace("VALUE", "false"))
