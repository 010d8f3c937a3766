"""A table's deny rules cover the named shapes on that table (config probe, 2026-12-07, HIGH).

config/examples/multi-tenant.yaml denies `items` to suspended accounts and also ships
`shapes.my-items` (table items) with no deny of its own: the suspended account was refused
`/v1/shape?table=items` and served `/shapes/my-items`. A deny only narrows, so the loader now
adds each table entry's deny (the exact name's, and every pattern's naming the table) to the
named shapes on it, and every pattern's deny to the tables listed by name that it matches,
and (the policy narrows, never widens) a later pattern's deny to an earlier pattern that
serves tables it matches.

Real path: the proxy from a config file in front of a real `sync-engine` and Postgres. On the
old code `/shapes/my-items` answered the suspended token 200 with org-a's rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import load_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, owner text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1', 'user-1'), (2, 'org-b', 'b1', 'user-2')",
    )


@pytest.mark.parametrize("entry", ["items", "public.*"])
async def test_a_suspended_account_is_refused_the_named_shape_too(
    entry: str,
    engine: EngineProcess,
    proxy_from_yaml: Any,
) -> None:
    config = base_config(engine.url, proxy_from_yaml.jwks_url)
    config["upstream"].update(first_byte_timeout=10)
    config["tables"] = {
        entry: {
            "deny": [{"when": {"account_status": "suspended"}, "reason": "suspended account"}],
            "allow": [{"where": "org_id = {{org_id}}", "columns": ["id", "org_id", "title"]}],
        }
    }
    config["shapes"] = {
        "my-items": {
            "table": "items",
            "allow": [{"where": "org_id = {{org_id}}", "columns": ["id", "title"]}],
        }
    }
    proxy = await proxy_from_yaml(config)
    suspended = proxy.tokens.make(org_id="org-a", account_status="suspended")
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=suspended)
    assert (reply.status, reply.json()["code"]) == (403, "denied_by_rule")
    reply = await proxy.get("/shapes/my-items?offset=-1", token=suspended)
    assert reply.status == 403, reply.body
    assert reply.json()["code"] == "denied_by_rule"
    active = proxy.tokens.make(org_id="org-a", account_status="active")
    reply = await proxy.get("/shapes/my-items?offset=-1", token=active)
    assert reply.status == 200, reply.body
    assert [m["value"] for m in reply.json() if "value" in m] == [{"id": "1", "title": "a1"}]


async def test_a_patterns_deny_covers_a_table_also_listed_by_name(
    engine: EngineProcess,
    proxy_from_yaml: Any,
) -> None:
    """`public.*` denies suspended accounts; `items` is also listed by name with its own
    allow rule: its allow rules stay its own, the pattern's deny is added (on the old code
    the suspended token was served items' rows)."""
    config = base_config(engine.url, proxy_from_yaml.jwks_url)
    config["upstream"].update(first_byte_timeout=10)
    config["tables"] = {
        "public.*": {
            "deny": [{"when": {"account_status": "suspended"}, "reason": "suspended account"}],
            "allow": [{"where": "org_id = {{org_id}}", "columns": ["id", "org_id"]}],
        },
        "items": {
            "allow": [{"where": "org_id = {{org_id}}", "columns": ["id", "org_id", "title"]}],
        },
    }
    proxy = await proxy_from_yaml(config)
    suspended = proxy.tokens.make(org_id="org-a", account_status="suspended")
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=suspended)
    assert reply.status == 403, reply.body
    assert reply.json()["code"] == "denied_by_rule"
    active = proxy.tokens.make(org_id="org-a", account_status="active")
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=active)
    assert reply.status == 200, reply.body
    rows = [m["value"] for m in reply.json() if "value" in m]
    assert rows == [{"id": "1", "org_id": "org-a", "title": "a1"}]  # items' own rule


def test_the_shipped_multi_tenant_example_denies_its_named_shape_to_suspended_accounts() -> None:
    root = Path(__file__).resolve().parents[2]
    loaded = load_config(
        root / "config/examples/multi-tenant.yaml",
        {"ENGINE_SECRET": "e" * 32, "SHAPE_PROXY_JWT_SECRET": "j" * 32},
    )
    table_denies = loaded.config.tables["items"].deny
    assert table_denies
    for deny in table_denies:
        assert deny in loaded.config.shapes["my-items"].deny
    # the suspended account syncs no table of the example (comments had no deny)
    for name, table in loaded.config.tables.items():
        assert [d.reason for d in table.deny] == ["suspended account"], name


@pytest.mark.parametrize("later", ["'*.*'", "'*.items'", "'public.it*'"])
async def test_a_later_patterns_deny_covers_a_table_reached_through_an_earlier_one(
    engine: EngineProcess, proxy_from_yaml: Any, later: str
) -> None:
    """`public.*` serves items (the first matching pattern: its allow rules); a later pattern
    that also matches items denies suspended accounts. The suspended account is refused by
    that deny, in its words (on the old code it was refused only by the partition check,
    `pattern_not_safe`, which says nothing of the deny and which a change of that check
    would have lifted); the active one is served by `public.*`'s rule."""
    rule = '{where: "org_id = {{org_id}}", columns: [id, org_id, title]}'
    text = proxy_from_yaml.head(engine.url) + (
        f"tables:\n  public.*:\n    allow: [{rule}]\n"
        f"  {later}:\n"
        "    deny: [{when: {account_status: suspended}, reason: suspended account}]\n"
        f"    allow: [{rule}]\n"
    )
    proxy = await proxy_from_yaml(text)
    suspended = proxy.tokens.make(org_id="org-a", account_status="suspended")
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=suspended)
    assert reply.status == 403, reply.body
    assert reply.json()["code"] == "denied_by_rule", reply.body
    assert "suspended account" in reply.json()["message"]
    active = proxy.tokens.make(org_id="org-a", account_status="active")
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=active)
    assert reply.status == 200, reply.body
    rows = [m["value"] for m in reply.json() if "value" in m]
    assert rows == [{"id": "1", "org_id": "org-a", "title": "a1"}]


def test_a_pattern_takes_the_denies_of_later_patterns_that_may_match_its_tables_only(
    proxy_from_yaml: Any,
) -> None:
    """Which deny rules each entry ends up with: a table reached through a pattern is
    reached through the first one that matches it, so an earlier pattern's deny never
    applies to it (that pattern serves the tables both match), nor does a pattern matching
    none of its tables (`archive.*`); a later one that may match some does (`*.it*`: where
    the proxy cannot tell which tables two patterns share, it applies the deny to all)."""

    def deny(reason: str) -> str:
        return f"    deny: [{{when: {{account_status: {reason}}}, reason: {reason}}}]\n"

    rule = "    allow: [{all_rows: true}]\n"
    text = proxy_from_yaml.head("http://127.0.0.1:9") + (
        "tables:\n"
        f"  archive.*:\n{deny('archived')}{rule}"
        f"  public.*:\n{deny('own')}{rule}"
        f"  '*.it*':\n{deny('later')}{rule}"
        f"  public.items:\n{rule}"
        f"  other.x:\n{rule}"
    )
    tables = proxy_from_yaml.load(text).config.tables

    def reasons(name: str) -> list[str | None]:
        return [d.reason for d in tables[name].deny]

    assert reasons("archive.*") == ["archived", "later"]
    assert reasons("public.*") == ["own", "later"]
    assert reasons("*.it*") == ["later"]
    assert reasons("public.items") == ["own", "later"]
    assert reasons("other.x") == []
