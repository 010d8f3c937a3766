"""What a client sees through the proxy is what it would see from the engine, except what the
policy narrows: anonymous rules, table patterns, DELETE as a permission, `/v1/health`,
Electric's error bodies, and public cache headers for answers every caller shares."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestServer

from proxy.config.loader import ConfigError, build_config
from tests.proxy.proxy_fakes import ORIGIN

PUBLIC = {
    "anonymous": True,
    "all_rows": True,
    "client_where": "passthrough",
    "replica_full": True,
    "delete": True,
}


@pytest.fixture
def open_data(config_data: dict[str, Any]) -> dict[str, Any]:
    """The base policy plus: `posts` and `secrets` for anyone, and the pattern `public.*`.

    (The pattern serves no caller here: `items` and `notes` show every caller less, and a
    table reached only through a pattern could be one of their partitions or inheritance
    children, so the policy serves it only by name: `test_patterns_...` below.)"""
    data = copy.deepcopy(config_data)
    data["tables"]["posts"] = {"allow": [{"name": "public", **PUBLIC}]}
    data["tables"]["secrets"] = {"allow": [{"name": "public", **PUBLIC}]}
    data["tables"]["public.*"] = {"allow": [{"name": "public", **PUBLIC}]}
    return data


@pytest.fixture
async def open_proxy(make_proxy: Any, open_data: dict[str, Any], environ: dict[str, str]) -> Any:
    return await make_proxy(build_config(open_data, environ))


def _vary(reply: Any) -> list[str]:
    return [v.strip().lower() for v in reply.headers.get("Vary", "").split(",") if v.strip()]


async def test_anonymous_client_reads_a_public_table_with_shared_cache_headers(
    open_proxy: Any,
) -> None:
    reply = await open_proxy.get("/v1/shape?table=posts&offset=-1", headers={"Origin": ORIGIN})
    assert reply.status == 200, reply.body
    # Electric's own header: a CDN may keep it and give it to everyone.
    assert reply.headers["Cache-Control"] == (
        "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
    )
    assert "authorization" not in _vary(reply)
    assert "origin" in _vary(reply)
    seen = open_proxy.engine.requests[-1].url.query
    assert seen["table"] == "posts" and "where" not in seen
    # A signed-in user asking for the same URL gets the same bytes and the same headers.
    signed_in = await open_proxy.get(
        "/v1/shape?table=posts&offset=-1", token=open_proxy.tokens.make()
    )
    assert signed_in.body == reply.body
    assert signed_in.headers["Cache-Control"] == reply.headers["Cache-Control"]


async def test_claim_dependent_rule_stays_private(open_proxy: Any) -> None:
    reply = await open_proxy.get("/v1/shape?table=items&offset=-1", token=open_proxy.tokens.make())
    assert reply.status == 200
    assert reply.headers["Cache-Control"].startswith("private")
    assert "s-maxage" not in reply.headers["Cache-Control"]
    assert "authorization" in _vary(reply)


async def test_anonymous_client_refused_where_no_anonymous_rule_applies(open_proxy: Any) -> None:
    reply = await open_proxy.get("/v1/shape?table=items&offset=-1")
    assert reply.status == 401
    assert reply.json()["code"] == "missing_token"
    assert "WWW-Authenticate" in reply.headers
    other_schema = await open_proxy.get("/v1/shape?table=audit.log&offset=-1")
    assert other_schema.status == 401  # default deny: nothing serves audit.* anonymously
    assert open_proxy.engine.requests == []


async def test_a_bad_token_is_never_downgraded_to_anonymous(open_proxy: Any) -> None:
    reply = await open_proxy.get(
        "/v1/shape?table=posts&offset=-1", headers={"Authorization": "Bearer nonsense"}
    )
    assert reply.status == 401
    assert open_proxy.engine.requests == []


async def test_glob_patterns_match_schema_and_table(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    data = copy.deepcopy(config_data)
    data.pop("shapes", None)
    data["tables"] = {
        "app.user_*": {"allow": [{"name": "app-users", "anonymous": True,
                                  "where": "visible = true"}]},
    }  # fmt: skip
    open_proxy = await make_proxy(build_config(data, environ))
    ok = await open_proxy.get("/v1/shape?table=app.user_profiles&offset=-1")
    assert ok.status == 200, ok.body
    seen = open_proxy.engine.requests[-1].url.query
    # (unquoted: the engine reads plain lower-case names alike, `upstream.url.short_table`)
    assert seen["table"] == "app.user_profiles" and seen["where"] == "visible = true"
    # The anonymous rule has a fixed filter: no claims, so it is shared too.
    assert ok.headers["Cache-Control"].startswith("public")
    refused = await open_proxy.get("/v1/shape?table=app.orders&offset=-1")
    assert refused.status == 401
    table = quote('app."User_x"')
    quoted = await open_proxy.get(f"/v1/shape?table={table}&offset=-1")
    assert quoted.status == 401  # patterns match the stored name: "User_x" is not user_*


async def test_passthrough_where_reaches_the_engine_as_written(open_proxy: Any) -> None:
    where = "lower(title) = $1 OR id IN (SELECT id FROM secrets)"
    reply = await open_proxy.get(
        f"/v1/shape?table=posts&offset=-1&where={quote(where)}&params[1]=x"
    )
    assert reply.status == 200, reply.body
    seen = open_proxy.engine.requests[-1].url.query
    assert seen["where"] == where and seen["params[1]"] == "x"


@pytest.mark.parametrize(
    "where",
    [
        "id IN (SELECT id FROM items)",  # items: filtered for members, closed to anonymous
        "EXISTS (SELECT 1 FROM notes WHERE body = 'x')",  # notes: each owner's own rows
        "id IN (SELECT id FROM other)",  # reached only through a pattern (could be a partition)
        "id IN (TABLE items)",  # ...and `TABLE t` reads t as well
        "true; SELECT * FROM items",
    ],
)
async def test_a_passthrough_subquery_may_not_read_what_the_caller_may_not_sync(
    open_proxy: Any, where: str
) -> None:
    """A passthrough rule forwards the where as written, so a subquery in it (Electric plans
    `IN (SELECT ...)`) could read rows the policy hides in another table: it is forwarded only
    when the caller may sync every table it reads whole."""
    for query in (f"where={quote(where)}", f"subset__where={quote(where)}"):
        reply = await open_proxy.get(f"/v1/shape?table=posts&offset=-1&{query}")
        assert reply.status == 403, (query, reply.body)
        assert reply.json()["code"] == "subquery_not_allowed"
    order_by = quote(f"(SELECT count(*) FROM items WHERE {where[:2]} > 0)")
    reply = await open_proxy.get(f"/v1/shape?table=posts&offset=-1&subset__order_by={order_by}")
    assert reply.status == 403, reply.body
    assert open_proxy.engine.requests == []
    # A table the caller may sync whole (`secrets` is open to anyone) may be read.
    open_table = quote("id IN (TABLE secrets)")
    reply = await open_proxy.get(f"/v1/shape?table=posts&offset=-1&where={open_table}")
    assert reply.status == 200, reply.body


async def test_delete_forwarded_when_the_rule_allows_it(open_proxy: Any) -> None:
    reply = await open_proxy.request("DELETE", "/v1/shape?table=posts&handle=h-1")
    assert reply.status == 202
    seen = open_proxy.engine.requests[-1]
    assert seen.method == "DELETE"
    assert seen.url.query["table"] == "posts" and seen.url.query["handle"] == "h-1"
    refused = await open_proxy.request(
        "DELETE", "/v1/shape?table=items", token=open_proxy.tokens.make(role="admin")
    )
    assert refused.status == 403 and refused.json()["code"] == "delete_not_allowed"


def _catch_all(config_data: dict[str, Any], **extra_tables: Any) -> dict[str, Any]:
    data = copy.deepcopy(config_data)
    data["tables"] = {"*.*": {"allow": [{"name": "everyone", **PUBLIC}]}, **extra_tables}
    data.pop("shapes", None)
    return data


async def test_delete_by_handle_alone_for_a_caller_who_may_delete_every_shape(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str], engine_secret: str
) -> None:
    """Electric's client suite clears shapes with `DELETE /v1/shape?handle=H` (no table)."""
    proxy = await make_proxy(build_config(_catch_all(config_data), environ))
    reply = await proxy.request("DELETE", "/v1/shape?handle=h-1")
    assert reply.status == 202, reply.body
    # Rules the same for everyone: the engine's headers (it was `private, no-cache`), as a
    # DELETE naming its table gets; with signed-in callers only it is private.
    assert reply.headers["Cache-Control"] == "no-cache"
    signed_in = _catch_all(config_data)
    signed_in["tables"]["*.*"]["allow"][0]["anonymous"] = False
    private = await make_proxy(build_config(signed_in, environ))
    token = private.tokens.make(sub="u1")
    reply = await private.request("DELETE", "/v1/shape?handle=h-1", token=token)
    assert reply.status == 202, reply.body
    assert reply.headers["Cache-Control"].startswith("private")
    seen = private.engine.requests[-1]
    assert seen.method == "DELETE"
    # The handle, and what the proxy always adds; no table, nothing else from the client.
    assert dict(seen.url.query) == {"handle": "h-1", "source_id": "src-1", "secret": engine_secret}


