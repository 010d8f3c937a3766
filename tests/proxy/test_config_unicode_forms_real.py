"""Text in a policy written in decomposed Unicode (a letter plus a combining accent) is a load
error: it looks the same as the composed letter tokens and rows carry, and never equals it.

Written as some editors, macOS file names and copied text give it (`c` + U+0327 for `ç`):

- a filter's literal, `country <> 'Curaçao'`, served the rows it excludes (the rows hold the
  composed letter);
- a deny rule's claim name, `país`, named a claim no token has (identity providers send
  composed text), so the deny never fired;
- an allow condition's value matched no token: a rule that silently never applied.

(A deny rule's values were already compared after NFKC, `evaluate._loose`: those matched, and
are refused now only so that the file says what it means.) Real path: the file loaded by
`load_config` (a load error naming the rule now); on the old code it loaded and the real
proxy in front of a real `sync-engine` and Postgres served what the rule refuses.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
COMPOSED = "Cura\u00e7ao"
DECOMPOSED = "Curac\u0327ao"
PAIS, PAIS_DECOMPOSED = "pa\u00eds", "pai\u0301s"

#: case -> (rules under `items:`, the load error, the claims of the token that must be refused
#: or served only Aruba's row)
CASES = {
    "filter": (
        f"    allow: [{{where: \"country <> '{DECOMPOSED}'\"}}]\n",
        r"allow\.0\.where \(line \d+\): .*the filter is not in composed Unicode form \(NFC\)",
        {},
    ),
    "deny_claim_name": (
        f'    deny: [{{when: {{"{PAIS_DECOMPOSED}": blocked}}}}]\n    allow: [{{all_rows: true}}]\n',
        r"deny\.0\.when \(line \d+\): .*the claim name is not in composed Unicode form",
        {PAIS: "blocked"},
    ),
}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, country text)",
        f"INSERT INTO items VALUES (1, '{COMPOSED}'), (2, 'Aruba')",
    )


@pytest.mark.parametrize("case", sorted(CASES))
async def test_decomposed_text_in_a_rule_is_refused(
    case: str, engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    rules, said, claims = CASES[case]
    text = proxy_from_yaml.head(engine.url) + "tables:\n  items:\n" + rules
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert re.search(said, str(exc)), exc
        # written composed, the same rule loads and does what it says
        composed = text.replace(DECOMPOSED, COMPOSED).replace(PAIS_DECOMPOSED, PAIS)
        proxy = await proxy_from_yaml(composed, name="composed")
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(**claims))
    if case == "filter":  # (the old code: Curaçao's row too)
        assert reply.status == 200, reply.body
        assert {m["value"]["country"] for m in json.loads(reply.body) if "value" in m} == {"Aruba"}
    else:  # (the old code: 200)
        assert reply.status == 403, reply.body


def test_a_decomposed_value_in_an_allow_condition_is_refused(proxy_from_yaml: Any) -> None:
    """On the old code it loaded, and the rule matched no token (composed claims)."""
    text = proxy_from_yaml.head("http://127.0.0.1:9") + (
        f'tables:\n  items:\n    allow: [{{when: {{country: "{DECOMPOSED}"}}, all_rows: true}}]\n'
    )
    with pytest.raises(ConfigError, match=r"allow\.0\.when \(line \d+\): .*country: 'Curac"):
        proxy_from_yaml.load(text)
