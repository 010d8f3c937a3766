"""A client's `queryable_columns` under a rule that hides columns narrows what the rule lets it
query, and never widens it. Real path: proxy -> `sync-engine` -> PostgreSQL.

The member's rule shows `items`' id, org_id and title (not `secret`) of its org's rows. The
proxy used to send the rule's list in place of the client's (review LOW): a client asking
for `queryable_columns=id,title` got org_id too, and a subset filtering on org_id, where
the engine, asked for the same narrowed shape, gives the list's columns and refuses that
subset. Each answer here is the engine's to the narrowed request: the client's query with
the rule's filter (and, when the client names none, the rule's columns).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import aiohttp
import pytest

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.real_proxies import by_mode, items_config
from tests.support.engine_process import EngineProcess

engine_secret, engine = shared_engine_fixtures(
    "queryable",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, secret text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a1', 's1'), (2, 'org-b', 'b1', 's2'), "
    "(3, 'org-a', 'a3', 's3')",
    args=("--long-poll-timeout", "1"),
)

#: The member's rule, as the engine reads it.
POLICY = "where=org_id%20=%20'org-a'"
RULE = "queryable_columns=id,org_id,title"

#: (the client's query after `table=items&offset=-1&`, the engine's narrowed query).
CASES = [
    # the list's columns, not the rule's
    ("queryable_columns=id,title", f"{POLICY}&queryable_columns=id,title"),
    ("queryable_columns=%22id%22,%20title,id", f"{POLICY}&queryable_columns=%22id%22,%20title,id"),
    ("queryable_columns=id,title&columns=id", f"{POLICY}&queryable_columns=id,title&columns=id"),
    # a subset may name only the list's columns
    (
        "queryable_columns=id,title&subset__where=org_id%20=%20'org-a'",
        f"{POLICY}&queryable_columns=id,title&subset__where=org_id%20=%20'org-a'",
    ),
    (
        "queryable_columns=id,title&subset__order_by=org_id&subset__limit=1",
        f"{POLICY}&queryable_columns=id,title&subset__order_by=org_id&subset__limit=1",
    ),
    (
        "queryable_columns=id,title&subset__where=title%20=%20'a3'",
        f"{POLICY}&queryable_columns=id,title&subset__where=title%20=%20'a3'",
    ),
    # `columns` outside the list, a list without the key, a list that does not parse
    (
        "queryable_columns=id,title&columns=id,org_id",
        f"{POLICY}&queryable_columns=id,title&columns=id,org_id",
    ),
    ("queryable_columns=title", f"{POLICY}&queryable_columns=title"),
    ("queryable_columns=%22id", f"{POLICY}&queryable_columns=%22id"),
    # none, or a blank one (none to the engine): the rule's
    ("", f"{POLICY}&{RULE}&columns=id,org_id,title"),
    ("queryable_columns=", f"{POLICY}&{RULE}&columns=id,org_id,title"),
    ("columns=id,title", f"{POLICY}&{RULE}&columns=id,title"),
]


def _comparable(status: int, body: bytes) -> Any:
    answer: Any = json.loads(body) if body.strip() else None
    if status >= 400:
        return status, answer
    messages = answer["data"] if isinstance(answer, dict) else answer or []
    return status, sorted(json.dumps([m["key"], m["value"]]) for m in messages if "key" in m)


def _config(engine: EngineProcess, idp_server: Any, collapse: bool) -> dict[str, Any]:
    config = items_config(engine, idp_server, collapse=collapse)
    config["tables"]["items"]["allow"][1]["subset"] = True
    return config


async def test_a_clients_queryable_columns_narrow_the_rule(
    engine: EngineProcess, engine_secret: str, idp_server: Any, reloadable_proxy: Any
) -> None:
    proxies = await by_mode(reloadable_proxy, partial(_config, engine, idp_server))
    member = proxies["direct"].tokens.make(org_id="org-a")
    differences = []
    async with aiohttp.ClientSession() as session:
        for query, narrowed in CASES:
            direct = (
                f"{engine.url}/v1/shape?table=items&offset=-1&{narrowed}&secret={engine_secret}"
            )
            async with session.get(aiohttp.client.URL(direct, encoded=True)) as resp:
                expected = _comparable(resp.status, await resp.read())
            for name, proxy in proxies.items():
                for attempt in range(2):  # (the second is one the proxy already authorised)
                    reply = await proxy.raw_get(f"/v1/shape?table=items&offset=-1&{query}", member)
                    got = _comparable(reply.status, reply.body)
                    if got != expected:
                        differences.append((query, name, attempt, expected, got))
    assert differences == []


@pytest.mark.parametrize(
    "query", ["queryable_columns=id,secret", "queryable_columns=id,title,secret&columns=id,title"]
)
async def test_a_hidden_column_in_the_list_is_refused(
    engine: EngineProcess, idp_server: Any, reloadable_proxy: Any, query: str
) -> None:
    """A name the rule hides is refused as in `columns` (never a widening, never silently
    dropped: a typo would then be served as another shape)."""
    proxy = await reloadable_proxy(_config(engine, idp_server, False))
    reply = await proxy.raw_get(f"/v1/shape?table=items&offset=-1&{query}", proxy.tokens.make())
    assert reply.status == 403, reply.body
    answer = reply.json()
    assert answer["code"] == "column_not_allowed"
    assert list(answer["errors"]) == ["queryable_columns"]
    assert b"s1" not in reply.body
