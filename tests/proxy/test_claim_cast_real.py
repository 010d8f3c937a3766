"""A claim that does not fit the column its filter compares is the proxy's 403, never the
engine's 400 about a where the client never wrote.

A rule `owner_id = {{sub}}` on an int column and a token whose `sub` is "abc" (or a number
bound where the column is a uuid, a date or a boolean) went to the engine, which answered
400 `{"errors":{"where":["At location 11: invalid input syntax for type integer: \"abc\""]}}`:
a where the client never sent, and the claim's position in the policy's hidden filter (its
text too, for a column the filter names that is gone). The array-slot case (a scalar claim
where a list is read) was already refused before the engine; whether a value casts to a
column's type is Postgres's question, so here the proxy reads the engine's answer: an error
located in the policy's part of the where (`proxy.policy.blame`) is a 403 `claim_unusable`
naming the claim only, on GET and HEAD, with or without a client where; the client's own
where errors stay the engine's 400, byte for byte. Real proxy, engine and Postgres.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

#: column -> (its type, a claim value that fits and selects row 1, values that do not fit)
COLUMNS: dict[str, tuple[str, object, list[object]]] = {
    "i4": ("int", 1, ["abc", 1.5, True, 99999999999, "1e3"]),
    "i8": ("bigint", 1, ["x", 1e30, False, "1.0"]),
    "u": (
        "uuid",
        "00000000-0000-0000-0000-000000000001",
        [7, "abc", True, "00000000-0000-0000-0000-00000000000g"],
    ),
    "flag": ("bool", True, [7, "maybe", 2.5]),
    "day": ("date", "2020-01-01", [7, "notadate", True, "2020-13-45"]),
    "amount": ("numeric", 1.5, ["abc", True, "1,5"]),
}

SHAPE = "/v1/shape?table=items&offset=-1"
#: client wheres that are fine: the claim's refusal is the same with each
CLIENT_WHERES = ("", "&where=id%20%3E%200", "&where=id%20%3E%20%241&params%5B1%5D=0")


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    columns = ", ".join(f"{name} {pg_type}" for name, (pg_type, _, _) in COLUMNS.items())
    return start_engine(
        f"CREATE TABLE items (id int PRIMARY KEY, {columns}, js jsonb, t text)",
        "INSERT INTO items VALUES (1, 1, 1, '00000000-0000-0000-0000-000000000001', true, "
        """'2020-01-01', 1.5, '{"a": 1}', 'a1'), (2, 2, 2, """
        "'00000000-0000-0000-0000-000000000002', false, '2021-01-01', 2.5, '{}', 'b2')",
    )


def _config(engine: EngineProcess, idp_server: Any) -> dict[str, Any]:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    allow: list[dict[str, Any]] = [
        {"name": name, "when": {"role": name}, "where": f"{name} = {{{{v}}}}"} for name in COLUMNS
    ]
    # two claims, the second the wrong one; and one behind a cast and an operator
    allow.append({"name": "pair", "when": {"role": "pair"}, "where": "u = {{u}} AND i4 = {{v}}"})
    allow.append({"name": "cast", "when": {"role": "cast"}, "where": "day < {{v}}::date + 1"})
    allow.append({"name": "gone", "when": {"role": "gone"}, "where": "nope = {{v}}"})
    # a value refused at an operator over claims only (division by zero at the `/`)
    allow.append({"name": "div", "when": {"role": "div"}, "where": "i4 < 100 / {{v}}"})
    # a filter the engine refuses whatever the claim: jsonb has no `=` there
    allow.append({"name": "doc", "when": {"role": "doc"}, "where": "js = {{v}}"})
    for rule in allow:
        rule["client_where"] = "validated"
    config["tables"]["items"] = {"allow": allow}
    return config


def _refusal(claim: str) -> dict[str, str]:
    return {
        "message": f"the token's {claim!r} claim is not a value this shape's filter can use",
        "code": "claim_unusable",
    }


async def test_a_claim_that_does_not_fit_its_column_is_the_proxys_403(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    proxy = await make_proxy(build_config(_config(engine, idp_server), environ))
    wrong = []
    cases: list[tuple[str, dict[str, Any], str | None]] = []
    for name, (_, good, bads) in COLUMNS.items():
        cases.append((name, {"v": good}, None))
        cases += [(name, {"v": bad}, "v") for bad in bads]
    u1 = COLUMNS["u"][1]
    cases += [
        ("pair", {"u": u1, "v": 1}, None),
        ("pair", {"u": u1, "v": "one"}, "v"),
        ("pair", {"u": 1, "v": 1}, "u"),
        ("cast", {"v": "2020-06-01"}, None),
        ("cast", {"v": "soon"}, "v"),
        ("div", {"v": 50}, None),
        ("div", {"v": 0}, "v"),
    ]
    for role, claims, refused in cases:
        token = proxy.tokens.make(role=role, **claims)
        for where in CLIENT_WHERES:
            reply = await proxy.get(SHAPE + where, token=token)
            head = await proxy.request("HEAD", SHAPE + where, token=token)
            if refused is None:
                rows = {m["value"]["id"] for m in reply.json() if "value" in m}
                if (reply.status, head.status, rows) != (200, 200, {"1"}):
                    wrong.append((role, claims, where, reply.status, head.status, rows))
                continue
            # (the whole body: no location, column, type or text of the filter)
            if (reply.status, head.status) != (403, 403) or reply.json() != _refusal(refused):
                wrong.append((role, claims, where, reply.status, head.status, reply.body))
    assert not wrong


@pytest.mark.parametrize(
    ("role", "value", "words"),
    [
        ("gone", 1, ("nope", "location", "reference", "$")),
        # (was a 403 claim_unusable blaming 'v': no claim makes the engine take `jsonb =`)
        ("doc", '{"a": 1}', ("js", "location", "JSON", "$")),
        ("doc", "x", ("js", "location", "JSON", "$")),
    ],
)
async def test_the_policys_own_refused_text_is_not_shown(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    role: str,
    value: object,
    words: tuple[str, ...],
) -> None:
    """A filter naming a column the table lacks (the engine's 'unknown reference nope' at
    the filter's position), or comparing a jsonb column with `=` ("JSON operators are not
    supported (jsonb =)" at the `=`, a claim under it): the policy's text, refused whatever
    the token holds."""
    proxy = await make_proxy(build_config(_config(engine, idp_server), environ))
    token = proxy.tokens.make(role=role, v=value)
    for where in CLIENT_WHERES:
        reply = await proxy.get(SHAPE + where, token=token)
        assert reply.status == 400, (where, reply.body)
        assert reply.json()["code"] == "policy_filter_refused"
        assert f"{role!r}" in reply.json()["message"]
        for word in words:
            assert word not in reply.body.decode(), (where, word)
        assert (await proxy.request("HEAD", SHAPE + where, token=token)).status == 400


async def test_a_clients_own_bad_where_is_still_the_engines_400(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
) -> None:
    """With claims that fit, the client's own errors are the engine's answer to the client's
    where alone, byte for byte; and a client's error does not become a claim's refusal."""
    proxy = await make_proxy(build_config(_config(engine, idp_server), environ))
    own = [
        "id = 'abc'",
        "u = 7",
        "flag = 'maybe'",
        "day = 'notadate'",
        "i8 = $1",
        "amount > 'x' AND id > 0",
        "nope = 1",
    ]
    async with aiohttp.ClientSession() as session:
        for role, (_, good, _) in COLUMNS.items():
            token = proxy.tokens.make(role=role, v=good)
            for clause in own:
                query = f"&where={quote(clause)}"
                if "$1" in clause:
                    query += "&params%5B1%5D=x"
                direct = f"{engine.url}{SHAPE}{query}&secret={engine_secret}"
                async with session.get(aiohttp.client.URL(direct, encoded=True)) as resp:
                    expected = (resp.status, await resp.read())
                assert expected[0] == 400, clause
                reply = await proxy.get(SHAPE + query, token=token)
                assert (reply.status, reply.body) == expected, (role, clause)
                head = await proxy.request("HEAD", SHAPE + query, token=token)
                assert head.status == 400, (role, clause)
