"""A lifted bound is said in words: `limits.max_subsets: null` (or `max_shapes: null`) is a
load error (proxycfg 08:02, LOW, a limit failing open).

`max_subsets: ${MAX_SUBSETS}` after an envsubst with the variable unset is `max_subsets:`,
null, which read as "no bound": the per-principal subset cap (4 by default) silently went.
As for `max_lifetime`, no bound is written `unlimited`; null names itself. (A rule's
`limits` keep null as "inherit": that never lifts a bound.) Through the config loader, as
`shape-proxy --config` reads a file.
"""

from __future__ import annotations

import pytest

from proxy.config.loader import ConfigError, build_config, parse_yaml

BASE = "upstream: {url: 'http://127.0.0.1:1'}\ntables:\n  items:\n    allow: [{all_rows: true, anonymous: true}]\n"


@pytest.mark.parametrize("name", ["max_subsets", "max_shapes"])
def test_an_empty_bound_is_a_load_error_and_unlimited_lifts_it(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name}.*empty \(null\).*{name}: unlimited"):
        build_config(parse_yaml(f"limits:\n  {name}:\n" + BASE), {})
    loaded = build_config(parse_yaml(f"limits:\n  {name}: unlimited\n" + BASE), {})
    assert getattr(loaded.config.limits, name) is None
    loaded = build_config(parse_yaml(f"limits:\n  {name}: 3\n" + BASE), {})
    assert getattr(loaded.config.limits, name) == 3


def test_left_out_the_defaults_hold() -> None:
    loaded = build_config(parse_yaml(BASE), {})
    assert loaded.config.limits.max_subsets == 4 and loaded.config.limits.max_shapes is None


def test_a_rules_null_inherits() -> None:
    text = BASE.replace(
        "{all_rows: true, anonymous: true}",
        "{all_rows: true, anonymous: true, limits: {max_subsets: null}}",
    )
    loaded = build_config(parse_yaml("limits: {max_subsets: 2}\n" + text), {})
    rule = loaded.config.tables["items"].allow[0]
    assert rule.limits is not None and rule.limits.max_subsets is None  # (inherits the 2)
