"""A client's bad where or params, refused by the proxy's own check, is the engine's answer.

Each request goes straight to the engine (with its secret) and through the proxy, as a
member (whose rule ANDs `org_id = {{org_id}}` onto the client's clause) and as an admin
(all rows, the client's clause checked and sent alone): the status, the headers a client
reads and the body, byte for byte, must be the engine's. Where the client wrote the fault,
the policy does not narrow anything, so nothing may tell the two apart.

Found (where-fuzz 12:35, item 3): the proxy's own pre-check of a clause that does not parse
(`At location N: syntax error ...`) or of a `$n` with no param (`parameter $1 was not
provided`) answered the engine's body plus `"code":"invalid_where"` / `"invalid_params"`.

Real path: proxy -> `sync-engine` -> PostgreSQL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_transparency_fuzz_real import _comparable
from tests.support.engine_process import EngineProcess

#: Query tails whose fault is the client's: syntax the parser refuses, `$n` without a param,
#: params that are not the where's, clauses that are no boolean.
BAD = [
    "where=" + quote("title = ("),
    "where=" + quote("id >"),
    "where=" + quote("id > 1 AND"),
    "where=" + quote("(id = 1"),
    "where=" + quote("id = 1)"),
    "where=" + quote("id = = 1"),
    "where=" + quote("title = 'open"),
    "where=" + quote("id IN ()"),
    "where=" + quote("id = $1"),
    "where=" + quote("id = $1 OR id = $2") + "&params[1]=1",
    "where=" + quote("id = $2") + "&params[1]=1",
    "where=" + quote("id = $0") + "&params[1]=1",
    "where=" + quote("NULL"),
    "where=" + quote("random() < 2"),
    "where=" + quote("id = ANY(ARRAY[1,2])[1]"),
    "where=" + quote("id = $1") + "&params[1]=x",
    "where=" + quote("id = 1") + "&params[2]=1",
    "where=" + quote("id = 1") + "&params[a]=1",
    "where=" + quote("id = $1") + "&params=1",
    "log=changes_only&subset__where=" + quote("id >"),
    "log=changes_only&subset__where=" + quote("id = $1"),
    "log=changes_only&subset__where=" + quote("title = ("),
    "log=changes_only&subset__where=" + quote("id = $2") + "&subset__params[1]=1",
]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1')",
    )


async def test_a_clients_bad_where_is_the_engines_answer_byte_for_byte(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"]["items"]["allow"][1]["subset"] = True
    config["tables"]["items"]["allow"][0]["subset"] = True
    config["upstream"].update(first_byte_timeout=10)
    config["cors"] = {"allow_origins": ["*"]}  # (the engine's own CORS answer)
    proxy = await make_proxy(build_config(config, environ))
    tokens = {
        "member": proxy.tokens.make(org_id="org-a"),
        "admin": proxy.tokens.make(role="admin"),
    }
    differences = []
    async with aiohttp.ClientSession() as session:
        for tail in BAD:
            path = f"/v1/shape?table=items&offset=-1&{tail}"
            async with session.get(f"{engine.url}{path}&secret={proxy.secret}") as resp:
                body = await resp.read()
                straight = _comparable(resp.status, resp.headers, body, "GET"), body
            assert resp.status == 400, (tail, body)
            for who, token in tokens.items():
                reply = await proxy.get(path, token=token)
                through = _comparable(reply.status, reply.headers, reply.body, "GET"), reply.body
                if through != straight:
                    differences.append((tail, who, straight, through))
    for tail, who, (_, engine_body), (_, proxy_body) in differences:
        print(tail, who, engine_body, proxy_body, sep="\n  ")
    assert differences == []


#: Clauses the proxy once refused as nodes it did not know, which the engine judges itself
#: (wherefuzz 01:58: the engine evaluates CASE): refused in the engine's words, or served.
JUDGED_BY_THE_ENGINE = [
    "where=" + quote("(CASE WHEN title = 'a1' THEN 1 ELSE 2 END) = 1"),
    "where=" + quote("(CASE id WHEN 1 THEN 'x' WHEN 2 THEN 'y' END) = 'y'"),
]


async def test_a_case_where_is_answered_as_the_engine_answers_it(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """As an admin (the client's clause checked and sent alone): the engine's answer byte for
    byte, a refusal or rows (the proxy said 400 `CaseExpr is not allowed in a client clause`).
    Rows (the engine evaluates CASE since w-faults 3db6556): compared on status and body."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    config["cors"] = {"allow_origins": ["*"]}  # (the engine's own CORS answer)
    proxy = await make_proxy(build_config(config, environ))
    admin = proxy.tokens.make(role="admin")
    async with aiohttp.ClientSession() as session:
        for tail in JUDGED_BY_THE_ENGINE:
            path = f"/v1/shape?table=items&offset=-1&{tail}"
            async with session.get(f"{engine.url}{path}&secret={proxy.secret}") as resp:
                body = await resp.read()
                straight = _comparable(resp.status, resp.headers, body, "GET")
            reply = await proxy.get(path, token=admin)
            if resp.status == 200:
                # (rows: the body byte for byte; the headers of an answer to a token are the
                # proxy's own where they differ, `Cache-Control: private`, `Vary`)
                assert (reply.status, reply.body) == (200, body), (tail, body, reply.body)
                continue
            through = _comparable(reply.status, reply.headers, reply.body, "GET")
            assert through == straight, (tail, body, reply.body)
