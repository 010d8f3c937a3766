"""COLLATE through the proxy, against the real engine and Postgres.

The engine evaluates `COLLATE "C"`, `"POSIX"`, `"default"` and `ucs_basic` (refusing the
others in its own words, with the table known); the proxy refused every COLLATE: in a
client's where and subset where ("CollateClause is not allowed in a client clause", a 400
the engine never gives), and in a policy's filter at load. Now a client's clause with COLLATE
goes to the engine, which decides; a policy filter may use `COLLATE "C"` and `"POSIX"`,
exact on any database; and every answer is Postgres's own rows, within the policy.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from proxy.config.loader import ConfigError, build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, apply_messages

#: Titles whose order differs by collation (case, accents) under most locales.
TITLES = ["apple", "Apple", "banana", "Banana", "éclair", "Zebra", "zebra", "_x", None]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    values = ", ".join(
        f"({i}, '{'org-a' if i % 2 else 'org-b'}', {'NULL' if t is None else repr(t)}, {i})"
        for i, t in enumerate(TITLES * 2, start=1)
    )
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, salary int)",
        f"INSERT INTO items VALUES {values}",
    )


def _rows(conn: psycopg.Connection[Any], where: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(f"SELECT id, org_id, title FROM items WHERE {where}").fetchall()
    return {str(i): {"id": str(i), "org_id": o, "title": t} for i, o, t in rows}


async def _shape(proxy: Any, token: str, query: str) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    url = f"/v1/shape?table=items{query}&offset=-1"
    for _ in range(20):
        reply = await proxy.get(url, token=token)
        assert reply.status == 200, (query, reply.status, reply.body)
        apply_messages(rows, reply.json())
        if "electric-up-to-date" in reply.headers:
            return {value["id"]: value for value in rows.values()}
        handle, offset = reply.headers["electric-handle"], reply.headers["electric-offset"]
        url = f"/v1/shape?table=items{query}&handle={handle}&offset={offset}"
    raise AssertionError(f"never up to date: {query}")


CLAUSES = [
    "title COLLATE \"C\" > 'Banana'",
    "title COLLATE \"POSIX\" < 'a'",
    "title COLLATE pg_catalog.\"C\" BETWEEN 'A' AND 'a'",
    "upper(title COLLATE \"C\") >= 'B'",
    "title > 'B' COLLATE \"C\"",
]


async def test_a_clients_collate_reaches_the_engine_within_the_policy(
    engine: EngineProcess, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    with psycopg.connect(db_url, autocommit=True) as conn:
        for clause in CLAUSES:
            expected = _rows(conn, f"org_id = 'org-a' AND ({clause})")
            assert expected, clause  # (the clause selects some of the member's rows)
            assert await _shape(proxy, member, f"&where={quote(clause)}") == expected, clause
            reply = await proxy.get(
                f"/v1/shape?table=items&offset=-1&subset__where={quote(clause)}", token=member
            )
            assert reply.status == 200, (clause, reply.body)
            got = {m["value"]["id"]: m["value"] for m in reply.json()["data"]}
            assert got == expected, clause

    # A hidden column under COLLATE is still a hidden column.
    hidden = await proxy.get(
        "/v1/shape?table=items&offset=-1&where=" + quote("salary::text COLLATE \"C\" > '1'"),
        token=member,
    )
    assert hidden.status == 403, hidden.body
    # What the engine refuses, it refuses in its own words, through the proxy as straight.
    for query in (
        "&where=" + quote("title COLLATE \"en_US\" > 'a'"),
        "&subset__order_by=" + quote('title COLLATE "C"'),
    ):
        straight = await _engine_get(
            engine, proxy.secret, f"/v1/shape?table=items&offset=-1{query}"
        )
        through = await proxy.get(f"/v1/shape?table=items&offset=-1{query}", token=member)
        assert straight[0] == through.status == 400, (query, straight, through.body)
        assert through.json()["errors"] == straight[1]["errors"], query


async def _engine_get(engine: EngineProcess, secret: str, path: str) -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{engine.url}{path}&secret={secret}") as resp:
            return resp.status, await resp.json()


async def test_a_policy_filter_may_use_collate_c_and_posix(
    engine: EngineProcess, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    member_rule = config["tables"]["items"]["allow"][1]
    assert member_rule["name"] == "member"
    member_rule["where"] = (
        'org_id COLLATE "C" = {{org_id}} AND title COLLATE pg_catalog."POSIX" >= \'Z\''
    )
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    with psycopg.connect(db_url, autocommit=True) as conn:
        enforced = "org_id = 'org-a' AND title COLLATE \"C\" >= 'Z'"
        expected = _rows(conn, enforced)
        assert expected
        assert await _shape(proxy, member, "") == expected
        clause = "title COLLATE \"C\" < 'b'"
        got = await _shape(proxy, member, f"&where={quote(clause)}")
        assert got == _rows(conn, f"{enforced} AND ({clause})")


@pytest.mark.parametrize("collation", ['"en_US"', '"default"', "ucs_basic", 'other."C"'])
def test_a_policy_filter_with_another_collation_is_refused_at_load(
    environ: dict[str, str], collation: str
) -> None:
    config = base_config("http://127.0.0.1:1", "https://idp.test/jwks.json")
    config["tables"]["items"]["allow"][1]["where"] = (
        f"org_id = {{{{org_id}}}} AND title COLLATE {collation} > 'a'"
    )
    with pytest.raises(ConfigError, match='only COLLATE "C" and "POSIX" are') as caught:
        build_config(config, environ)
    assert "is not supported in a policy filter" in str(caught.value)
