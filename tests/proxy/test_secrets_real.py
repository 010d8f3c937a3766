"""Secrets a client puts in a query never reach a log line or an answer (real proxy, real
engine).

`source_secret` is Electric Cloud's old name for `secret` (the engine still reads it): an
old client configuration sends its source secret in the URL under that name. The proxy drops
the parameter (it sets the engine's credentials itself) but logged it as sent, in the access
line's `query` field and in its text.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.config.loader import build_config
from proxy.logs import JsonFormatter
from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

CLIENT_SECRET = "client-held-secret-5d1f0c"


# One engine for the module's tests (each started its own: ~2 s apiece in CI); none of them
# writes.
engine_secret, engine = shared_engine_fixtures(
    "secrets",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a')",
    args=("--long-poll-timeout", "1"),
)


@pytest.mark.parametrize("name", ["source_secret", "secret", "api_secret", "SOURCE_SECRET"])
async def test_a_secret_in_the_query_is_never_logged(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make()
    for query in (
        f"table=items&offset=-1&{name}={CLIENT_SECRET}",  # served
        f"table=nosuch&offset=-1&{name}={CLIENT_SECRET}",  # refused by the policy
        f"table=items&offset=bogus&{name}={CLIENT_SECRET}",  # refused by the engine
    ):
        reply = await proxy.get(f"/v1/shape?{query}", token=token)
        assert CLIENT_SECRET not in reply.body.decode() + repr(list(reply.headers.items()))
    access = [r for r in caplog.records if r.name == "proxy.access"]
    assert len(access) == 3 and [r.status for r in access] == [200, 403, 400]  # type: ignore[attr-defined]
    formatter = JsonFormatter()
    for record in caplog.records:
        for line in (formatter.format(record), repr(record.__dict__)):
            assert CLIENT_SECRET not in line, line


async def test_an_engine_refusing_the_proxys_secret_is_a_502_not_a_401(
    engine: EngineProcess,
    idp_server: Any,
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong `upstream.secret_env` made every answer the engine's 401: Electric's client
    takes a 401 for its own token (asks the app for a new one and tries again, for ever), and
    nothing told the operator. Now a 502 the client retries later, and an ERROR line."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    wrong = "not-the-engine-secret-" + "x" * 16
    proxy = await make_proxy(build_config(config, {"ENGINE_SECRET": wrong}))
    token = proxy.tokens.make()
    for query in ("table=items&offset=-1", "table=items&offset=-1&subset__where=id>0"):
        reply = await proxy.get(f"/v1/shape?{query}", token=token)
        assert reply.status == 502, reply.body
        assert reply.json()["code"] == "upstream_unauthorized"
        assert reply.headers["Retry-After"] == "2" and reply.headers["Cache-Control"] == "no-store"
        assert "WWW-Authenticate" not in reply.headers
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all("refused the proxy's credentials" in m for m in errors)
    for record in caplog.records:
        assert wrong not in JsonFormatter().format(record)