async def test_delete_by_handle_alone_refused_unless_every_shape_is_deletable(
    make_proxy: Any,
    open_proxy: Any,
    config_data: dict[str, Any],
    environ: dict[str, str],
) -> None:
    # No catch-all table: a handle may name a shape of a table this caller may not delete.
    reply = await open_proxy.request("DELETE", "/v1/shape?handle=h-1")
    assert reply.status == 400 and reply.json()["code"] == "missing_table"
    # A catch-all, but one table's rule filters rows: still refused.
    own = {"name": "own", "anonymous": True, "where": "visible = true", "delete": True}
    narrowed = _catch_all(config_data, notes={"allow": [own]})
    proxy = await make_proxy(build_config(narrowed, environ))
    before = len(proxy.engine.requests)
    reply = await proxy.request("DELETE", "/v1/shape?handle=h-1")
    assert reply.status == 400 and reply.json()["code"] == "missing_table"
    # (the engine is asked only whether it takes DELETEs at all: nothing named)
    assert all(not r.url.query for r in proxy.engine.requests[before:])


@pytest.mark.parametrize(("status", "state"), [(200, "active"), (202, "starting")])
async def test_v1_health_is_the_engines_answer(open_proxy: Any, status: int, state: str) -> None:
    open_proxy.engine.health = (status, state)
    reply = await open_proxy.get("/v1/health")
    assert reply.status == status
    assert reply.json() == {"status": state}
    assert "secret" not in open_proxy.engine.requests[-1].url.query
    healthz = await open_proxy.get("/healthz")
    assert healthz.status == 200 and healthz.json()["status"] == "ok"


