"""A rule that needs a token in a file with no `issuers:` is said at load.

It loaded silently: no token can be verified without an issuer, and each was a 401 "the
token signature is invalid", which sent the operator looking at keys (newuser, 2026-12-07,
LOW). Now a file whose every rule needs a token is a load error saying to add the issuer;
one with anonymous rules too loads (they serve) with a warning naming each rule that never
can. Real path: files loaded by `load_config`, the proxy from the second in front of a real
`sync-engine` and Postgres. On the old code the first loaded and the warning was missing.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
TOKEN_RULE = "      - name: member\n        where: 'org_id = {{org_id}}'\n"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text)",
        "CREATE TABLE notes (id int PRIMARY KEY, body text)",
        "INSERT INTO items VALUES (1, 'org-a')",
        "INSERT INTO notes VALUES (1, 'public')",
    )


async def test_token_rules_without_issuers(
    engine: EngineProcess, proxy_from_yaml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    head = f'upstream: {{url: "{engine.url}", secret_env: ENGINE_SECRET}}\n'
    only_tokens = head + "tables:\n  items:\n    allow:\n" + TOKEN_RULE
    with pytest.raises(ConfigError, match=r"issuers: none is configured, and every rule needs"):
        proxy_from_yaml.load(only_tokens)

    caplog.set_level(logging.WARNING)
    mixed = only_tokens + "  notes:\n    allow: [{anonymous: true, all_rows: true}]\n"
    proxy = await proxy_from_yaml(mixed, name="mixed")
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "tables.items: allow rule 'member' (allow.0) needs a token, and no issuers are "
        "configured" in line
        for line in said
    ), said
    # its anonymous rule serves; the token rule's table answers as before (no token: 401)
    reply = await proxy.get("/v1/shape?table=notes&offset=-1")
    assert reply.status == 200, reply.body
    assert b"public" in reply.body
    reply = await proxy.get(SHAPE)
    assert reply.status == 401, reply.body
