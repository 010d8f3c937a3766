"""A text claim that starts with `{` or `[` is one value where the filter only compares it.

b579793 refused such a claim (403 claim_unusable, "text in Postgres's array syntax") wherever
it was bound, so that `org_id = ANY({{orgs}})` with `"orgs": "{org-a,org-b}"` could not read
one claim as many values. But a rule `t = {{s}}` (or `IN`, `<=`, on text, jsonb, int columns)
with `"s": "[1]"` or a user-chosen "[team] x" reads it as one value, and Postgres answers it:
the user saw nothing where Postgres shows rows (119 of 3,000 fuzzed requests, where 12:35).
Now such a claim is bound as is (a parameter: quotes and `;` in it are data) where every use
of it is a comparison's operand (`proxy.policy.slots`), and still refused where an array may
be read. Real proxy, engine and Postgres: each answer is Postgres's own for the filter with
the claim bound as a parameter (rows), or the proxy's 403 claim_unusable where Postgres says
the value does not fit the column.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from proxy.config.loader import build_config
from proxy.policy.slots import single_value_slots
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"

#: rule name -> its filter; each compares its claims only (one value wherever used)
SINGLE = {
    "t": "t = {{s}}",
    "tin": "t IN ({{s}}, {{s2}})",
    "tle": "t <= {{s}}",
    "js": "js::text = {{s}}",
    "i4": "i4 = {{s}}",
    "tags": "tags = {{s}}",
    "cast": "{{s}}::text = t",
    "like": "t LIKE {{s}}",
}
#: filters where Postgres may read the claim as an array: still refused
ARRAY_READ = {
    "any": "t = ANY({{s}})",
    "contains": "tags @> {{s}}",
    "mixed": "t = {{s}} OR tags && {{s}}",
    # a CASE or COALESCE around the claim where an array is read (wherefuzz 01:58)
    "case": "t = ANY(CASE WHEN i4 > 0 THEN {{s}} ELSE '{}'::text[] END)",
    "coalesce": "tags && COALESCE({{s}}, '{}'::text[])",
}
#: (rule, claim) the engine refuses though Postgres answers (its documented limits: arrays
#: with explicit bounds): the proxy's 403 claim_unusable there
ENGINE_REFUSES = {("tags", " [1:1]={a}")}
CLAIMS = ["[1]", "{a}", "[team] x", "{}", " [1:1]={a}", "{a,b}", "[1]'); SELECT 1; --", '{"a": 1}']


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, t text, js jsonb, i4 int, tags text[])",
        "INSERT INTO items VALUES (1, '[1]', '[1]', 1, '{a}'), (2, '{a}', '{\"a\": 1}', 2, "
        "'{a,b}'), (3, '[team] x', '{}', 3, '{}'), (4, '[1]''); SELECT 1; --', '\"x\"', 4, "
        "'{\"[1]\"}'), (5, '{a,b}', '[]', 5, '{c}')",
    )


def _postgres(db_url: str, where: str, claims: dict[str, str]) -> set[str] | None:
    """Row ids Postgres selects with the claims bound as parameters; None if it refuses."""
    sql = where.replace("{{s}}", "%(s)s").replace("{{s2}}", "%(s2)s")
    with psycopg.connect(db_url, autocommit=True) as conn:
        try:
            rows = conn.execute(f"SELECT id FROM items WHERE {sql}", claims).fetchall()
        except psycopg.errors.DataError:
            return None
    return {str(row[0]) for row in rows}


async def test_array_syntax_text_is_one_value_where_the_filter_compares_it(
    engine: EngineProcess, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"]["items"] = {
        "allow": [
            {"name": name, "when": {"role": name}, "where": where}
            for name, where in {**SINGLE, **ARRAY_READ}.items()
        ]
    }
    proxy = await make_proxy(build_config(config, environ))
    wrong = []
    served = 0
    for name, where in {**SINGLE, **ARRAY_READ}.items():
        for claim in CLAIMS:
            claims = {"s": claim, "s2": "{a}"}
            reply = await proxy.get(SHAPE, token=proxy.tokens.make(role=name, **claims))
            body = reply.json()
            if name in ARRAY_READ:
                expected: tuple[int, object] = (403, "claim_unusable")
                got: tuple[int, object] = (reply.status, body.get("code"))
            else:
                rows = _postgres(db_url, where, claims)
                if rows is None or (name, claim) in ENGINE_REFUSES:
                    expected = (403, "claim_unusable")
                    got = (reply.status, body.get("code"))
                else:
                    served += bool(rows)
                    expected = (200, rows)
                    ids = (
                        {m["value"]["id"] for m in body if "value" in m}
                        if reply.status == 200
                        else body
                    )
                    got = (reply.status, ids)
            if got != expected:
                wrong.append((name, claim, got, expected))
    assert not wrong
    assert served >= 10  # (rows were really compared, not only refusals)


#: filters reading a list claim (a JSON array) as an array: Postgres's rows
LIST_READ = {
    "any": "t = ANY({{s}})",
    "overlap": "tags && {{s}}",
    "whole": "{{s}}::text[] = tags",
}


async def test_a_list_claim_where_the_filter_compares_one_value_is_refused(
    engine: EngineProcess, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """A JSON-array claim bound where every use reads one value (`org_id = {{org}}`, `IN`,
    `<>`, `::text`...) was bound as an array literal and compared as the text `{"a","b"}`:
    a 200 with no rows, or the rows of every other org for `<>`, or a row whose text is
    that literal (proxycfg 13:18). It is the 403 claim_unusable the docs promise; where the
    filter reads an array it is still bound element by element and answered by Postgres."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    # (and inside a function: `t <> lower({{s}})` served every other row, review 14:27)
    single = {**SINGLE, "tne": "t <> {{s}}", "fn": "t <> lower({{s}})", "fn_eq": "t = upper({{s}})"}
    config["tables"]["items"] = {
        "allow": [
            {"name": name, "when": {"role": name}, "where": where}
            for name, where in {**single, **LIST_READ}.items()
        ]
    }
    proxy = await make_proxy(build_config(config, environ))
    wrong = []
    for name, where in {**single, **LIST_READ}.items():
        for claim in (["{a}", "[1]"], ["a", "b"], ["[team] x"]):
            token = proxy.tokens.make(role=name, s=claim, s2="{a}")
            reply = await proxy.get(SHAPE, token=token)
            body = reply.json()
            if name in single:
                expected: tuple[int, object] = (403, "claim_unusable")
                got: tuple[int, object] = (
                    reply.status,
                    isinstance(body, dict) and body.get("code"),
                )
            else:
                literal = "{" + ",".join(f'"{c}"' for c in claim) + "}"
                expected = (200, _postgres(db_url, where, {"s": literal}))
                rows = {m["value"]["id"] for m in body if "value" in m}
                got = (reply.status, rows if reply.status == 200 else body)
            if got != expected:
                wrong.append((name, claim, got, expected))
    assert not wrong


@pytest.mark.parametrize(
    ("sql", "single"),
    [
        ("t = $1", {0}),
        ("t IN ($1, $2) AND d BETWEEN $3 AND $4", {0, 1, 2, 3}),
        ("$1 = ANY(tags) AND x LIKE $2 ESCAPE '#' AND $3 IS NULL", {0, 1, 2}),
        ("$1::int = i4 AND y IS DISTINCT FROM $2", {0, 1}),
        # an array may be read: the claim's text never passes as one value there
        ("org = ANY($1)", set()),
        ("tags @> $1 OR tags && $2 OR $3 <@ tags", set()),
        ("t = $1 OR tags @> $1", set()),
        ("$1::text::text[] = tags", set()),
        ("org = ANY(lower($1::text)::text[])", set()),
        ("ARRAY[$1] && tags AND lower($2) = t AND $3 + i4 > 0", set()),
    ],
)
def test_single_value_slots(sql: str, single: set[int]) -> None:
    assert single_value_slots(sql) == frozenset(single)
