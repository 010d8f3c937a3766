"""A secret a client puts in the URL is masked in the log whatever its spelling (real proxy,
real engine and Postgres).

sources 13:46: `secret=` was masked but `secret[]=` and `offset=-1;secret=` were logged as
sent. A query parser may read any of these spellings as the secret (brackets dropped, `;` as a
separator, the name percent-encoded or in capitals), so the log masks every value named like a
secret, in the access line's `query` field, its message, and the JSON and text lines.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.config.loader import build_config
from proxy.logs import JsonFormatter, TextFormatter
from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

CLIENT_SECRET = "clientheldsecret7c0ffee"

engine_secret, engine = shared_engine_fixtures(
    "p2spellings",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a')",
    args=("--long-poll-timeout", "1"),
)

SPELLINGS = [
    "&secret[]={s}",
    ";secret={s}",
    "&SECRET={s}",
    "&%73ecret={s}",
    "&secret%5B%5D={s}",
    "&secret=x&secret={s}",
    "&source_secret[0]={s}",
    "&Api-Secret={s}",
    "&access_token[]={s}",
    ";token={s}",
    "&my_api_key={s}",
    "&password={s}",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_secret_in_any_spelling_is_never_logged(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
    spelling: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make()
    tail = spelling.format(s=CLIENT_SECRET)
    statuses = []
    for query in (
        f"table=items&offset=-1{tail}",  # served (or the engine's 400 for `;`)
        f"table=nosuch&offset=-1{tail}",  # refused by the policy
        f"table=items&offset=bogus{tail}",  # refused as a bad offset
    ):
        reply = await proxy.raw_get(f"/v1/shape?{query}", token)
        assert CLIENT_SECRET not in reply.body.decode() + repr(list(reply.headers.items()))
        statuses.append(reply.status)
    access = [r for r in caplog.records if r.name == "proxy.access"]
    assert [r.status for r in access] == statuses  # type: ignore[attr-defined]
    assert any("[REDACTED]" in r.query for r in access)  # type: ignore[attr-defined]
    for record in caplog.records:
        for formatter in (JsonFormatter(), TextFormatter()):
            line = formatter.format(record)
            assert CLIENT_SECRET not in line, line
    for record in access:
        assert CLIENT_SECRET not in record.query, record.query  # type: ignore[attr-defined]


async def test_ordinary_parameters_are_logged_as_sent(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The mask is by name: a shape's own parameters stay readable in the log."""
    caplog.set_level(logging.DEBUG)
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    reply = await proxy.raw_get(
        "/v1/shape?table=items&offset=-1&where=id%20%3D%20%241&params[1]=1",
        proxy.tokens.make(),
    )
    assert reply.status == 200, reply.body
    (record,) = [r for r in caplog.records if r.name == "proxy.access"]
    assert record.query == "table=items&offset=-1&where=id = $1&params[1]=1"  # type: ignore[attr-defined]
