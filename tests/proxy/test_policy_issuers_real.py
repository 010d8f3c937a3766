"""With several issuers, a rule that picks rows or grants access by `sub` says whose users it
means: a `sub` names a user only within its issuer (RFC 7519 4.1.2).

The proxy bound `{{sub}}` whatever issuer signed the token: with a second issuer configured (a
partner's identity provider, say), that issuer's user "alice" synced the rows of the first
issuer's "alice" (`owner = {{sub}}`), and matched a rule written `when: {sub: ...}` for
someone else. Such a rule is now a load error unless its `when` names `iss`; pinned, each
issuer's users get their own rows only. Real tokens (RS256 from the fake identity provider,
HS256 from the second issuer), the real proxy, a real engine and Postgres.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.config.loader import ConfigError, build_config
from tests.proxy.proxy_fakes import ISSUER, base_config
from tests.support.engine_process import EngineProcess

PARTNER = "https://partner.example/"
PARTNER_SECRET = "partner-hmac-secret-0123456789abcdef0123456789"
NOTES = "/v1/shape?table=notes&offset=-1"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text)",
        "INSERT INTO notes VALUES (1, 'alice', 'alice at the first issuer'), (2, 'bob', 'b')",
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, owner text, title text)",
    )


def _two_issuers(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["issuers"].append(
        {
            "issuer": PARTNER,
            "audience": config["issuers"][0]["audience"],
            "algorithms": ["HS256"],
            "keys": [{"secret_env": "PARTNER_SECRET"}],
        }
    )
    return config


def _pin(config: dict[str, Any]) -> dict[str, Any]:
    """Each rule that uses `sub` pinned to the first issuer."""
    config = copy.deepcopy(config)
    for rule in config["tables"]["notes"]["allow"]:
        rule.setdefault("when", {})["iss"] = ISSUER
    for rule in config["shapes"]["my-items"]["allow"]:
        rule.setdefault("when", {})["iss"] = ISSUER
    return config


def test_a_rule_using_sub_under_several_issuers_must_name_iss(environ: dict[str, str]) -> None:
    env = {**environ, "PARTNER_SECRET": PARTNER_SECRET}
    one = base_config("http://127.0.0.1:1", "http://127.0.0.1:2/jwks.json")
    build_config(one, env)  # one issuer: {{sub}} is that issuer's, as before
    two = _two_issuers(one)
    with pytest.raises(ConfigError, match=r"tables\.notes\.allow\.0: the rule binds \{\{sub\}\}"):
        build_config(two, env)
    granted = copy.deepcopy(_pin(two))
    granted["tables"]["items"]["allow"].insert(0, {"when": {"sub": "root"}, "all_rows": True})
    with pytest.raises(ConfigError, match=r"tables\.items\.allow\.0: the rule matches on sub"):
        build_config(granted, env)
    shape_only = copy.deepcopy(two)
    shape_only["tables"]["notes"]["allow"][0]["when"] = {"iss": [ISSUER, PARTNER]}
    with pytest.raises(ConfigError, match=r"shapes\.my-items\.allow\.0: the rule binds"):
        build_config(shape_only, env)
    # named: one issuer, or a list of those whose users share their subs
    build_config(_pin(two), env)
    shape_only["shapes"]["my-items"]["allow"][0]["when"] = {"iss": [ISSUER, PARTNER]}
    build_config(shape_only, env)


async def test_another_issuers_user_with_the_same_sub_gets_no_rows(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    env = {**environ, "PARTNER_SECRET": PARTNER_SECRET}
    unpinned = _two_issuers(base_config(engine.url, str(idp_server.make_url("/jwks.json"))))
    for config in (unpinned, _pin(unpinned)):
        try:
            loaded = build_config(config, env)
        except ConfigError as exc:
            assert config is unpinned and "add iss to its when" in str(exc)
            continue
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice")
        partner_alice = proxy.tokens.make(
            sub="alice", iss=PARTNER, algorithm="HS256", signing_key=PARTNER_SECRET
        )
        reply = await proxy.get(NOTES, token=alice)
        assert reply.status == 200, reply.body
        assert [m["value"]["id"] for m in reply.json() if "value" in m] == ["1"]
        # the partner's alice is not the first issuer's: none of her rows
        reply = await proxy.get(NOTES, token=partner_alice)
        leaked = [m["value"] for m in reply.json() if "value" in m] if reply.status == 200 else []
        assert not leaked
        assert (reply.status, reply.json()["code"]) == (403, "no_matching_rule"), reply.body
        reply = await proxy.get("/shapes/my-items?offset=-1", token=partner_alice)
        assert (reply.status, reply.json()["code"]) == (403, "no_matching_rule"), reply.body
