"""A client's filter can never fail on a row the policy hides: no error oracle.

Postgres orders the conjuncts of `enforced AND client` by cost, not by the text, so a client
clause as cheap as the enforced filter used to run first on every row of a sequential scan,
other organisations' rows included. A clause that fails on some values (`id::int2 > 0`
overflows for ids past 32767) then failed the whole snapshot because of a row the member may
not see: a 400 instead of a 200 told whether such a hidden row existed. Here a member of
`org-a` probes for an `org-b` row through the proxy (real engine, real Postgres): the answer
must be the same with the hidden row and without it, and equal to Postgres's own rows for
the member, as a shape's where and as a subset's where.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, apply_messages

#: A filter the planner costs above the probes below (an OR of three equalities).
ENFORCED = "org_id = {{org_id}} OR title = 'public' OR title = 'shared'"
HIDDEN_ID = 40_000  # past int2: `id::int2` fails on this row only

#: Probes that fail on the hidden row alone (each also a plain filter on visible rows).
PROBES = ["id::int2 > 0", "id::int2 <> 7", "(id * 100000)::int4 > 0"]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-b' ELSE 'org-a' END,"
        " CASE WHEN i % 5 = 0 THEN 'public' ELSE 't' || i END FROM generate_series(1, 200) i",
        "ANALYZE items",
    )


def _expected(conn: psycopg.Connection[Any], probe: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, org_id, title FROM items WHERE (org_id = 'org-a' OR title = 'public' OR title = 'shared')"
        f" AND id < {HIDDEN_ID} AND ({probe})"
    ).fetchall()
    return {str(i): {"id": str(i), "org_id": o, "title": t} for i, o, t in rows}


async def _shape(proxy: Any, token: str, probe: str) -> tuple[int, dict[str, Any]]:
    """The shape's rows through the proxy (status, rows by id), followed to up-to-date."""
    rows: dict[str, Any] = {}
    url = f"/v1/shape?table=items&where={quote(probe)}&offset=-1"
    for _ in range(20):
        reply = await proxy.get(url, token=token)
        if reply.status != 200:
            return reply.status, {}
        apply_messages(rows, reply.json())
        if "electric-up-to-date" in reply.headers:
            return 200, {value["id"]: value for value in rows.values()}
        handle, offset = reply.headers["electric-handle"], reply.headers["electric-offset"]
        url = f"/v1/shape?table=items&where={quote(probe)}&handle={handle}&offset={offset}"
    raise AssertionError(f"never up to date: {probe}")


async def _subset(proxy: Any, token: str, probe: str) -> tuple[int, dict[str, Any]]:
    reply = await proxy.get(
        f"/v1/shape?table=items&offset=-1&subset__where={quote(probe)}", token=token
    )
    if reply.status != 200:
        return reply.status, {}
    return 200, {m["value"]["id"]: m["value"] for m in reply.json()["data"]}


async def test_a_filter_that_fails_on_a_hidden_row_answers_as_if_it_were_not_there(
    engine: EngineProcess, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    member_rule = config["tables"]["items"]["allow"][1]
    assert member_rule["name"] == "member"
    member_rule["where"] = ENFORCED
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")

    with psycopg.connect(db_url, autocommit=True) as conn:
        answers: dict[tuple[str, str, bool], tuple[int, dict[str, Any]]] = {}
        for present in (False, True):
            if present:
                conn.execute("INSERT INTO items VALUES (%s, 'org-b', 'secret')", (HIDDEN_ID,))
                conn.execute("ANALYZE items")
            for probe in PROBES:
                # (a fresh shape each time: the probe's own definition plus a no-op term)
                variant = f"{probe} AND {'true' if present else 'id > -1'}"
                answers[("shape", probe, present)] = await _shape(proxy, member, variant)
                answers[("subset", probe, present)] = await _subset(proxy, member, variant)
        for probe in PROBES:
            expected = _expected(conn, probe)
            assert expected, probe  # (the probe does select visible rows)
            for kind in ("shape", "subset"):
                without = answers[(kind, probe, False)]
                with_hidden = answers[(kind, probe, True)]
                assert without == (200, expected), (kind, probe, without)
                assert with_hidden == without, (kind, probe, with_hidden)
