"""The loader compares each `tables:` entry only with the deny-holding entries that could name
the same schema (`loader._BySchema`); this checks, over random files of names and patterns,
that it finds exactly the deny rules that comparing every pair finds, in the same order."""

from __future__ import annotations

import random

import pytest

from proxy.config.loader import _BySchema, _denies_covering
from proxy.config.model import TablePolicy
from proxy.policy.tables import parse_table_pattern

SCHEMAS = ["public", "s1", "s2", "S1", '"s*"', "s*", "*", "s?", "[ps]*", '"a[b"']
TABLES = ["items", "t_1", "t_*", "*", "item?", '"t*"', "Items", '"Items"']


def _entries(rng: random.Random, n: int) -> list[tuple[str, TablePolicy]]:
    out: dict[str, TablePolicy] = {}
    while len(out) < n:
        name = f"{rng.choice(SCHEMAS)}.{rng.choice(TABLES)}"
        deny = [{"when": {"k": f"v{len(out)}"}}] if rng.random() < 0.6 else []
        out[name] = TablePolicy.model_validate({"deny": deny, "allow": [{"all_rows": True}]})
    return list(out.items())


@pytest.mark.parametrize("seed", range(40))
def test_indexed_covering_denies_equal_every_pair(seed: int) -> None:
    rng = random.Random(seed)
    entries = _entries(rng, rng.randint(1, 25))
    parsed = [parse_table_pattern(name) for name, _ in entries]
    covering = [(i, parsed[i], p) for i, (_, p) in enumerate(entries) if p.deny]
    near = _BySchema(covering)
    targets = [(i, t) for i, t in enumerate(parsed)] + [
        (-1, parse_table_pattern(f"{s}.{t}"))
        for s in ("public", "s1", "x")
        for t in ("items", "t_1")
    ]
    for index, target in targets:
        assert _denies_covering(near.of(target), target, index=index) == _denies_covering(
            covering, target, index=index
        ), (entries, index, target)
