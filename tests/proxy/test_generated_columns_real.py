"""A Postgres generated column (`GENERATED ALWAYS AS (...) STORED`) named by a policy rule's
`columns` or by a client's `columns`, `queryable_columns`, where or subset: the client gets
what the engine answers the narrowed request (the client's query with the rule's filter and,
when the client names none, the rule's columns), status and JSON body, through each of the
proxy's three ways (collapsing, the general path, the fast lane); the config loads.

Found: under a rule that hides columns, a client's `queryable_columns=id,g` (g generated) was
the engine's 400 with its error moved under `queryable_columns`; the engine names it
`columns` (it checks the list as the columns it replicates). Real path: proxy ->
`sync-engine` -> PostgreSQL.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import aiohttp

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.proxy_fakes import base_config
from tests.proxy.real_proxies import by_mode
from tests.proxy.test_queryable_columns_narrowed_real import _comparable
from tests.support.engine_process import EngineProcess

engine_secret, engine = shared_engine_fixtures(
    "generated",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text,"
    " g int GENERATED ALWAYS AS (id * 2) STORED)",
    "INSERT INTO items (id, org_id, title) VALUES (1, 'org-a', 'a1'), (2, 'org-a', 'a2'),"
    " (3, 'org-b', 'b3')",
    args=("--long-poll-timeout", "1"),
)

#: The member rule's filter as the engine reads it.
ORG = "where=org_id%20=%20'org-a'"

#: (the token's role, the client's query after `table=items&offset=-1&`, the engine's).
CASES = [
    # the rule's columns name g
    ("member", "", f"{ORG}&columns=id,org_id,g"),
    ("member", "columns=id,g", f"{ORG}&columns=id,g"),
    ("member", "columns=id,org_id", f"{ORG}&queryable_columns=id,org_id,g&columns=id,org_id"),
    ("member", "queryable_columns=id,g", f"{ORG}&queryable_columns=id,g"),
    ("member", "queryable_columns=id,g&columns=id", f"{ORG}&queryable_columns=id,g&columns=id"),
    (
        "member",
        "columns=id&subset__where=g%3E2",
        f"{ORG}&queryable_columns=id,org_id,g&columns=id&subset__where=g%3E2",
    ),
    (
        "member",
        "columns=id&subset__order_by=g&subset__limit=1",
        f"{ORG}&queryable_columns=id,org_id,g&columns=id&subset__order_by=g&subset__limit=1",
    ),
    # white space only: absent, to the engine as to the proxy
    ("member", "columns=id&where=%20", f"{ORG}&queryable_columns=id,org_id,g&columns=id"),
    (
        "member",
        "columns=id&replica=%20&where=%09",
        f"{ORG}&queryable_columns=id,org_id,g&columns=id",
    ),
    ("gonly", "", f"{ORG}&columns=id,g"),
    ("gonly", "columns=id", f"{ORG}&queryable_columns=id,g&columns=id"),
    # a rule that hides nothing: the client's lists as written
    ("open", "", ""),
    ("open", "columns=id,g", "columns=id,g"),
    ("open", "queryable_columns=id,g", "queryable_columns=id,g"),
    ("open", "columns=id&where=g%3E2", "columns=id&where=g%3E2"),
    ("open", "columns=id&subset__where=g%3E2", "columns=id&subset__where=g%3E2"),
    (
        "open",
        "queryable_columns=id,g&columns=id&subset__where=g%3E2",
        "queryable_columns=id,g&columns=id&subset__where=g%3E2",
    ),
]


def _config(engine: EngineProcess, idp_server: Any, collapse: bool) -> dict[str, Any]:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    if not collapse:
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
    filtered = {"where": "org_id = {{org_id}}", "client_where": "validated", "subset": True}
    config["tables"] = {
        "items": {
            "allow": [
                {"name": "member", "when": {"role": "member"}, **filtered,
                 "columns": ["id", "org_id", "g"]},
                {"name": "gonly", "when": {"role": "gonly"}, **filtered, "columns": ["id", "g"]},
                {"name": "open", "when": {"role": "open"}, "all_rows": True,
                 "client_where": "validated", "subset": True},
            ]
        }
    }  # fmt: skip
    return config


async def test_generated_columns_are_answered_as_the_engine_answers(
    engine: EngineProcess, engine_secret: str, idp_server: Any, reloadable_proxy: Any
) -> None:
    """On the old code: `member` + `queryable_columns=id,g` (each of the 6 answers: 3 ways, twice) came
    back with the engine's error under `queryable_columns` where the engine says `columns`."""
    proxies = await by_mode(reloadable_proxy, partial(_config, engine, idp_server))
    differences = []
    async with aiohttp.ClientSession() as session:
        for role, query, narrowed in CASES:
            direct = (
                f"{engine.url}/v1/shape?table=items&offset=-1&{narrowed}&secret={engine_secret}"
            )
            async with session.get(aiohttp.client.URL(direct, encoded=True)) as resp:
                expected = _comparable(resp.status, await resp.read())
            for name, proxy in proxies.items():
                token = proxy.tokens.make(role=role, org_id="org-a")
                for attempt in range(2):  # (the second is one the proxy already authorised)
                    reply = await proxy.raw_get(f"/v1/shape?table=items&offset=-1&{query}", token)
                    got = _comparable(reply.status, reply.body)
                    if got != expected:
                        differences.append((role, query, name, attempt, expected, got))
    assert differences == []
