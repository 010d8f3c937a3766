"""A `client_where: passthrough` clause is forwarded as written, so the proxy reads it for
subqueries (each table one must be a table the caller may sync whole). That read parsed the
whole clause into pglast's tree whenever its text held "select" or "table", a string literal
being enough: ~1 µs a byte of the proxy's loop before admission, 40 such 62 KB requests
stalled every other client ~6 s (attack, 2026-12-05). A clause longer than the validated
limit is now scanned (several times cheaper) and parsed only for a real subquery, which it
refuses. Real tokens, proxy, engine and Postgres.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from proxy.config.loader import build_config
from proxy.policy.sql import MAX_CLAUSE_LENGTH
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        "CREATE TABLE audit (id int PRIMARY KEY, secret text)",
        "INSERT INTO items VALUES (1, 'select'), (2, 'b'), (3, 'table')",
    )


def _shape(where: str) -> str:
    return f"/v1/shape?table=items&offset=-1&where={quote(where)}"


async def test_passthrough_clauses_are_read_for_subqueries_at_bounded_cost(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"] = {
        "items": {
            "allow": [{"when": {"role": "member"}, "all_rows": True, "client_where": "passthrough"}]
        },
        "audit": {"allow": [{"when": {"role": "admin"}, "all_rows": True}]},
    }
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make()
    # Long enough that it is over the limit; each arm matches no row.
    tail = " OR ".join(f"id = {1000 + i}" for i in range(MAX_CLAUSE_LENGTH // 10))
    assert len(tail) > MAX_CLAUSE_LENGTH

    # The words only in string literals: no subquery, forwarded, the engine's rows.
    reply = await proxy.get(_shape(f"title IN ('select', 'table') OR {tail}"), token=token)
    assert reply.status == 200, reply.body[:300]
    assert {m["value"]["id"] for m in reply.json() if "value" in m} == {"1", "3"}

    # A real subquery in a long clause: refused, in words that say why.
    reply = await proxy.get(_shape(f"id IN (SELECT id FROM audit) OR {tail}"), token=token)
    assert (reply.status, reply.json()["code"]) == (400, "subquery_too_long")
    assert str(MAX_CLAUSE_LENGTH) in reply.json()["message"]
    reply = await proxy.get(_shape(f"id IN (TABLE audit) OR {tail}"), token=token)
    assert (reply.status, reply.json()["code"]) == (400, "subquery_too_long")

    # A short one is still read: a table the caller may not sync is a 403.
    reply = await proxy.get(_shape("id IN (SELECT id FROM audit)"), token=token)
    assert (reply.status, reply.json()["code"]) == (403, "subquery_not_allowed")


async def test_an_unqualified_catalog_name_in_a_subquery_is_the_catalogs(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """Postgres reads an unqualified name in `pg_catalog` first (the engine's sessions:
    `search_path = pg_catalog, pg_temp`): `pg_authid` alone is `pg_catalog.pg_authid`. The
    check read it as `public.pg_authid`, which a `public.*` rule serves, so the clause went
    to the engine (refused there only because it reads no subquery yet; attack 08:15, latent
    HIGH: role password hashes once it does). Spelt out, it was refused already."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    auditor = {"when": {"role": "auditor"}, "all_rows": True, "client_where": "passthrough"}
    config["tables"] = {"items": {"allow": [auditor]}, "public.*": {"allow": [auditor]}}
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make(role="auditor")
    for where in (
        "title IN (SELECT rolname::text FROM pg_authid)",
        "title IN (SELECT rolname::text FROM pg_catalog.pg_authid)",
        "EXISTS (SELECT 1 FROM pg_settings)",
    ):
        reply = await proxy.get(_shape(where), token=token)
        assert (reply.status, reply.json()["code"]) == (403, "subquery_not_allowed"), where
    # A table of its own schema, unqualified, is still public's: the engine's answer.
    reply = await proxy.get(_shape("id IN (SELECT id FROM audit)"), token=token)
    assert reply.status == 400 and "subquer" in reply.body.decode().lower(), reply.body
