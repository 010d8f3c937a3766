"""A `--` comment in a rule's filter is found as Postgres's scanner finds it (proxycfg config
probe, 2026-12-07, second session): after a dollar-quoted string holding a quote
(`$q$it's$q$`), the hand-written reading took the quote for the start of a string, missed the
comment, and the filter loaded. YAML folds a plain or quoted value's lines into one, so the
comment then ran to the end of the filter and hid `AND org_id = 'org-a'`: every
organisation's rows were served. Real path: a file loaded by `load_config`, the proxy in
front of a real `sync-engine` and Postgres.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1')",
    )


@pytest.mark.parametrize("quoted", ["$q$it's$q$", "$$it's$$"])
async def test_a_line_comment_after_a_dollar_quoted_quote_is_refused(
    engine: EngineProcess, proxy_from_yaml: Any, quoted: str
) -> None:
    """On the old code the file loaded and the member got org-b's row too."""
    text = proxy_from_yaml.head(engine.url) + (
        "tables:\n  items:\n    allow:\n"
        f'      - where: "title <> {quoted} -- not that title\n'
        "          AND org_id = 'org-a'\"\n"
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert "(line 10)" in str(exc) and "a `--` comment runs to the end" in str(exc), exc
        return
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=proxy.tokens.make())
    assert reply.status == 200, reply.body
    assert [m["value"]["org_id"] for m in reply.json() if "value" in m] == ["org-a"]


async def test_the_same_filter_in_a_block_with_a_block_comment_loads_and_filters(
    engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    """What the refusal says to write instead: a `/* */` comment (here in a `|` block)."""
    text = proxy_from_yaml.head(engine.url) + (
        "tables:\n  items:\n    allow:\n"
        "      - where: |\n"
        "          title <> $q$it's$q$ /* not that title */\n"
        "          AND org_id = 'org-a'\n"
    )
    proxy = await proxy_from_yaml(text)
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=proxy.tokens.make())
    assert reply.status == 200, reply.body
    assert [m["value"]["org_id"] for m in reply.json() if "value" in m] == ["org-a"]
