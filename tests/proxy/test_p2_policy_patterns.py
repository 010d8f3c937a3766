"""Table patterns: one listed twice (in two spellings) is refused, many distinct ones load.

compile_policy's duplicate check was all-pairs (proxycfg 14:07: 20,000 patterns took 170 s to
load); it is a set lookup now. This guards the behaviour the rewrite must keep (the timing is
measured in the commit, not asserted here).
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import ConfigError, build_config
from proxy.policy.compiled import compile_policy

OPEN = {"allow": [{"anonymous": True, "all_rows": True}]}


def _config(tables: dict[str, Any]) -> dict[str, Any]:
    return {"upstream": {"url": "http://127.0.0.1:9", "secret_env": "S"}, "tables": tables}


def test_the_same_pattern_in_two_spellings_is_refused() -> None:
    with pytest.raises((ConfigError, ValueError), match="listed twice"):
        build_config(_config({"t_*": OPEN, "public.t_*": OPEN}), {"S": "x" * 32})


def test_distinct_patterns_all_load() -> None:
    loaded = build_config(_config({f"t{i}_*": OPEN for i in range(300)}), {"S": "x" * 32})
    policy = compile_policy(loaded.config)
    assert len(policy.patterns) == 300
