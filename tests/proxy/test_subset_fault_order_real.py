"""A subset with two faults, an `order_by` that is no plain column and a where the engine
refuses, gets the engine's answer through a narrowing proxy: the where's fault, which the
engine checks first (transparency LOW, 11 of 250 random subsets: the proxy checked the
order_by itself first and named it). Real path: proxy -> `sync-engine` -> PostgreSQL.

The member's rule shows `items`' id, org_id and title of its org's rows; each answer is the
engine's to the same request for the narrowed shape (the rule's filter and columns).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.real_proxies import by_mode, items_config
from tests.support.engine_process import EngineProcess

engine_secret, engine = shared_engine_fixtures(
    "fault_order",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, secret text)",
    "INSERT INTO items VALUES (1, 'org-a', 't1', 's1'), (2, 'org-b', 't2', 's2')",
    args=("--long-poll-timeout", "1"),
)

POLICY = "org_id = 'org-a'"
NARROWED = f"where={quote(POLICY)}&queryable_columns=id,org_id,title"

#: Subsets (as a POST body; sent by GET too, as `subset__*`).
SUBSETS: list[dict[str, Any]] = [
    # the where's fault first: a param it does not use, a type error
    {"where": "title LIKE 't%'", "order_by": "id + 1", "params": {"1": "t1"}},
    {"where": "(lower(title) = 't1' OR org_id IN (5, 't1'))", "order_by": "lower(title)"},
    {
        "where": "id = 10",
        "order_by": "lower(title) desc, org_id",
        "limit": 5,
        "params": {"1": "t1"},
    },
    {"where": "title <> 5", "order_by": 'id, title COLLATE "C"'},
    # the shape's fault first (its columns without the key, checked by the engine before)
    {"order_by": "id + 1", "_columns": "title"},
    # only the order_by's
    {"where": "id > 0", "order_by": "id + 1"},
    {"where": "title LIKE $1", "order_by": "lower(title)", "params": {"1": "t%"}},
    {"order_by": "id + 1", "limit": 1},
    # none: the rows
    {"where": "title LIKE $1", "order_by": "title desc", "params": {"1": "t%"}},
]


def _query(subset: dict[str, Any]) -> str:
    parts = []
    for key, value in subset.items():
        if key == "params":
            parts += [f"subset__params[{k}]={quote(v)}" for k, v in value.items()]
        else:
            parts.append(f"subset__{key}={quote(str(value))}")
    return "&".join(parts)


def _comparable(status: int, body: bytes) -> Any:
    answer: Any = json.loads(body) if body.strip() else None
    if status >= 400:
        return status, answer  # (the body exactly: the engine's words, no `code`)
    return status, [m.get("value") for m in answer["data"] if "value" in m]


async def test_a_subsets_first_fault_is_the_one_the_engine_names(
    engine: EngineProcess, engine_secret: str, idp_server: Any, reloadable_proxy: Any
) -> None:
    proxies = await by_mode(
        reloadable_proxy, lambda collapse: items_config(engine, idp_server, collapse=collapse)
    )
    member = proxies["direct"].tokens.make(org_id="org-a")
    differences: list[tuple[Any, ...]] = []
    base = "/v1/shape?table=items&offset=-1"
    async with aiohttp.ClientSession() as session:
        for case in SUBSETS:
            subset = {k: v for k, v in case.items() if k != "_columns"}
            shape = f"{base}&columns={case.get('_columns', 'id,org_id,title')}"
            direct = f"{engine.url}{shape}&{NARROWED}&secret={engine_secret}"
            async with session.get(
                aiohttp.client.URL(f"{direct}&{_query(subset)}", encoded=True)
            ) as resp:
                expected = _comparable(resp.status, await resp.read())
            async with session.post(direct, json=subset) as resp:
                assert _comparable(resp.status, await resp.read()) == expected, subset
            for name, proxy in proxies.items():
                for attempt in range(2):  # (the second: one the proxy authorised before)
                    query = f"{base}&{_query(subset)}"
                    if "_columns" in case:
                        query += f"&columns={case['_columns']}"
                    got = await proxy.raw_get(query, member)
                    if _comparable(got.status, got.body) != expected:
                        differences.append((subset, name, "GET", attempt, expected, got.body))
                target = base + (f"&columns={case['_columns']}" if "_columns" in case else "")
                posted = await proxy.request(
                    "POST", target, token=member, data=json.dumps(subset).encode()
                )
                if _comparable(posted.status, posted.body) != expected:
                    differences.append((subset, name, "POST", expected, posted.body))
    assert differences == []
