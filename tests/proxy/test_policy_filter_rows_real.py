"""A policy filter that Postgres cannot evaluate over the table's rows is the policy's 400,
never the engine's `errors.where` about a where the client never sent.

A rule `abs(i4) < {{n}}` on a table with a row whose i4 is -2147483648 (abs overflows), and a
token with `"n": 1`, no client where: the engine's snapshot fails, and its 400
`{"errors":{"where":["Postgres could not evaluate the query over the table's rows: numeric
value out of range (SQLSTATE 22003)"]}}` reached the client. No location, so e6b14b1's blame
left it: it blamed a where the client did not write, and told that some row (perhaps one it
may not see) holds a value that overflows (where's fuzz, 12:35: 22 of 3,000). With no client
where, the where the engine judged is the policy's filter alone: now 400
`policy_filter_refused` naming the rule only, on GET and HEAD. With a client where the
failure may be the client's clause's (it runs on admitted rows): the engine's answer stays.
Real proxy, engine and Postgres.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
REFUSAL = {
    "message": "the proxy's policy rule 'abs' has a filter the sync engine refuses for this "
    "table: no request of this rule can be served until the proxy's configuration is mended "
    "(its log says why)",
    "code": "policy_filter_refused",
}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, i4 int)",
        "INSERT INTO items VALUES (1, 1), (2, -2147483648)",
    )


async def test_a_filter_failing_on_the_rows_is_the_policys_400(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"]["items"] = {
        "allow": [
            {
                "name": "abs",
                "when": {"role": "abs"},
                "where": "abs(i4) < {{n}}",
                "client_where": "validated",
            },
            {"name": "plain", "when": {"role": "plain"}, "where": "i4 < {{n}}"},
        ]
    }
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make(role="abs", n=1)
    for target in (SHAPE, SHAPE + "&params%5B1%5D=5"):  # (params without a where: ignored)
        reply = await proxy.get(target, token=token)
        assert (reply.status, reply.json()) == (400, REFUSAL), reply.body
        head = await proxy.request("HEAD", target, token=token)
        assert head.status == 400
    # a filter Postgres evaluates over the same rows: served as before
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(role="plain", n=5))
    assert reply.status == 200
    assert {m["value"]["id"] for m in reply.json() if "value" in m} == {"1", "2"}
    # with a client where, the failure may be its clause's: still the engine's answer
    reply = await proxy.get(SHAPE + "&where=id%20%3E%200", token=token)
    assert reply.status == 400
    assert "where" in reply.json().get("errors", {}), reply.body
