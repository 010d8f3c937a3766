"""A client where whose string constant goes on after a `--` comment and a newline, through
the proxy as straight to the engine.

`title = 'a' -- c<newline>'1'` is `title = 'a1'` to Postgres 15 (its scanner reads the
comment as whitespace before the newline that continues the constant) and to the engine
(`sync_engine.shapes.where.parse.blank_line_comments`, w-faults 2ec00c1). The proxy parsed
the client's text with pglast as written: a 400 "syntax error at or near '1'" through the
proxy where the engine served the rows (wherefuzz 02:12, transparency).

Real path: proxy -> `sync-engine` -> PostgreSQL. As an admin (the clause checked and sent
alone) the body is the engine's byte for byte; as a member (the clause ANDed onto
`org_id = {{org_id}}`) it is the rows the engine gives for the same clause narrowed to the
member's org; and both are the rows Postgres itself selects.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

CLAUSES = [
    "title = 'a' -- c\n'1'",
    "title = 'a'\n-- c\n'1'",
    "title IN ('a' -- é\n'1', 'zz')",
    "title LIKE 'a' -- c\n'%' -- trailing",
]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'a1'), (3, 'org-a', 'a'),"
        " (4, 'org-a', '1'), (5, 'org-a', 'b1')",
    )


def _ids(body: bytes) -> set[int]:
    return {int(m["value"]["id"]) for m in json.loads(body) if "value" in m}


async def test_a_comment_inside_a_continued_string_is_read_as_the_engine_reads_it(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    config["cors"] = {"allow_origins": ["*"]}  # (the engine's own CORS answer)
    proxy = await make_proxy(build_config(config, environ))
    admin = proxy.tokens.make(role="admin")
    member = proxy.tokens.make(role="member", org_id="org-a")
    with psycopg.connect(engine.db_url) as conn:
        own = {r[0] for r in conn.execute("SELECT id FROM items WHERE org_id = 'org-a'")}
        selected = {
            clause: {r[0] for r in conn.execute(f"SELECT id FROM items WHERE {clause}")}
            for clause in CLAUSES
        }
    async with aiohttp.ClientSession() as session:
        for clause in CLAUSES:
            path = f"/v1/shape?table=items&offset=-1&where={quote(clause)}"
            async with session.get(f"{engine.url}{path}&secret={proxy.secret}") as resp:
                body = await resp.read()
            assert resp.status == 200 and _ids(body) == selected[clause] != set(), (clause, body)
            reply = await proxy.get(path, token=admin)
            assert (reply.status, reply.body) == (200, body), (clause, body, reply.body)
            narrowed = await proxy.get(path, token=member)
            assert narrowed.status == 200, (clause, narrowed.body)
            assert _ids(narrowed.body) == selected[clause] & own, (clause, narrowed.body)
