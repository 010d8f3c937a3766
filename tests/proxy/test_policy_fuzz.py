"""Seeded fuzzing of query parsing and policy evaluation (pure): whatever a member sends, the
engine URL keeps the member's filter and columns, or the request is a clean 4xx.

Thousands of random query strings (repeated, percent-encoded, case-varied and unknown names;
values with NUL bytes, quotes, comments, breakouts, unicode, huge numbers) are parsed and
evaluated for a member of `org-a`, whose rule enforces `org_id = $1` and hides `salary`.
Every outcome must be either a `ProxyError` with a 4xx status, or an upstream URL that:
has one value per parameter; ends its where with the enforced filter, parenthesised and
ANDed after the client's clause, its `$n` (after the client's params) bound to the member's
own claim; selects only visible columns; carries the
proxy's source id and secret and nothing of the client's; and no NUL byte in what the
engine reads.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import pytest
from pglast import ast, parse_sql
from pglast.enums import BoolExprType
from pglast.stream import RawStream
from yarl import URL

from proxy.config.loader import build_config
from proxy.errors import ProxyError
from proxy.http.params import parse_shape_query
from proxy.policy.evaluate import evaluate
from proxy.policy.sql import _walk
from proxy.upstream.url import build_upstream_url
from tests.proxy.proxy_fakes import base_config

SEED = int(os.environ.get("PROXY_POLICY_FUZZ_SEED", "4242"))
ROUNDS = int(os.environ.get("PROXY_POLICY_FUZZ_ROUNDS", "3000"))
MEMBER = {"sub": "u1", "role": "member", "org_id": "org-a"}
SECRET = "s" * 24

NAMES = [
    "table", "where", "params[1]", "params[2]", "params[01]", "params[0]", "params[x]", "params",
    "columns", "replica", "log", "offset", "handle", "live", "cursor", "live_sse",
    "subset__where", "subset__params", "subset__params[1]", "subset__limit", "subset__offset",
    "subset__order_by", "secret", "source_id", "api_secret", "TABLE", "Where", "table ",
    "params[1]\n", "queryable_columns", "cache-buster", "expired_handle", "x",
]  # fmt: skip
VALUES = [
    "items", "public.items", '"items"', "ITEMS", " items ", "secrets", "public.secrets",
    "other.items", "items\x00", "id > 0", "true) OR (1=1", "1=1 --", "id > 0 /* */",
    "id > 0\x00 OR true", "salary > 0", '"salary" > 0', "org_id = 'org-b'", "org_id = $1",
    "id = $1 OR $2 = $2", "id = $2", "$1", "id,title", "id,salary", 'id,"salary"', "id,id",
    '"ID"', "org-b", "{}", '{"1":"org-b"}', "[1]", "full", "default", "changes_only", "-1",
    "0_0", "now", "99999999999999999999", "-5", "true", "", "\u202e", "'", '"', "\\", "%",
    "id IN (SELECT id FROM secrets)", "(SELECT 1) = 1", "upper(title) = 'A'", "title",
    "salary DESC", "id; DROP TABLE items",
    # sent as written under the enforced filter: comments and quotes must not reach past it
    "id > 0 -- ) OR (true", "id > 0 --", "title = '--'", "id > 0 /* ) OR (true */",
    "title = $$) OR (true$$", "title = E'\\'' OR true --'", "id > 0 --\r", "(id > 0))",
    "id > 0 /* unterminated", "title = U&'\\0041'",
    # COLLATE goes to the engine (which decides which collations it evaluates), columns checked
    'title COLLATE "C" > $1', "salary::text COLLATE \"C\" > '1'", 'id COLLATE "C"',
    "title COLLATE pg_catalog.\"POSIX\" < 'b' -- ) OR (true",
]  # fmt: skip


@pytest.fixture(scope="module")
def policy() -> Any:
    config = base_config("http://engine:3000", "https://idp/jwks.json")
    return build_config(config, {"ENGINE_SECRET": SECRET}).policy


def _query(rng: random.Random) -> list[tuple[str, str]]:
    pairs = [("table", rng.choice(["items", "items", "public.items", '"items"']))]
    pairs += [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randint(0, 6))]
    rng.shuffle(pairs)
    return pairs


def _check(url: URL) -> None:
    query = url.query
    for name in set(query):
        assert len(query.getall(name)) == 1, name
    for name, value in query.items():  # (cache busters are opaque: the engine ignores them)
        assert "\x00" not in value or name in ("cache-buster", "expired_handle"), name
    assert query["table"] == "items"
    assert query["secret"] == SECRET and query["source_id"] == "src-1"
    assert "api_secret" not in query
    where = query["where"]
    # The enforced filter first, its `$k+1` bound to the member's own claim, then the
    # client's clause (its own `$1..$k`) guarded by it (`guarded_and`): reached only for
    # rows the enforced filter admits. No `$n` of the client's reaches that param.
    numbers = sorted(int(name[7:-1]) for name in query if name.startswith("params["))
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    enforced = len(numbers)
    assert query[f"params[{enforced}]"] == "org-a"
    if where != "org_id = $1":
        assert where.startswith(f"(org_id = ${enforced}) AND COALESCE("), where
        tree = parse_sql("SELECT 1 WHERE " + where)[0].stmt.whereClause
        assert isinstance(tree, ast.BoolExpr) and tree.boolop == BoolExprType.AND_EXPR, where
        first, guard = tree.args
        assert RawStream()(first) == f"org_id = ${enforced}", where
        assert isinstance(guard, ast.CoalesceExpr) and len(guard.args) == 2, where
        assert RawStream()(guard.args[0]) == f"NULLIF((org_id = ${enforced} IS TRUE), TRUE)", where
        client_refs = [
            node.number for node in _walk(guard.args[1]) if isinstance(node, ast.ParamRef)
        ]
        assert all(1 <= number < enforced for number in client_refs), where
    visible = {'"id"', '"org_id"', '"title"'}
    assert set(query["columns"].split(",")) <= visible
    # (a client's own list narrows the rule's: `queryable_columns=id,title`)
    assert set(query["queryable_columns"].split(",")) <= visible
    assert query.get("replica", "default") == "default"
    for name in ("where", "subset__where", "subset__order_by"):
        assert "salary" not in query.get(name, "")


def test_random_member_requests_keep_the_policy(policy: Any) -> None:
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    for _ in range(ROUNDS):
        pairs = _query(rng)
        try:
            decision = evaluate(policy, MEMBER, parse_shape_query(pairs))
        except ProxyError as exc:
            assert 400 <= exc.status < 500, (pairs, exc.status, exc.message)
            outcomes[exc.reason] += 1
            continue
        url = build_upstream_url("http://engine:3000", decision, source_id="src-1", secret=SECRET)
        _check(url)
        outcomes["allowed"] += 1
    assert outcomes["allowed"] > ROUNDS // 10, outcomes  # the fuzz reaches the engine URL
