"""An allow rule that can never apply is said at load, at WARNING (attack r4, cfg/r4-ann.yaml).

Rules are first-match: `announcements` with `public` (anonymous, no `when`) before `editor`
(`when: {role: editor}`, all rows, replica=full) serves an editor the public shape, and the
editor's grant silently did nothing. The config errs safe, so it still loads; the log now
names the table, the unreachable rule and the rule before it that matches every request it
would. Only certain cases are named: an earlier rule with a `when` the later one does not
imply, or one that does not serve requests without a token when the later one does, says
nothing. The last test checks that claim against the evaluator itself.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.loader import build_config, load_config
from proxy.config.model import AccessRule, TablePolicy, covers
from proxy.errors import Forbidden, Unauthenticated
from proxy.policy.compiled import CompiledTable, compile_policy
from proxy.policy.evaluate import _select_rule
from tests.support.waiting import wait_until_async

ENVIRON = {"ENGINE_SECRET": "e" * 32, "JWT_SECRET": "j" * 32}

PUBLIC = {"name": "public", "anonymous": True, "where": "published = true"}
EDITOR = {"name": "editor", "when": {"role": "editor"}, "all_rows": True, "replica_full": True}


def _config(**tables: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "upstream": {"url": "http://127.0.0.1:21001", "secret_env": "ENGINE_SECRET"},
        "issuers": [
            {
                "issuer": "https://idp.example/",
                "audience": "shapegate",
                "algorithms": ["HS256"],
                "keys": [{"secret_env": "JWT_SECRET"}],
            }
        ],
        "tables": {name: {"allow": rules} for name, rules in tables.items()},
    }


def _warnings(caplog: pytest.LogCaptureFixture, data: dict[str, Any]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="proxy.config.loader"):
        build_config(data, ENVIRON, source="test.yaml")
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_rule_after_an_anonymous_rule_without_when_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = _warnings(caplog, _config(announcements=[PUBLIC, EDITOR]))
    assert said == [
        "test.yaml: tables.announcements: allow rule 'editor' (allow.1) can never apply: "
        "rule 'public' (allow.0) comes before it and matches every request it would (the "
        "first matching rule serves); move it before rule 'public' (allow.0) or narrow that "
        "rule's when"
    ]
    # the other way round, each rule applies to someone: nothing said
    assert _warnings(caplog, _config(announcements=[EDITOR, PUBLIC])) == []


def test_certain_shadowing_is_named_with_the_first_rule_that_shadows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wide = {"name": "wide", "when": {"role": ["admin", "member"]}, "where": "org_id = 1"}
    everyone = {"all_rows": True}  # (unnamed: named by its index)
    narrow = {"name": "narrow", "when": {"role": "admin", "mfa": True}, "all_rows": True}
    said = [
        s.split(" comes before it")[0]
        for s in _warnings(caplog, _config(items=[wide, everyone, narrow]))
    ]
    # wide's role list holds admin, and narrow asks role: admin and more: wide is named, the
    # first that shadows it, not `everyone`; `everyone` itself applies (to non-admins)
    assert said == [
        "test.yaml: tables.items: allow rule 'narrow' (allow.2) can never apply: rule 'wide' "
        "(allow.0)"
    ]


def test_named_shapes_and_rules_without_names(caplog: pytest.LogCaptureFixture) -> None:
    data = _config(items=[{"all_rows": True}, {"when": {"role": "admin"}, "all_rows": True}])
    data["shapes"] = {
        "mine": {"table": "items", "allow": [{"all_rows": True}, {"all_rows": True}]},
    }
    said = _warnings(caplog, data)
    assert [s.split(" comes before it")[0] for s in said] == [
        "test.yaml: tables.items: allow rule allow.1 can never apply: rule allow.0",
        "test.yaml: shapes.mine: allow rule allow.1 can never apply: rule allow.0",
    ]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        # the earlier rule has a `when` the later one does not imply
        ({"when": {"role": "admin"}}, {}),
        ({"when": {"role": "admin"}}, {"when": {"role": ["admin", "member"]}}),
        ({"when": {"role": "admin"}}, {"when": {"team": "admin"}}),
        ({"when": {"role": "admin", "mfa": True}}, {"when": {"role": "admin"}}),
        # a boolean condition is not a number one (true does not match the claim 1)
        ({"when": {"level": 1}}, {"when": {"level": True}}),
        ({"when": {"level": "1"}}, {"when": {"level": 1}}),
        # the later rule serves requests without a token, the earlier one does not
        ({}, {"anonymous": True}),
    ],
)
def test_no_warning_where_the_later_rule_can_apply(
    caplog: pytest.LogCaptureFixture, earlier: dict[str, Any], later: dict[str, Any]
) -> None:
    rules = [{"name": "first", **earlier, "all_rows": True}, {"name": "second", **later}]
    rules[1]["where"] = "org_id = 1"
    assert _warnings(caplog, _config(items=rules)) == []


def test_load_config_says_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(_config(announcements=[PUBLIC, EDITOR])))
    caplog.set_level(logging.WARNING, logger="proxy.config.loader")
    load_config(path, ENVIRON)  # (loads: the config errs safe)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1
    assert said[0].startswith(f"{path}: tables.announcements: allow rule 'editor' (allow.1)")


async def test_a_reload_says_it(
    tmp_path: Path,
    config_data: dict[str, Any],
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reload (`RuntimeHolder.reload`) loads through `load_config` too: a reload that
    adds a shadowed rule says it, and is loaded all the same."""
    path = tmp_path / "proxy.yaml"
    config_data["server"] = {"reload_interval": 0.05}
    _write(path, config_data)
    caplog.set_level(logging.WARNING, logger="proxy.config.loader")
    proxy = await make_proxy(load_config(path, environ), config_path=path, environ=environ)
    reloads = proxy.app.holder._metrics.config_reloads.labels(result="ok")
    assert caplog.records == []  # (the base config shadows nothing)

    config_data["tables"]["announcements"] = {"allow": [PUBLIC, EDITOR]}
    _write(path, config_data)
    await wait_until_async(lambda: reloads._value.get() == 1, message="reload")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1
    assert said[0].startswith(f"{path}: tables.announcements: allow rule 'editor' (allow.1)")


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


