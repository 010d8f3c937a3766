"""Hand-written configs that loaded but let a user see more than the file says (proxycfg's
config probe, 2026-12-07, afternoon batch): each a real file loaded by `load_config`
(`proxy_from_yaml`), the proxy in front of a real `sync-engine` and Postgres.

- A quoted table name holding a glob character (`'"user*"'`, the table literally named
  `user*`) was matched as a pattern: every table whose name starts with `user` was served by
  its rule, `user_secrets` too. A load error now (`_quoted_globs`).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        'CREATE TABLE "user*" (id int PRIMARY KEY, name text)',
        "INSERT INTO \"user*\" VALUES (1, 'star')",
        "CREATE TABLE user_secrets (id int PRIMARY KEY, secret text)",
        "INSERT INTO user_secrets VALUES (1, 's1')",
    )


@pytest.mark.parametrize(
    "key", ["'\"user*\"'", "'public.\"user*\"'", '\'"pub?ic"."user_secrets"\'', "'\"*\"'"]
)
async def test_a_quoted_name_with_a_glob_character_is_no_pattern(
    engine: EngineProcess, proxy_from_yaml: Any, key: str
) -> None:
    """On the old code the file loaded and `user_secrets` was served (200, its rows)."""
    text = (
        proxy_from_yaml.head(engine.url) + f"tables:\n  {key}:\n    allow: [{{all_rows: true}}]\n"
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        refused = str(exc)
    else:
        reply = await proxy.get("/v1/shape?table=user_secrets&offset=-1", token=proxy.tokens.make())
        assert reply.status == 403, reply.body
        refused = ""
    assert re.search(r"quoted .* is matched as a pattern", refused), refused
