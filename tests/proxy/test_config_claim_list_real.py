"""A token claim that is a JSON list, used by a rule where its filter compares one value.

`org_id = {{org}}` with a token whose `org` is `["org-a", "org-b"]` was bound as the array
literal `{"org-a","org-b"}` and compared with `org_id` as one text: no row has that org, so
the user got a 200 with no rows, as if it had no data, where docs/proxy-claims.md promises a
403 `claim_unusable` for a claim a filter cannot use (config probe, 2026-12-07). Lists are
for where the filter reads an array (`= ANY({{orgs}})`, `{{orgs}}::text[]`, `&&`): those keep
serving. Real path: the rule written in a YAML file loaded by `load_config`, the proxy in
front of a real `sync-engine` and Postgres.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import Forbidden
from proxy.policy.evaluate import _param_from_claim
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
LIST = ["org-a", "org-b"]

#: rule filter -> the ids a token with `org: LIST` gets (None: 403 claim_unusable)
CASES: dict[str, set[int] | None] = {
    "org_id = {{org}}": None,
    "org_id IN ({{org}}, 'org-c')": None,
    "org_id <> {{org}}": None,
    "{{org}} = ANY(tags)": None,
    "org_id = {{org}}::text": None,
    "org_id = ANY({{org}})": {1, 2},
    "org_id = ANY({{org}}::text[])": {1, 2},
    "tags && {{org}}": {1, 2},
    "tags = {{org}}::text[]": {2},
}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, tags text[])",
        "INSERT INTO items VALUES (1, 'org-a', '{org-a}'), (2, 'org-b', '{org-a,org-b}'),"
        " (3, 'org-c', '{org-c}'), (4, '{\"org-a\",\"org-b\"}', '{}')",
    )


def _ids(reply: Any) -> set[int]:
    return {int(m["value"]["id"]) for m in reply.json() if "value" in m}


def _lists_refused_in_one_value_slots() -> bool:
    """Whether this code has w-proxy 5da42f67 (proxy/policy/evaluate.py is the proxy
    owner's; bugs-for-proxy.md, proxycfg 13:18): without it the one-value cases are expected
    to fail, with it they run as plain tests (the marker then asks nothing)."""
    try:
        _param_from_claim({"o": ["a"]}, "o", single=True)
    except Forbidden:
        return True
    return False


PENDING = pytest.mark.xfail(
    not _lists_refused_in_one_value_slots(),
    strict=True,
    reason="needs w-proxy 5da42f67: a list claim in a one-value slot is 403 claim_unusable",
)


def _id(where: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in where)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(w, id=_id(w), marks=[PENDING] if CASES[w] is None else [])
        for w in sorted(CASES)
    ],
)
async def test_a_list_claim_where_the_filter_compares_one_value_is_refused(
    where: str, engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    quoted = where.replace("'", "''")  # (YAML's single-quoted scalar)
    text = proxy_from_yaml.head(engine.url) + (
        "tables:\n"
        "  items:\n"
        "    allow:\n"
        f"      - where: '{quoted}'\n"
        "        columns: [id, org_id, tags]\n"
    )
    proxy = await proxy_from_yaml(text)
    want = CASES[where]
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(org=LIST))
    if want is None:
        assert reply.status == 403, (reply.status, reply.body)
        body = reply.json()
        assert body["code"] == "claim_unusable", body
        assert "'org'" in body["message"], body
        for hidden in ("org_id", "ANY", "where", "location"):
            assert hidden not in body["message"], body
        head = await proxy.request("HEAD", SHAPE, token=proxy.tokens.make(org=LIST))
        assert head.status == 403
        # one value is served as before
        reply = await proxy.get(SHAPE, token=proxy.tokens.make(org="org-a"))
        assert reply.status == 200, reply.body
    else:
        assert reply.status == 200, reply.body
        assert _ids(reply) == want