def _selected(table: CompiledTable, claims: dict[str, Any], anonymous: bool) -> str | None:
    try:
        return _select_rule(table, claims, anonymous=anonymous).name
    except (Forbidden, Unauthenticated):
        return None


def test_a_rule_said_unreachable_is_never_selected() -> None:
    """No false alarms: for random rule lists, no claims (nor a request without a token)
    reach a rule the loader says can never apply."""
    rng = random.Random(20261206)
    values: list[Any] = ["admin", "member", 1, True, False, "1", 0]
    paths = ["role", "level", "org.id"]

    def when() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in rng.sample(paths, rng.randint(0, 2)):
            picked = rng.sample(values, rng.randint(1, 2))
            out[path] = picked[0] if len(picked) == 1 else picked
        return out

    def claims() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in rng.sample(paths, rng.randint(0, 3)):
            value: Any = rng.choice([*values, [rng.choice(values), rng.choice(values)]])
            if path == "org.id" and rng.random() < 0.5:
                out["org"] = {"id": value}
            else:
                out[path] = value
        return out

    samples = [claims() for _ in range(300)]
    said = 0
    for _ in range(300):
        rules: list[dict[str, Any]] = []
        for i in range(rng.randint(2, 4)):
            rule: dict[str, Any] = {"name": f"r{i}", "all_rows": True}
            if rng.random() < 0.25:
                rule["anonymous"] = True
            else:
                rule["when"] = when()
            rules.append(rule)
        config = build_config(_config(items=rules), ENVIRON).config
        (table,) = compile_policy(config).tables.values()
        for later, _ in config.tables["items"].shadowed():
            said += 1
            name = f"r{later}"
            assert all(_selected(table, c, False) != name for c in samples), rules
            assert _selected(table, {}, True) != name, rules
    assert said > 50  # (the check ran on many shadowed rules)


def test_the_indexed_shadow_check_finds_what_comparing_every_pair_finds() -> None:
    """`TablePolicy.shadowed` tries only the earlier rules that could cover a rule (comparing
    every pair made 12,000 rules take 130 s to load): for random rule
    lists it names the same rules, each with the same first covering rule, as `covers` on
    every pair does."""
    rng = random.Random(20261207)
    values: list[Any] = ["admin", "member", 1, True, False, "1", 0]
    paths = ["role", "level", "org.id"]
    checked = 0
    for _ in range(400):
        rules = []
        for _ in range(rng.randint(2, 8)):
            when: dict[str, Any] = {}
            for path in rng.sample(paths, rng.randint(0, 3)):
                picked = rng.sample(values, rng.randint(1, 3))
                when[path] = picked[0] if len(picked) == 1 else picked
            anonymous = not when and rng.random() < 0.5
            rules.append(AccessRule(when=when, all_rows=True, anonymous=anonymous))
        policy = TablePolicy(allow=rules)
        pairs = []
        for j, later in enumerate(rules):
            first = next((i for i in range(j) if covers(rules[i], later)), None)
            if first is not None:
                pairs.append((j, first))
        assert policy.shadowed() == pairs, rules
        checked += len(pairs)
    assert checked > 100