async def test_v1_health_when_the_engine_is_down(
    make_proxy: Any, open_data: dict[str, Any], environ: dict[str, str], unused_tcp_port: int
) -> None:
    open_data["upstream"]["url"] = f"http://127.0.0.1:{unused_tcp_port}"
    proxy = await make_proxy(build_config(open_data, environ))
    reply = await proxy.get("/v1/health")
    assert reply.status == 502
    assert reply.json()["code"] == "upstream_unreachable"


async def test_errors_have_electrics_shape(open_proxy: Any) -> None:
    token = open_proxy.tokens.make()
    bad_where = await open_proxy.get(
        f"/v1/shape?table=items&offset=-1&where={quote('title = (')}", token=token
    )
    assert bad_where.status == 400
    body = bad_where.json()
    assert body["message"] == "Invalid request"
    assert list(body["errors"]) == ["where"] and isinstance(body["errors"]["where"], list)
    assert "code" not in body  # (the engine's refusal, in its words and form)

    bad_subset = await open_proxy.get(
        f"/v1/shape?table=items&offset=-1&log=changes_only&subset__where={quote('id >')}",
        token=token,
    )
    assert bad_subset.status == 400
    assert list(bad_subset.json()["errors"]["subset"]) == ["where"]

    hidden = await open_proxy.get("/v1/shape?table=items&offset=-1&columns=id,secret", token=token)
    assert hidden.status == 403
    assert hidden.json()["code"] == "column_not_allowed"
    assert hidden.json()["errors"]["columns"] == [hidden.json()["message"]]

    # No table: the engine's (Electric's) refusal, byte for byte (compact, no `code`).
    no_table = await open_proxy.get("/v1/shape?offset=-1", token=token)
    assert no_table.status == 400
    assert no_table.body == b'{"message":"Invalid request","errors":{"table":["can\'t be blank"]}}'
    assert no_table.headers["Cache-Control"] == "no-store"

    # A repeated parameter takes its last value, as Electric and the engine read it.
    last = await open_proxy.get("/v1/shape?table=x&offset=-1&table=items", token=token)
    assert last.status == 200, last.body
    assert "items" in open_proxy.engine.requests[-1].url.query["table"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"anonymous": True, "when": {"role": "x"}, "all_rows": True}, "remove `when`"),
        ({"anonymous": True, "where": "owner = {{sub}}"}, "{{claim}}"),
        ({"all_rows": True, "columns": ["id"], "client_where": "passthrough"}, "passthrough"),
        ({"where": "id > 0", "client_where": "passthrough"}, "passthrough"),
    ],
)
def test_unsafe_anonymous_or_passthrough_rules_fail_to_load(
    config_data: dict[str, Any], environ: dict[str, str], rule: dict[str, Any], message: str
) -> None:
    data = copy.deepcopy(config_data)
    data["tables"]["posts"] = {"allow": [rule]}
    with pytest.raises(ConfigError, match=r"tables\.posts\.allow\.0") as info:
        build_config(data, environ)
    assert message in str(info.value)


def test_a_config_without_issuers_serves_only_anonymous_rules(
    engine_server: TestServer, environ: dict[str, str]
) -> None:
    data = {
        "upstream": {"url": str(engine_server.make_url(""))},
        "tables": {"*.*": {"allow": [PUBLIC]}},
    }
    loaded = build_config(data, environ)
    assert loaded.policy.anonymous and loaded.config.issuers == []


