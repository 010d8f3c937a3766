"""A validated client clause (a rule's `client_where: validated`, and every subset clause) is
parsed and checked on the proxy's event loop, so its length is capped (`MAX_CLAUSE_LENGTH`)
where the engine takes up to its request line. Real apps hit the cap with key lists
(`id IN (1, 2, ...)` of a loaded page's ids): the refusal says what to send instead, one
array parameter, and that answer is the rows the engine gives for the long list. Real tokens,
proxy, engine and Postgres.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from proxy.config.loader import build_config
from proxy.policy.sql import MAX_CLAUSE_LENGTH
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess


def _ids(reply_json: list[dict[str, Any]]) -> set[str]:
    return {m["value"]["id"] for m in reply_json if "value" in m}


async def test_a_long_key_list_is_refused_with_the_way_to_send_it(
    start_engine: Any, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    engine: EngineProcess = start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        "INSERT INTO items SELECT i, 't' || i FROM generate_series(1, 3000) AS i",
    )
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"] = {
        "items": {
            "allow": [{"when": {"role": "member"}, "all_rows": True, "client_where": "validated"}]
        }
    }
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make()
    keys = list(range(2, 2400, 2))  # 1,199 keys
    in_list = "id IN (" + ",".join(map(str, keys)) + ")"
    assert MAX_CLAUSE_LENGTH < len(in_list) < 10_000 - 200  # (the engine takes it in a GET)

    reply = await proxy.get(f"/v1/shape?table=items&offset=-1&where={quote(in_list)}", token=token)
    assert (reply.status, reply.json()["code"]) == (400, "where_too_long")
    assert "id = ANY($1)" in reply.json()["errors"]["where"][0], reply.json()

    # What it says to send instead: the same rows as the engine's answer to the long list.
    array = "{" + ",".join(map(str, keys)) + "}"
    reply = await proxy.get(
        f"/v1/shape?table=items&offset=-1&where={quote('id = ANY($1)')}"
        f"&params%5B1%5D={quote(array)}",
        token=token,
    )
    assert reply.status == 200, reply.body[:300]
    async with aiohttp.ClientSession() as session:
        secret = f"&secret={quote(engine.secret)}" if engine.secret else ""
        async with session.get(
            f"{engine.url}/v1/shape?table=items&offset=-1&where={quote(in_list)}{secret}"
        ) as direct:
            assert direct.status == 200
            direct_rows = _ids(await direct.json())
    assert _ids(reply.json()) == direct_rows == {str(k) for k in keys}
