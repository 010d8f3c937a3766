"""A filter many rules share is compiled once per load (`compiled._compile_where`): 5,000
tables under 10 filters loaded in 16.0 s of CPU, each rule's filter parsed, printed and
checked again; 3.2 s now. The rules get the one compiled filter (immutable), and a filter
the engine refuses still names the rule it is under."""

from __future__ import annotations

import pytest

from proxy.config.loader import ConfigError, build_config

UPSTREAM = {"url": "http://127.0.0.1:3000"}


def _tables(wheres: list[str]) -> dict[str, object]:
    return {
        f"t{i}": {"allow": [{"name": f"r{i}", "anonymous": True, "where": where}]}
        for i, where in enumerate(wheres)
    }


def test_rules_sharing_a_filter_share_its_compiled_form() -> None:
    wheres = ["org_id = 'a'", "org_id = 'a'", "id > 1", "org_id = 'a'"]
    policy = build_config({"upstream": UPSTREAM, "tables": _tables(wheres)}, {}).policy
    rules = [table.allow[0] for table in policy.tables.values()]
    assert rules[0].template is rules[1].template is rules[3].template
    assert rules[2].template is not rules[0].template
    assert rules[0].template is not None and rules[0].template.sql == "org_id = 'a'"


@pytest.mark.parametrize("at", [0, 2])
def test_a_refused_filter_names_its_rule(at: int) -> None:
    wheres = ["id > 1", "id > 1", "id > 1"]
    wheres[at] = "id IN (SELECT 1)"
    with pytest.raises(ConfigError, match=rf"tables\.t{at}\.allow\.0 \(rule 'r{at}'\)\.where: "):
        build_config({"upstream": UPSTREAM, "tables": _tables(wheres)}, {})