async def test_head_answers_the_gets_headers_without_a_body(open_proxy: Any) -> None:
    get = await open_proxy.get("/v1/shape?table=posts&offset=-1")
    head = await open_proxy.request("HEAD", "/v1/shape?table=posts&offset=-1")
    assert head.status == 200 and head.body == b""
    assert open_proxy.engine.requests[-1].method == "HEAD"
    for name in ("electric-handle", "electric-offset", "electric-schema", "Cache-Control"):
        assert head.headers[name] == get.headers[name]
    assert head.headers["Content-Length"] == str(len(get.body))
    refused = await open_proxy.request("HEAD", "/v1/shape?table=items&offset=-1")
    assert refused.status == 401  # authorised exactly like the GET


async def test_without_issuers_a_token_is_ignored_and_the_caller_is_anonymous(
    make_proxy: Any, open_data: dict[str, Any], environ: dict[str, str]
) -> None:
    """Under a config that verifies no tokens (config/examples/open.yaml), an app's own token
    changes nothing: the engine ignores the header, so the proxy does too."""
    data = copy.deepcopy(open_data)
    data.pop("issuers", None)
    data["tables"] = {"*.*": {"allow": [{"name": "everyone", **PUBLIC, "all_rows": True}]}}
    proxy = await make_proxy(build_config(data, environ))
    plain = await proxy.get("/v1/shape?table=posts&offset=-1")
    with_token = await proxy.get(
        "/v1/shape?table=posts&offset=-1", headers={"Authorization": "Bearer app-token"}
    )
    assert plain.status == with_token.status == 200, with_token.body
    assert with_token.body == plain.body
    assert "app-token" not in proxy.engine.requests[-1].url.human_repr()


async def test_a_clients_queryable_columns_reach_the_engine_unless_the_rule_narrows_them(
    open_proxy: Any,
) -> None:
    """Electric's `queryable_columns` (the columns a shape's subset clauses and `columns` may
    name; the engine honours it since w-engine 63475a6a) went nowhere: the proxy dropped it,
    so a list the engine refuses (`a&b`) was served (engine 20:10 MEDIUM, seen by
    test_transparency_fuzz_real). A rule with no columns sends it as written; a rule that
    hides columns sends its own list, or the client's when every name in it is the rule's
    (a narrowing of the rule's: review LOW), as `columns` too when the client sent none; a
    named shape takes none."""
    ok = await open_proxy.get("/v1/shape?table=posts&offset=-1&queryable_columns=id,%22a%26b%22")
    assert ok.status == 200, ok.body
    seen = open_proxy.engine.requests[-1].url.query
    assert seen.getall("queryable_columns") == ['id,"a&b"']
    member = open_proxy.tokens.make(role="member", org_id="org-a")
    narrowed = await open_proxy.get(
        "/v1/shape?table=items&offset=-1&queryable_columns=id,title", token=member
    )
    assert narrowed.status == 200, narrowed.body
    seen = open_proxy.engine.requests[-1].url.query
    assert seen.getall("queryable_columns") == ['"id","title"']
    assert seen.getall("columns") == ['"id","title"']
    rule = await open_proxy.get("/v1/shape?table=items&offset=-1&columns=id", token=member)
    assert rule.status == 200, rule.body
    seen = open_proxy.engine.requests[-1].url.query
    assert seen.getall("queryable_columns") == ['"id","org_id","title"']
    named = await open_proxy.get("/shapes/my-items?offset=-1&queryable_columns=id", token=member)
    assert named.status == 400 and named.json()["code"] == "named_shape_definition"


async def test_an_order_by_refusal_left_to_the_engine_stands_unless_it_refuses_first(
    proxy: Any,
) -> None:
    """A subset whose order_by is no plain column, beside a where, goes to the engine as
    written, for the engine to name the first fault as it would (its where's); whatever
    else the engine answers (here a fake's 200), the client gets the proxy's refusal, in the
    engine's words, and the request is not remembered for the fast lane."""
    member = proxy.tokens.make()
    for _ in range(2):
        reply = await proxy.get(
            f"/v1/shape?table=items&offset=-1&subset__where={quote('id > 0')}"
            f"&subset__order_by={quote('id + 1')}",
            token=member,
        )
        assert reply.status == 400, reply.body
        assert reply.json() == {
            "message": "Invalid request",
            "errors": {
                "subset": {
                    "order_by": [
                        "At location 3: A_Expr expressions are not allowed in ORDER BY clauses"
                    ]
                }
            },
        }
        assert proxy.engine.requests[-1].url.query["subset__order_by"] == "id + 1"
