"""What the engine refuses in a client's clause, a member is refused too, in the engine's words.

Against the real engine and Postgres: each request goes straight to the engine (with its
secret) and through the proxy as a member whose rule filters rows and hides `salary`; where
the policy does not narrow the request, both must answer the same status and errors.

Found: the proxy read a client's where with pglast and kept only its WHERE part, so
`where=id > 0 ORDER BY salary` (an ORDER BY the engine refuses, on a hidden column, never
checked) was served as `id > 0`: a 200 where the engine answers 400. And a subset's
ORDER BY took expressions (casts, operators, COLLATE...) the engine then refused in other
words, or refused them in the proxy's words ("FuncCall is not allowed in a client clause").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

REFUSED = [
    ("where", "id > 0 ORDER BY 1"),
    ("where", "true ORDER BY salary"),
    ("where", "id > 0 ORDER BY (SELECT 1)"),
    ("subset__where", "id > 0 ORDER BY title"),
    ("subset__order_by", "*"),
    ("subset__order_by", "id::int2"),
    ("subset__order_by", "id + 1"),
    ("subset__order_by", "$1"),
    ("subset__order_by", "id, $2"),
    ("subset__order_by", "2 DESC"),
    ("subset__order_by", "id USING <"),
    ("subset__order_by", "id LIMIT 1"),
    ("subset__order_by", "id ORDER BY id"),
    ("subset__order_by", "lower(title)"),
    ("subset__order_by", "(SELECT 1)"),
    ("subset__order_by", 'title COLLATE "C"'),
    ("subset__order_by", "items.id"),
    ("subset__order_by", "CASE WHEN id > 1 THEN 1 END"),
    ("subset__order_by", "id; SELECT 1"),
]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, salary int)",
        "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-b' ELSE 'org-a' END,"
        " 't' || i, i FROM generate_series(1, 10) i",
    )


async def test_a_members_clause_is_refused_as_the_engine_refuses_it(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    differences = []
    async with aiohttp.ClientSession() as session:
        for name, value in REFUSED:
            path = f"/v1/shape?table=items&offset=-1&{name}={quote(value)}"
            async with session.get(f"{engine.url}{path}&secret={proxy.secret}") as resp:
                straight = (resp.status, await resp.json())
            reply = await proxy.get(path, token=member)
            # (the whole body: an ORDER BY refused in the engine's words had the proxy's
            # `"code":"invalid_order_by"` added, transparency 19:52)
            through = (reply.status, reply.json())
            assert straight[0] == 400, (name, value, straight)
            if through != straight:
                differences.append((name, value, straight, through))
    assert differences == []

    # A plain ORDER BY column the rule hides is still a 403, as a where's is.
    hidden = await proxy.get(
        "/v1/shape?table=items&offset=-1&subset__order_by=salary%20DESC", token=member
    )
    assert hidden.status == 403 and hidden.json()["code"] == "column_not_allowed"
    # ... and says which columns would do: a typo and a hidden column read alike without it
    assert "the rule shows: id, org_id, title" in hidden.json()["message"], hidden.json()
    # And what the engine accepts the proxy passes: plain columns, directions, NULLS.
    reply = await proxy.get(
        "/v1/shape?table=items&offset=-1&subset__limit=2&subset__order_by="
        + quote('"id" DESC NULLS LAST, title ASC NULLS FIRST'),
        token=member,
    )
    assert reply.status == 200, reply.body
    assert [m["value"]["id"] for m in reply.json()["data"]] == ["9", "7"]
