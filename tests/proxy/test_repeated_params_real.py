"""A parameter given twice never lets a member past its policy: real proxy, engine, Postgres.

A repeated parameter takes its last value, as Electric (Plug's query decoding) and the
engine read it. The proxy rebuilds the engine's URL from what it parsed, so the engine can
only read what the policy checked; this guards that under a restrictive policy (members see
their org's rows and three columns) for every parameter that shapes the rows, repeated,
repeated under another spelling of its name, and beside a POST body. Each answer is a
refusal (400, or the policy's 403 for the last value) or rows of the member's org and
columns only, and the last value is the one read (a repeated `subset__params[n]` was read
as its first value).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from proxy.config.loader import build_config
from proxy.http.params import parse_shape_query
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

ORG_B = quote("org_id = 'org-b'")
SHAPE = "/v1/shape?offset=-1"
REPEATS = [
    f"{SHAPE}&table=items&table=other",
    f"{SHAPE}&table=other&table=items",
    f"{SHAPE}&table=items&where={ORG_B}&where=true",
    f"{SHAPE}&table=items&where=true&where={ORG_B}",
    f"{SHAPE}&table=items&wh%65re={ORG_B}&where=true",
    f"{SHAPE}&table=items&where=true&WHERE={ORG_B}",
    f"{SHAPE}&table=items&columns=id,salary&columns=id,title",
    f"{SHAPE}&table=items&columns=id,title&columns=id,salary",
    f"{SHAPE}&table=items&columns=id,title&%63olumns=id,salary",
    f"{SHAPE}&table=items&replica=full&replica=default",
    f"{SHAPE}&table=items&where=org_id%3D%241&params[1]=org-a&params[1]=org-b",
    f"{SHAPE}&table=items&where=org_id%3D%241&params[1]=org-a&params%5B1%5D=org-b",
    f"{SHAPE}&table=items&subset__where={ORG_B}&subset__where=true",
    f"{SHAPE}&table=items&subset__where=org_id%3D%241"
    "&subset__params[1]=org-a&subset__params[1]=org-b",
    f"{SHAPE}&table=items&subset__where=org_id%3D%241"
    "&subset__params[1]=org-b&subset__params%5B1%5D=org-a",
    f"{SHAPE}&table=items&subset__where=true&subset__params=%7B%7D&subset__params=%5B%5D",
]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, salary int)",
        "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-b' ELSE 'org-a' END,"
        " 't' || i, i * 100 FROM generate_series(1, 6) i",
        "CREATE TABLE other (id int PRIMARY KEY, secret text)",
        "INSERT INTO other VALUES (1, 'hidden')",
    )


def _rows(body: bytes) -> list[dict[str, Any]]:
    answer = json.loads(body)
    messages = answer["data"] if isinstance(answer, dict) else answer
    return [m["value"] for m in messages if "value" in m]


async def test_a_repeated_parameter_never_widens_a_policy(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"]["items"]["allow"][1]["subset"] = True
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(sub="alice", org_id="org-a")
    for target in REPEATS:
        reply = await proxy.get(target, token=member)
        assert reply.status in (200, 400, 403), (target, reply.status, reply.body)
        if reply.status == 200:
            for row in _rows(reply.body):
                # (org-a's rows are the odd ids)
                assert int(row["id"]) % 2 == 1 and set(row) <= {"id", "org_id", "title"}, (
                    target,
                    row,
                )
    # The subset param the engine reads is the last one: org-b's rows (none for a member).
    reply = await proxy.get(REPEATS[-3], token=member)
    assert reply.status == 200 and _rows(reply.body) == [], reply.body
    reply = await proxy.get(REPEATS[-2], token=member)
    assert reply.status == 200 and {r["org_id"] for r in _rows(reply.body)} == {"org-a"}
    # A POST body's subset where replaces the URL's: the policy's filter still applies.
    reply = await proxy.request(
        "POST",
        f"{SHAPE}&table=items&subset__where=true",
        token=member,
        headers={"Content-Type": "application/json"},
        data=b'{"where": "true", "subset": {"where": "org_id = \'org-b\'"}}',
    )
    assert reply.status in (200, 400), reply.body
    if reply.status == 200:
        assert all(row["org_id"] == "org-a" for row in _rows(reply.body)), reply.body


def test_the_last_value_is_the_one_read() -> None:
    request = parse_shape_query(
        [("table", "a"), ("table", "b"), ("offset", "-1"), ("offset", "0_0"), ("where", "x"),
         ("where", "id > $1"), ("params[1]", "a"), ("params[1]", "b"), ("live", "true"),
         ("live", "false")]
    )  # fmt: skip
    assert (request.table, request.where, dict(request.params)) == ("b", "id > $1", {1: "b"})
    assert dict(request.protocol)["offset"] == "0_0" and not request.live
