"""`shape-proxy explain`'s `where` is the filter exactly as the proxy sends it to the engine.

A rule's filter is forwarded as written, claims numbered `$n` (its comments, spaces and line
breaks as YAML read them: a `>` block's lines folded into one), also when a client's clause
is ANDed in; only when the claims must be renumbered (a client's own `params` come first, a
claim both in a LIKE pattern and elsewhere) is it the proxy's printing of the parsed filter,
without comments. The last session's probe took explain's raw-looking `where` for the file's
text rather than what is sent, and docs/policy-filters.md said every forwarded filter was the
printing. This pins explain to the engine's own view: for each kind of rule, explain's
`where` and `params` are those the engine received for the same request through the proxy
(`load_for_explain` on the same file). It passed on a980cd23 too: explain was right, the
docs were not (fixed with this test).
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.explain import explain, load_for_explain

#: name -> (rule YAML lines under `- `, client query addition)
RULES = {
    "comments_and_spaces": (
        "where: |\n"
        "          org_id   =   {{org_id}}      /* the caller's org */\n"
        "            AND   title <> 'x'\n",
        "",
    ),
    "folded": ("where: >\n          org_id = {{org_id}}\n          AND title <> 'x'\n", ""),
    "like_claim": ("where: \"title LIKE {{org_id}} || '%'  /* prefix */\"\n", ""),
    "with_client_where": (
        "where: 'org_id =  {{org_id}} /* note */'\n        client_where: validated\n",
        "&where=id%20%3E%200%20%2F*c*%2F",
    ),
    "with_client_params": (
        "where: 'org_id =  {{org_id}} /* note */'\n        client_where: validated\n",
        "&where=id%20%3E%20%241&params%5B1%5D=0",
    ),
}


@pytest.mark.parametrize("name", sorted(RULES))
async def test_explains_where_is_what_the_engine_receives(
    name: str, proxy_from_yaml: Any, engine_server: Any, environ: dict[str, str]
) -> None:
    rule, extra = RULES[name]
    text = proxy_from_yaml.head(str(engine_server.make_url(""))) + (
        f"tables:\n  items:\n    allow:\n      - {rule}        columns: [id, org_id, title]\n"
    )
    proxy = await proxy_from_yaml(text)
    url = "/v1/shape?table=items&offset=-1" + extra
    reply = await proxy.get(url, token=proxy.tokens.make(org_id="org-a"))
    assert reply.status == 200, reply.body
    (seen,) = [r for r in proxy.engine.requests if r.url.path == "/v1/shape"]
    sent_where = seen.url.query["where"]
    sent_params = [seen.url.query[f"params[{i}]"] for i in range(1, 10)
                   if f"params[{i}]" in seen.url.query]  # fmt: skip

    report = await explain(
        load_for_explain(proxy.path, verify_tokens=False, environ=environ),
        url,
        token=None,
        claims={"org_id": "org-a"},
    )
    assert report["allowed"] is True, report
    assert report["where"] == sent_where
    assert report["params"] == sent_params
    if name == "comments_and_spaces":
        assert "/* the caller's org */" in sent_where  # (as written: the engine reads it)
    if name == "folded":
        # (YAML folded the lines: explain shows that too)
        assert "\n" not in sent_where.rstrip("\n")


async def test_explain_refuses_a_where_the_proxy_refuses_after_the_engine(
    proxy_from_yaml: Any, engine_server: Any, environ: dict[str, str]
) -> None:
    """A client where calling a function the engine never evaluates goes to the engine (which
    may name another fault first: 64029210) and is refused: explain says refused, in the
    words the client gets, not `allowed` with an upstream URL."""
    text = proxy_from_yaml.head(str(engine_server.make_url(""))) + (
        "tables:\n  items:\n    allow:\n      - where: 'org_id = {{org_id}}'\n"
        "        client_where: validated\n        columns: [id, org_id, title]\n"
    )
    proxy = await proxy_from_yaml(text)
    report = await explain(
        load_for_explain(proxy.path, verify_tokens=False, environ=environ),
        "/v1/shape?table=items&offset=-1&where=now()%20%3E%20%272020-01-01%27",
        token=None,
        claims={"org_id": "org-a"},
    )
    assert report["allowed"] is False, report
    assert report["status"] == 400 and "now() is not supported" in report["message"], report
    assert "upstream_url" not in report
