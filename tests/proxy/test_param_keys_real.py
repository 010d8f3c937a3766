"""`params[01]` is not `$1` through the proxy either: the engine's own 400, byte for byte.

Electric (and the engine since 9aaf81bd) checks that param keys are numbers numbered from 1
(`Integer.parse` reads `01` as 1) but looks `$1` up under the key `1` only, so a clause using
`$1` with only `params[01]` is "parameter $1 was not provided", and one not using it
"parameter value for $01 was not used". The proxy read `01` as `$1`, sent the engine
`params[1]` and served the rows. It now sends the keys as the client wrote them, so the engine
answers its own 400 (located in the client's text when the rule ANDs its filter on).

Each request straight to the engine (with its secret) and through the proxy as a member
(whose rule ANDs `org_id = {{org_id}}` onto the client's clause) and as an admin (the client's
clause checked and sent alone): status, the headers a client reads and the body must be the
engine's. Real path: proxy -> `sync-engine` -> PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_transparency_fuzz_real import _comparable
from tests.support.engine_process import EngineProcess

TAILS = [
    "where=" + quote("id = $1") + "&params%5B01%5D=1",
    "where=" + quote("id = $1") + "&params[01]=1",
    "where=" + quote("id = 1") + "&params[01]=1",
    "where=" + quote("id = $1") + "&params[0000000001]=1",
    "where=" + quote("id = $1 OR id = $2") + "&params[01]=1&params[2]=2",
    "where=" + quote("id = $1 OR id = $2") + "&params[1]=1&params[02]=2",
    "where=" + quote("id = $01") + "&params[01]=1",
    "where=" + quote("id = $1") + "&params[%2B1]=1",
    "where=" + quote("id = $1") + "&params[1]=1&params[01]=1",
    "log=changes_only&subset__where=" + quote("id = $1") + "&subset__params[01]=1",
    "log=changes_only&subset__where=" + quote("id = $1") + "&subset__params="
    + quote('{"01":"1"}'),
]  # fmt: skip


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1')",
    )


async def test_a_zero_padded_param_key_gets_the_engines_answer(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    for rule in config["tables"]["items"]["allow"]:
        rule["subset"] = True
    config["upstream"].update(first_byte_timeout=10)
    config["cors"] = {"allow_origins": ["*"]}  # (the engine's own CORS answer)
    proxy = await make_proxy(build_config(config, environ))
    tokens = {
        "member": proxy.tokens.make(org_id="org-a"),
        "admin": proxy.tokens.make(role="admin"),
    }
    differences = []
    async with aiohttp.ClientSession() as session:
        for tail in TAILS:
            path = f"/v1/shape?table=items&offset=-1&{tail}"
            async with session.get(f"{engine.url}{path}&secret={proxy.secret}") as resp:
                body = await resp.read()
                straight = _comparable(resp.status, resp.headers, body, "GET"), body
            assert resp.status == 400, (tail, body)
            for who, token in tokens.items():
                reply = await proxy.get(path, token=token)
                through = _comparable(reply.status, reply.headers, reply.body, "GET"), reply.body
                if through != straight:
                    differences.append((tail, who, straight[1], through[1]))
        # A subset in a POST body, `{"01": ...}` (the engine's own test's request).
        async with session.get(
            f"{engine.url}/v1/shape?table=items&offset=-1&secret={proxy.secret}"
        ) as resp:
            handle = resp.headers["electric-handle"]
        subset = json.dumps({"where": "id = $1", "params": {"01": "1"}})
        path = f"/v1/shape?table=items&offset=-1&handle={handle}"
        headers = {"Content-Type": "application/json"}
        async with session.post(
            f"{engine.url}{path}&secret={proxy.secret}", data=subset, headers=headers
        ) as resp:
            body = await resp.read()
            assert resp.status == 400, body
            assert json.loads(body)["errors"]["subset"]["where"] == [
                "At location 5: parameter $1 was not provided"
            ]
            straight = _comparable(resp.status, resp.headers, body, "POST"), body
        reply = await proxy.request(
            "POST", path, token=tokens["admin"], data=subset.encode(), headers=headers
        )
        through = _comparable(reply.status, reply.headers, reply.body, "POST"), reply.body
        if through != straight:
            differences.append(("POST subset", "admin", straight[1], through[1]))
    for tail, who, engine_body, proxy_body in differences:
        print(tail, who, engine_body, proxy_body, sep="\n  ")
    assert differences == []
