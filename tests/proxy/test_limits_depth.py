"""The proxy's where / ORDER BY check refuses deep nesting with a 400 naming the limit.

Before the depth limit, a 4 KiB clause nested a few hundred levels (`NOT NOT … true`,
`n+1+1…`, `- - - n`) ended in `RecursionError` while deparsing: a 500 with a traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import pytest

from proxy.errors import BadShapeRequest
from proxy.limits.clause import MAX_DEPTH, tree_depth
from proxy.policy.sql import MAX_CLAUSE_LENGTH, check_client_where, check_order_by

#: name -> a clause of the given nesting; all fit in the proxy's length limit.
DEEP = {
    "unary minus": lambda n: "- " * n + "id = 1",
    "NOT": lambda n: "NOT " * n + "true",
    "plus chain": lambda n: "id" + "+1" * n + " = 1",
    "parenthesised right-nested sums": lambda n: "id = " + "(1+" * n + "1" + ")" * n,
    "redundant parentheses": lambda n: "(" * n + "NOT " * 200 + "true" + ")" * n,
    "nested parenthesised NOT": lambda n: "(NOT " * n + "true" + ")" * n,
    "cast chain": lambda n: "id" + "::int" * n + " = 1",
}


def _longest(name: str) -> str:
    """The deepest clause of this kind that still fits in the length limit."""
    n = 1
    while len(DEEP[name](n * 2)) <= MAX_CLAUSE_LENGTH:
        n *= 2
    while len(DEEP[name](n + 1)) <= MAX_CLAUSE_LENGTH:
        n += 1
    return DEEP[name](n)


@pytest.mark.parametrize("name", DEEP)
def test_deep_where_is_a_400_naming_the_limit(name: str) -> None:
    with pytest.raises(BadShapeRequest) as info:
        check_client_where(_longest(name), None, what="where")
    assert info.value.reason == "too_deep"
    assert str(MAX_DEPTH) in info.value.message


@pytest.mark.parametrize("name", ["unary minus", "NOT", "plus chain", "cast chain"])
def test_deep_order_by_is_a_400_naming_the_limit(name: str) -> None:
    clause = _longest(name).removesuffix(" = 1")
    with pytest.raises(BadShapeRequest) as info:
        check_order_by(clause, None, what="subset order_by")
    assert info.value.reason == "too_deep"
    assert str(MAX_DEPTH) in info.value.message


def test_just_under_the_limit_still_works_and_deparses() -> None:
    # Find the deepest plus-chain that is accepted: it must be close to the limit.
    accepted = 0
    for n in range(1, MAX_DEPTH + 5):
        try:
            check_client_where(DEEP["plus chain"](n), None, what="where")
            accepted = n
        except BadShapeRequest as exc:
            assert exc.reason == "too_deep"
            break
    assert MAX_DEPTH - 10 < accepted < MAX_DEPTH
    sql = check_client_where(DEEP["plus chain"](accepted), None, what="where").sql
    assert sql.count("+ 1") == accepted


def test_long_flat_lists_do_not_count_as_depth() -> None:
    """Filters users write: long OR chains and IN lists are flat in the parse tree."""
    ors = " OR ".join(f"id = {i}" for i in range(300))
    assert len(ors) < MAX_CLAUSE_LENGTH
    assert check_client_where(ors, None, what="where").sql.count("OR") == 299
    ins = "id IN (" + ",".join(str(i) for i in range(700)) + ")"
    check_client_where(ins, None, what="where")
    assert tree_depth(None) == 0


@pytest.mark.parametrize(
    ("param", "clause"),
    [
        ("where", "NOT " * 900 + "true"),
        ("where", "- " * 1500 + "id = 1"),
        ("where", "id" + "+1" * 1500 + " = 1"),
        ("subset__where", "NOT " * 900 + "true"),
        ("subset__order_by", "id" + "+1" * 1500),
    ],
)
async def test_deep_clauses_through_the_proxy_are_400s_with_json(
    proxy: Any, param: str, clause: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = proxy.tokens.make(role="admin")
    reply = await proxy.get(f"/v1/shape?table=items&offset=-1&{param}={quote(clause)}", token=token)
    assert reply.status == 400, reply.body
    body = reply.json()
    field = "subset" if param.startswith("subset") else "where"
    assert body["message"] == "Invalid request" and str(MAX_DEPTH) in json.dumps(
        body["errors"][field]
    )
    assert not proxy.engine.requests  # refused before the engine was asked
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_deep_clause_in_a_post_subset_body_is_a_400(proxy: Any) -> None:
    token = proxy.tokens.make(role="admin")
    body = json.dumps({"where": "NOT " * 900 + "true"}).encode()
    reply = await proxy.request(
        "POST",
        "/v1/shape?table=items&offset=-1&log=changes_only",
        token=token,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 400, reply.body
    assert str(MAX_DEPTH) in reply.json()["errors"]["subset"]["where"][0]


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("", b"[" * 60_000),  # json.loads raised RecursionError: a 500
        ("", b'{"params":' + b"[" * 30_000 + b"}"),
        ("&subset__params=" + "%5B" * 2000, None),
    ],
)
async def test_deeply_nested_json_is_a_400(proxy: Any, query: str, body: bytes | None) -> None:
    token = proxy.tokens.make(role="admin")
    method = "POST" if body is not None else "GET"
    reply = await proxy.request(
        method, f"/v1/shape?table=items&offset=-1&log=changes_only{query}", token=token, data=body
    )
    assert reply.status == 400, reply.body
    # the message, or the engine's words under `errors`
    assert b"JSON" in reply.body or b"nested too deeply" in reply.body
