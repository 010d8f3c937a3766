"""`shape-proxy explain` says what the proxy does with a request: the same status as the real
proxy (in front of a real engine) gives the same request from a token with the same claims.

Explain skipped the proxy's UTF-8 check of the raw query (attack 05:30): for `where=%FF` it
reported a 403 `column_not_allowed` about a column named U+FFFD, and for a `params[1]` of
`%ED%A0%80` (a surrogate's bytes) an allowed request with an upstream URL, where the proxy
answers the engine's 400 "is not valid UTF-8". It skipped the engine's own parameter checks
too, which the proxy runs before its policy.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import build_config
from proxy.explain import explain
from tests.proxy.real_proxies import ITEMS_SQL, items_config
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
QUERIES = (
    SHAPE,
    SHAPE + "&where=%FF",
    SHAPE + "&where=title%3D%241&params%5B1%5D=%ED%A0%80",
    SHAPE + "&where=title%3D%27%C3%A9%27",
    SHAPE + "&columns=%FF",
    "/v1/shape?offset=-1",
    "/v1/shape?table=items&offset=x",
    "/v1/shape?table=items&offset=-1&live=true",
    SHAPE + "&where=salary%3E1",
    "/v1/shape/?table=items&offset=-1",
    "/v1/%73hape?table=items&offset=-1",
    "/v1/shape%2F?table=items&offset=-1",
)


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(*ITEMS_SQL)


async def test_explain_answers_as_the_proxy(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    loaded = build_config(items_config(engine, idp_server), environ)
    proxy = await make_proxy(loaded)
    claims = {"sub": "user-1", "role": "member", "org_id": "org-a"}
    token = proxy.tokens.make(**claims)
    wrong = []
    for url in QUERIES:
        reply = await proxy.raw_get(url, token)
        report = await explain(loaded, url, token=None, claims=claims)
        said = 200 if report["allowed"] else report["status"]
        if said != reply.status:
            wrong.append((url, reply.status, reply.body[:100], said, report.get("reason")))
    assert not wrong
