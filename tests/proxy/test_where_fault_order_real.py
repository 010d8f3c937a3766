"""A member's where with two faults, a function or operator the engine never evaluates and a
fault only the column types show, gets the engine's answer: the fault the engine names first
(transparency LOW, 16:58: ~20% of the 400s of random clauses named another fault). The proxy
checked functions with the engine's schema-free check, which meets them in another order
than the engine's typed reading. Real path: proxy -> `sync-engine` -> PostgreSQL.

Each answer is the engine's to the clause alone (its rows: the member's org's), as for the
member's other where errors (`test_engine_parity_real`); GET and POST subsets alike.
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
    "where_fault_order",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, n int)",
    "INSERT INTO items VALUES (1, 'org-a', 't1', 1), (2, 'org-b', 't2', 2), (3, 'org-a', 'x', 3)",
    args=("--long-poll-timeout", "1"),
)

CLAUSES = [
    # a typed fault first, a function or operator the engine never evaluates after it
    "md5(title) ILIKE 't1' AND title !~ 'x'",
    "round(id) = mod(id, 3) OR least(id, 9) > +4 AND least(id, 9) > ceil(id)",
    "lower(id) = 'a' AND now() > '2020-01-01'",
    "title > 5 OR pg_sleep(1) IS NULL",
    # a row expression (the engine's words, not the proxy's `unsupported_where`)
    "NOT ((id::numeric > 2147483647 AND (id, n) > (5, 1)))",
    "(id, n) > (5, 1)",
    "lower(id) = 'a' OR (id, n) = (1, 1)",
    # SQL-syntax calls (`trim`, `substring`): the client's text goes verbatim (it was sent
    # regenerated, `pg_catalog.btrim`, where the engine's locations did not map back: hostile
    # 23:12), so the engine names its first fault, located in the client's own text
    "trim(title) <> 'x'",
    "trim(title) <> 'x' AND lower(id) = 'a'",
    "title ~* 'x' OR trim(title) ILIKE '1'",
    "substring(title from 1 for 1) = 't' OR id = 3",
    # a fault of the engine's reading itself (PostgreSQL 15's grammar): its words, its
    # location (hostile 23:12: 106 for the engine's 31)
    "power(id, 2) != 1_000",
    "n::int <= 0x10",
    # one fault
    "title !~ 'x'",
    "now() > '2020-01-01'",
    "lower(id) = 'a'",
    # none: the rows
    "lower(title) = 't1' OR id = 3",
]


def _comparable(status: int, body: bytes) -> Any:
    answer: Any = json.loads(body) if body.strip() else None
    if status >= 400:
        return status, answer  # (the body exactly: the engine's words, no `code`)
    messages = answer["data"] if isinstance(answer, dict) else answer
    return status, sorted(json.dumps(m["value"]) for m in messages if "value" in m)


async def test_a_members_where_gets_the_fault_the_engine_names_first(
    engine: EngineProcess, engine_secret: str, idp_server: Any, reloadable_proxy: Any
) -> None:
    def config(collapse: bool) -> dict[str, Any]:
        made = items_config(engine, idp_server, collapse=collapse)
        made["tables"]["items"]["allow"][1]["columns"] = ["id", "org_id", "title", "n"]
        return made

    proxies = await by_mode(reloadable_proxy, config)
    member = proxies["direct"].tokens.make(org_id="org-a")
    differences: list[tuple[Any, ...]] = []
    base = "/v1/shape?table=items&offset=-1"
    async with aiohttp.ClientSession() as session:
        for clause in CLAUSES:
            for kind in ("where", "subset__where"):
                query = f"{kind}={quote(clause)}"
                if kind == "where":  # the clause alone, the member's rows of it
                    direct = f"{engine.url}{base}&{query}&secret={engine_secret}"
                else:  # within the member's shape
                    policy = quote("org_id = 'org-a'")
                    direct = f"{engine.url}{base}&where={policy}&{query}&secret={engine_secret}"
                async with session.get(aiohttp.client.URL(direct, encoded=True)) as resp:
                    status, answer = _comparable(resp.status, await resp.read())
                if status == 200:
                    answer = [row for row in answer if '"org_id": "org-a"' in row]
                for name, proxy in proxies.items():
                    for attempt in range(2):  # (the second: one the proxy authorised before)
                        got = await proxy.raw_get(f"{base}&{query}", member)
                        if _comparable(got.status, got.body) != (status, answer):
                            differences.append((clause, kind, name, attempt, answer, got.body))
    assert differences == []
