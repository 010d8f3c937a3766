"""Policy evaluation, query parsing and upstream URL building (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import ConfigError, build_config
from proxy.errors import BadShapeRequest, Forbidden
from proxy.http.params import parse_shape_query, parse_subset_body
from proxy.policy.evaluate import Decision, evaluate, rule_columns_error
from proxy.upstream.url import build_upstream_url, mask_url
from tests.proxy.proxy_fakes import base_config

MEMBER = {"sub": "u1", "role": "member", "org_id": "org-a"}
ADMIN = {"sub": "root", "role": "admin"}


@pytest.fixture
def policy() -> Any:
    return build_config(
        base_config("http://engine:3000", "https://idp/jwks.json"), {"ENGINE_SECRET": "s" * 20}
    ).policy


def decide(policy: Any, query: str, claims: dict[str, Any], **kw: Any) -> Decision:
    from yarl import URL

    return evaluate(policy, claims, parse_shape_query(URL("/?" + query).query.items()), **kw)


def test_member_gets_enforced_filter_and_columns(policy: Any) -> None:
    d = decide(policy, "table=items&offset=-1", MEMBER)
    assert (d.table, d.rule, d.where, d.params) == ("items", "member", "org_id = $1", ("org-a",))
    assert d.columns == ("id", "org_id", "title") == d.queryable_columns
    assert d.protocol == (("offset", "-1"),)


def test_client_where_is_anded_and_renumbered(policy: Any) -> None:
    d = decide(policy, "table=items&offset=-1&where=title ILIKE $1&params[1]=%25x", MEMBER)
    # The client's clause as written with its own $1, reached only for rows the enforced
    # filter (its param after the client's) admits: `guarded_and`.
    assert (
        d.where
        == "(org_id = $2) AND COALESCE(NULLIF((org_id = $2) IS TRUE, true), (title ILIKE $1))"
    )
    assert d.params == ("%x", "org-a")


def test_client_params_cannot_override_enforced(policy: Any) -> None:
    # Without a where, the client's params mean nothing (the engine ignores them): the
    # engine's $1 stays the enforced claim value.
    d = decide(policy, "table=items&offset=-1&params[1]=org-b", MEMBER)
    assert d.where == "org_id = $1" and d.params == ("org-a",)
    # With a where the client's $1 is its own; the enforced one comes after it.
    d = decide(policy, "table=items&offset=-1&where=org_id = $1&params[1]=org-b", MEMBER)
    assert d.params == ("org-b", "org-a")
    assert (
        d.where == "(org_id = $2) AND COALESCE(NULLIF((org_id = $2) IS TRUE, true), (org_id = $1))"
    )


def test_where_breakout_refused(policy: Any) -> None:
    with pytest.raises(BadShapeRequest):
        decide(policy, "table=items&offset=-1&where=1=1) OR (1=1", MEMBER)


def test_client_where_functions_are_the_engines_and_see_only_visible_columns(
    policy: Any,
) -> None:
    d = decide(policy, "table=items&offset=-1&where=lower(title) = 'a' OR abs(id) = 1", MEMBER)
    assert d.where is not None and "(lower(title) = 'a' OR abs(id) = 1)" in d.where
    with pytest.raises(Forbidden) as hidden:  # a hidden column inside a call: still hidden
        decide(policy, "table=items&offset=-1&where=abs(salary) > 0", MEMBER)
    assert hidden.value.reason == "column_not_allowed"
    for call, words in [
        ("pg_read_file('/etc/passwd') = ''", "unknown or unsupported function pg_read_file/1"),
        ("now() > '2020-01-01'", "non-deterministic function now() is not supported"),
        ("pg_catalog.pg_sleep(1) IS NULL", "unknown or unsupported function pg_sleep/1"),
    ]:
        # Refused unless the engine, which knows the columns' types, names another fault of
        # the clause first (the transparency LOW: two faults, the engine's first named)
        refused = decide(policy, f"table=items&offset=-1&where={call}", MEMBER)
        assert refused.unless_engine_refuses is not None, call
        assert words in refused.unless_engine_refuses.message, call
        assert refused.unless_engine_refuses.field == "where"
    # (an ORDER BY list still takes plain columns only: the engine orders by nothing else;
    # refused unless the engine names a fault it checks before)
    ordered = decide(policy, "table=items&offset=-1&subset__order_by=lower(title)", MEMBER)
    assert ordered.unless_engine_refuses is not None
    assert ordered.unless_engine_refuses.message == (  # (in the engine's words)
        "At location 0: FuncCall expressions are not allowed in ORDER BY clauses"
    )


def test_admin_sees_all_rows(policy: Any) -> None:
    d = decide(policy, "table=public.items&offset=-1&replica=full", ADMIN)
    assert d.where is None and d.params == () and d.columns is None and d.replica == "full"


@pytest.mark.parametrize(
    ("query", "claims", "reason"),
    [
        ("table=secrets&offset=-1", MEMBER, "table_not_allowed"),
        ("table=items&offset=-1", {"sub": "x", "role": "guest"}, "no_matching_rule"),
        ("table=items&offset=-1", {**MEMBER, "suspended": True}, "denied_by_rule"),
        ("table=items&offset=-1", {"sub": "x", "role": "member"}, "missing_claim"),
        ('table=items&offset=-1&columns="id","secret"', MEMBER, "column_not_allowed"),
        ("table=items&offset=-1&replica=full", MEMBER, "replica_full_not_allowed"),
        ("table=items&offset=-1&where=salary>1", MEMBER, "column_not_allowed"),
        ("table=items&offset=0_0&handle=h&subset__where=salary>1", MEMBER, "column_not_allowed"),
        ("table=notes&offset=0_0&handle=h&live=true&live_sse=true", MEMBER, "sse_not_allowed"),
        (
            "table=notes&offset=0_0&handle=h&live=true&experimental_live_sse=true",
            MEMBER,
            "sse_not_allowed",
        ),
        ("table=notes&offset=-1&where=body = 'x'", MEMBER, "client_where_not_allowed"),
    ],
)
def test_forbidden(policy: Any, query: str, claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(Forbidden) as info:
        decide(policy, query, claims)
    assert info.value.reason == reason


def test_role_list_claim_and_array_param(policy: Any) -> None:
    """A list `role` matches by membership; a list `org_id` where the member rule compares
    one value (`org_id = {{org_id}}`) is refused (it was bound as the array literal
    '{"a","b\\"c"}' and compared as that text: proxycfg 13:18)."""
    with pytest.raises(Forbidden) as refused:
        decide(
            policy,
            "table=items&offset=-1",
            {"sub": "u", "role": ["x", "editor"], "org_id": ["a", 'b"c']},
        )
    assert refused.value.reason == "claim_unusable"
    d = decide(
        policy, "table=items&offset=-1", {"sub": "u", "role": ["x", "editor"], "org_id": "a"}
    )
    assert d.rule == "member" and d.params == ("a",)


def test_named_shape(policy: Any) -> None:
    d = decide(policy, "offset=-1", MEMBER, shape_name="my-items")
    assert d.where == "org_id = $1 AND owner = $2" and d.params == ("org-a", "u1")
    with pytest.raises(BadShapeRequest):
        decide(policy, "offset=-1&where=true", MEMBER, shape_name="my-items")
    with pytest.raises(BadShapeRequest):
        decide(policy, "offset=-1&table=notes", MEMBER, shape_name="my-items")
    with pytest.raises(Forbidden):
        decide(policy, "offset=-1", MEMBER, shape_name="nope")


@pytest.mark.parametrize(
    "query",
    [
        "params=%7B%7D",
        "subset__limit=x",
        "subset__params=nojson",
        "subset__params=5",
        "where=x%00y",
        "params[x]=1",
        "params[2]=1",
    ],
)
def test_bad_queries(query: str) -> None:
    from yarl import URL

    with pytest.raises(BadShapeRequest):
        parse_shape_query(URL("/?" + query).query.items())


def test_unknown_params_dropped_and_empty_is_absent() -> None:
    q = parse_shape_query(
        [
            ("table", "items"),
            ("where", ""),
            ("secret", "x"),
            ("source_id", "y"),
            ("foo", "1"),
            ("live", "true"),
            ("cache-buster", "9"),
        ]
    )
    assert q.where is None and q.protocol == (("live", "true"), ("cache-buster", "9"))


def test_subset_body() -> None:
    s = parse_subset_body(b'{"where":"id > $1","params":{"1":5},"limit":10,"order_by":"id"}')
    assert (s.where, dict(s.params), s.limit, s.order_by) == ("id > $1", {"1": "5"}, 10, "id")
    for bad in (b"[1]", b"{", b'{"table":"secrets"}', b'{"limit":0}', b'{"where":1}'):
        with pytest.raises(BadShapeRequest):
            parse_subset_body(bad)


def test_upstream_url_built_from_scratch(policy: Any) -> None:
    d = decide(
        policy,
        "table=items&offset=0_0&handle=h&live=true&cursor=5&secret=mine"
        "&source_id=evil&subset__where=id>1",
        MEMBER,
    )
    url = build_upstream_url(
        "http://engine:3000/base/", d, source_id="src", secret="topsecret-value"
    )
    assert url.path == "/base/v1/shape"
    q = url.query
    assert (
        q["secret"] == "topsecret-value"
        and q["source_id"] == "src"
        and len(q.getall("secret")) == 1
    )
    assert q["where"] == "org_id = $1" and q["params[1]"] == "org-a"
    assert q["columns"] == '"id","org_id","title"' and q["subset__where"] == "id>1"
    assert [k for k in q if k in ("offset", "handle", "live", "cursor")] == [
        "offset",
        "handle",
        "live",
        "cursor",
    ]
    assert "topsecret" not in mask_url(url) and "secret=[REDACTED]" in mask_url(url)


def test_a_claim_nested_too_deep_to_compare_is_ambiguous_not_an_error(policy: Any) -> None:
    """`{"a.b": X, "a": {"b": X}}` compares the two by recursion: nested past what the stack
    takes (a token's JSON nests as deep as its parser allows, ~1,000 levels) it raised
    RecursionError (a 500); now the path is ambiguous, so a deny naming it holds."""
    import json
    import sys

    from proxy.policy.evaluate import _AMBIGUOUS, claim_value

    deep = json.loads("[" * 400 + "]" * 400)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        assert claim_value({"a.b": deep, "a": {"b": deep}}, "a.b") is _AMBIGUOUS
    finally:
        sys.setrecursionlimit(limit)


def test_a_shared_answer_stops_being_shared_when_its_clause_reads_a_private_table() -> None:
    """Passthrough: an admin's `where=id IN (SELECT id FROM audit)` on a table everyone may
    read kept the table's public cache headers, so a CDN could hand what it reveals of an
    admin-only table to anyone asking the same URL. (The engine refuses subqueries today;
    Electric serves `IN (SELECT ...)`.)"""
    from proxy.config.loader import build_config

    config = base_config("http://engine:3000", "https://idp/jwks.json")
    config["tables"] = {
        "open": {"allow": [{"anonymous": True, "all_rows": True, "client_where": "passthrough"}]},
        "pub": {"allow": [{"anonymous": True, "all_rows": True}]},
        "audit": {"allow": [{"when": {"role": "admin"}, "all_rows": True}]},
    }
    policy = build_config(config, {"ENGINE_SECRET": "s" * 20}).policy
    admin = {"sub": "root", "role": "admin"}
    assert decide(policy, "table=open&offset=-1&where=id > 1", admin).shared
    assert decide(policy, "table=open&offset=-1&where=id IN (SELECT id FROM pub)", admin).shared
    reading = "table=open&offset=-1&where=id IN (SELECT id FROM audit)"
    assert not decide(policy, reading, admin).shared
    with pytest.raises(Exception) as refused:  # (and anyone else may not ask at all)
        decide(policy, reading, {}, anonymous=True)
    assert getattr(refused.value, "reason", "") == "subquery_not_allowed"


def test_a_claim_that_is_not_unicode_text_is_never_bound(policy: Any) -> None:
    """A lone surrogate cannot reach the engine (the URL builder drops it: "org-\\ud800a" was
    bound as "org-a"). Tokens holding one are refused as malformed first; this is the
    policy's own refusal, for claims from anywhere."""
    for claims in ({**MEMBER, "org_id": "org-\ud800a"}, {**MEMBER, "org_id": ["\udfff"]}):
        with pytest.raises(Forbidden) as refused:
            decide(policy, "table=items&offset=-1", claims)
        assert refused.value.reason == "claim_unusable"


def test_a_rule_without_the_primary_key_is_named_as_the_policys_mistake() -> None:
    """The engine refuses a shape whose columns omit its primary key, in words about the
    client's `columns`; when the rule itself hides the key, no request can succeed and the
    message must say so (naming the rule, not the hidden key columns)."""
    engine = "The list of columns must include all primary key columns, missing: id, org_id"
    message = rule_columns_error(engine, "member", ("title", "body"))
    assert message is not None and "'member'" in message and "primary key" in message
    assert "org_id" not in message
    # The client left out a key column the rule shows: the engine's words are right.
    assert rule_columns_error(engine, "member", ("id", "org_id", "title")) is None
    assert rule_columns_error(engine, "member", None) is None
    assert rule_columns_error(engine, "member", ("id", "title")) is not None  # (org_id hidden)
    assert rule_columns_error("column x not found", "member", ("title",)) is None


@pytest.mark.parametrize(
    ("columns", "words"),
    [
        (["id", "title", "id"], "'id' is listed twice"),
        (["id", ""], "cannot be a column name"),
        (["id", "x" * 64], "cannot be a column name"),
        (["id", '"Title"'], None),  # (a name with quotes in it is a name: exact, as stored)
    ],
)
def test_rule_columns_checked_at_load(columns: list[str], words: str | None) -> None:
    config = base_config("http://engine:3000", "https://idp/jwks.json")
    config["tables"]["items"]["allow"][1]["columns"] = columns
    if words is None:
        build_config(config, {"ENGINE_SECRET": "s" * 20})
        return
    with pytest.raises(ConfigError, match=words) as info:
        build_config(config, {"ENGINE_SECRET": "s" * 20})
    assert "tables.items.allow.1.columns (rule 'member')" in str(info.value)


def test_a_pattern_serves_only_callers_no_listed_table_shows_less() -> None:
    """A table reached only through a pattern could be a partition or inheritance child (or
    parent) of a listed table: the pattern's rule serves it only when no other listed table
    or pattern shows the caller less (rows, columns, or refused). Through a passthrough
    subquery too. Named by the policy, a table keeps its own rule."""
    config = base_config("http://engine:3000", "https://idp/jwks.json")
    everyone = {"all_rows": True, "client_where": "passthrough", "anonymous": True}
    config["tables"]["public.*"] = {"allow": [everyone]}
    config["tables"]["posts"] = {"allow": [everyone]}
    config["tables"]["notes"]["allow"].insert(0, {"when": {"role": "admin"}, "all_rows": True})
    policy = build_config(config, {"ENGINE_SECRET": "s" * 20}).policy
    for claims, anonymous in ((MEMBER, False), ({}, True)):
        with pytest.raises(Forbidden) as info:
            decide(policy, "table=items_2024&offset=-1", claims, anonymous=anonymous)
        assert info.value.reason == "pattern_not_safe"
        with pytest.raises(Forbidden) as info:
            query = "table=posts&where=id IN (SELECT id FROM items_2024)"
            decide(policy, query, claims, anonymous=anonymous)
        assert info.value.reason == "subquery_not_allowed"
    admin = decide(policy, "table=items_2024&offset=-1", ADMIN)  # every table whole for admins
    assert (admin.table, admin.where) == ('"public"."items_2024"', None)
    # ...but not for everyone: a shared cache in front of the proxy must not keep it.
    assert not admin.shared
    assert decide(policy, "table=posts&offset=-1", ADMIN).shared  # (named: the same for all)
    # Named, a table keeps its own rule.
    assert decide(policy, "table=posts&offset=-1", MEMBER).where is None
    # Another pattern that shows less makes the first unsafe for that caller too.
    config["tables"] = {
        "public.*": {"allow": [everyone]},
        "app.*": {
            "allow": [
                {"when": {"role": "member"}, "where": "org_id = {{org_id}}"},
                {"all_rows": True},
            ]
        },
    }
    config.pop("shapes")
    policy = build_config(config, {"ENGINE_SECRET": "s" * 20}).policy
    with pytest.raises(Forbidden, match="pattern"):
        decide(policy, "table=items_2024&offset=-1", MEMBER)
    assert decide(policy, "table=items_2024&offset=-1", ADMIN).where is None
    assert decide(policy, "table=app.x&offset=-1", MEMBER).where == "org_id = $1"
    # Patterns that show everyone everything: shared as before.
    config["tables"] = {"public.*": {"allow": [everyone]}, "app.*": {"allow": [everyone]}}
    policy = build_config(config, {"ENGINE_SECRET": "s" * 20}).policy
    assert decide(policy, "table=items_2024&offset=-1", {}, anonymous=True).shared
