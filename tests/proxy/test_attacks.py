"""Every attack from the issue, through the real app against the fake engine.

Each must get the right 4xx with a JSON reason, `no-store`, and the engine must see nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.proxy.proxy_fakes import FakeIdp, KeyPair, now

SHAPE = "/v1/shape?table=items&offset=-1"


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


#: Refused in the engine's words and form (compact JSON, no `code`): the engine refuses the
#: same request alike, and a client cannot tell the two apart.
ENGINE_WORDED = frozenset(
    {"nul_byte", "invalid_offset", "payload_too_large", "not_found", "invalid_where"}
)


def assert_refused(reply: Any, status: int, reason: str, proxy: Any) -> None:
    assert reply.status == status, reply.body
    if reason in ENGINE_WORDED:
        compact = json.dumps(reply.json(), separators=(",", ":"), ensure_ascii=False)
        assert "code" not in reply.json() and reply.body == compact.encode(), reply.body
    else:
        assert reply.json()["code"] == reason
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Content-Type"].startswith("application/json")
    assert proxy.engine.requests == []


async def test_valid_token_reaches_engine(proxy: Any) -> None:
    reply = await proxy.get(SHAPE, token=proxy.tokens.make())
    assert reply.status == 200
    assert len(proxy.engine.requests) == 1


async def test_no_token(proxy: Any) -> None:
    reply = await proxy.get(SHAPE)
    assert_refused(reply, 401, "missing_token", proxy)
    assert reply.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_alg_none(proxy: Any) -> None:
    claims = {
        "iss": "https://issuer.test/",
        "aud": "shapegate",
        "sub": "x",
        "exp": now() + 60,
        "iat": now(),
        "role": "admin",
    }
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'key-1'})}.{b64(claims)}."
    proxy.tokens.issued.append(token)
    assert_refused(await proxy.get(SHAPE, token=token), 401, "algorithm_not_allowed", proxy)


async def test_hs256_signed_with_rs256_public_key(proxy: Any, signing_key: KeyPair) -> None:
    pem = signing_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {
        "iss": "https://issuer.test/",
        "aud": "shapegate",
        "sub": "x",
        "exp": now() + 60,
        "iat": now(),
        "role": "admin",
    }
    header = b64({"alg": "HS256", "typ": "JWT", "kid": "key-1"})
    body = b64(claims)
    import hashlib
    import hmac

    sig = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    token = f"{header}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    proxy.tokens.issued.append(token)
    assert_refused(await proxy.get(SHAPE, token=token), 401, "algorithm_not_allowed", proxy)


# Claims are built when the test runs, not at collection: a long run (CI under load) can start
# this test more than ten minutes after collection, when an `nbf` of "collection + 600 s" has passed.
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (lambda: {"exp": now() - 600, "iat": now() - 1200}, "token_expired"),
        (lambda: {"nbf": now() + 600}, "token_not_yet_valid"),
        (lambda: {"aud": "someone-else"}, "invalid_audience"),
        (lambda: {"iss": "https://evil.test/"}, "invalid_issuer"),
        (lambda: {"iss": "https://issuer.test"}, "invalid_issuer"),  # no partial/normalised match
        (lambda: {"exp": now() + 10 * 86400}, "token_lifetime_too_long"),
    ],
    ids=["expired", "not-yet-valid", "audience", "issuer", "issuer-prefix", "lifetime"],
)
async def test_bad_claims(proxy: Any, claims: Callable[[], dict[str, Any]], reason: str) -> None:
    token = proxy.tokens.make(**claims())
    assert_refused(await proxy.get(SHAPE, token=token), 401, reason, proxy)


async def test_a_lifetime_refusal_says_both_numbers(proxy: Any) -> None:
    """What to fix is in the message: the token's lifetime and the limit (an IdP's 7-day
    tokens, or an `exp` written in milliseconds, looked the same as any refusal)."""
    issued = now()
    token = proxy.tokens.make(iat=issued, exp=issued + 10 * 86400)
    reply = await proxy.get(SHAPE, token=token)
    assert_refused(reply, 401, "token_lifetime_too_long", proxy)
    message = json.loads(reply.body)["message"]
    assert "864000 s" in message and "at most 7200 s" in message, message


async def test_missing_exp(proxy: Any) -> None:
    token = proxy.tokens.make(drop=("exp",))
    assert_refused(await proxy.get(SHAPE, token=token), 401, "missing_claim", proxy)


@pytest.mark.parametrize(
    ("claims", "drop", "reason", "message"),
    [
        ({}, ("sub",), "missing_claim", "the token lacks the required sub claim"),
        ({"sub": ""}, (), "invalid_claims", "the token sub claim must not be empty"),
    ],
    ids=["no-sub", "empty-sub"],
)
async def test_a_token_must_name_its_subject(
    proxy: Any, claims: dict[str, Any], drop: tuple[str, ...], reason: str, message: str
) -> None:
    """A token without a subject names nobody: per-principal limits, logs and `{{sub}}`
    filters all need one (RFC 9068 and OpenID Connect require `sub`). It was served (the
    member's rows, charged to the client's address) unless the issuer's `require:` named
    `sub`; now a 401 saying which claim, whatever the issuer's `require:` says."""
    token = proxy.tokens.make(drop=drop, **claims)
    reply = await proxy.get(SHAPE, token=token)
    assert_refused(reply, 401, reason, proxy)
    assert reply.json()["message"] == message
    assert reply.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_bad_signature(proxy: Any) -> None:
    token = proxy.tokens.make()
    head, _body, sig = token.split(".")
    forged_body = b64({**jwt.decode(token, options={"verify_signature": False}), "role": "admin"})
    forged = f"{head}.{forged_body}.{sig}"
    proxy.tokens.issued.append(forged)
    assert_refused(await proxy.get(SHAPE, token=forged), 401, "invalid_signature", proxy)


async def test_signed_by_other_key_with_known_kid(proxy: Any, other_key: KeyPair) -> None:
    token = proxy.tokens.make(signing_key=other_key.private)
    assert_refused(await proxy.get(SHAPE, token=token), 401, "invalid_signature", proxy)


async def test_unknown_kid(proxy: Any, other_key: KeyPair) -> None:
    token = proxy.tokens.make(key=other_key)
    assert_refused(await proxy.get(SHAPE, token=token), 401, "unknown_key", proxy)


@pytest.mark.parametrize("param", ["token", "access_token", "jwt"])
async def test_token_in_query_string(proxy: Any, param: str) -> None:
    token = proxy.tokens.make()
    reply = await proxy.get(f"{SHAPE}&{param}={token}")
    assert_refused(reply, 400, "token_in_query", proxy)
    # Refused even alongside a valid header: the URL must not carry it.
    reply = await proxy.get(f"{SHAPE}&{param}={token}", token=token)
    assert_refused(reply, 400, "token_in_query", proxy)


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        ("&where=1=1) OR (1=1", 400, "invalid_where"),
        ("&where=true) OR (true", 400, "invalid_where"),
        ("&table=secrets", 403, "table_not_allowed"),  # (the last value is the one checked)
        ("&where=id > 0%00 OR true", 400, "nul_byte"),
        ('&columns="id","salary"', 403, "column_not_allowed"),
        ("&offset=0", 400, "invalid_offset"),
        ("&where=org_id IN (SELECT org_id FROM orgs)", 400, "unsupported_where"),
        ("&where=salary > 100", 403, "column_not_allowed"),
        ("&replica=full", 403, "replica_full_not_allowed"),
    ],
)
async def test_shape_attacks(proxy: Any, query: str, status: int, reason: str) -> None:
    reply = await proxy.get(SHAPE + query, token=proxy.tokens.make())
    assert_refused(reply, status, reason, proxy)


async def test_table_not_in_policy(proxy: Any) -> None:
    reply = await proxy.get("/v1/shape?table=secrets&offset=-1", token=proxy.tokens.make())
    assert_refused(reply, 403, "table_not_allowed", proxy)


async def test_subset_where_on_hidden_column(proxy: Any) -> None:
    path = "/v1/shape?table=items&offset=0_0&handle=h&subset__where=salary>1000"
    reply = await proxy.get(path, token=proxy.tokens.make())
    assert_refused(reply, 403, "column_not_allowed", proxy)
    reply = await proxy.get(
        path.replace("salary>1000", "id>1") + "&subset__order_by=salary", token=proxy.tokens.make()
    )
    assert_refused(reply, 403, "column_not_allowed", proxy)


async def test_post_subset_where_on_hidden_column(proxy: Any) -> None:
    reply = await proxy.request(
        "POST",
        "/v1/shape?table=items&offset=0_0&handle=h",
        token=proxy.tokens.make(),
        data=b'{"where":"salary > $1","params":{"1":"1000"}}',
        headers={"Content-Type": "application/json"},
    )
    assert_refused(reply, 403, "column_not_allowed", proxy)


async def test_post_body_cannot_redefine_shape(proxy: Any) -> None:
    """Read as the engine reads it, a body's `table` counts only when the URL has none (and
    is then checked by the policy like any table), and its `where` is the subset's: the
    engine gets the URL's table and the member's filter, and a body of subset keys only."""
    reply = await proxy.request(
        "POST",
        "/v1/shape?table=items&offset=0_0&handle=h",
        token=proxy.tokens.make(),
        data=b'{"table":"secrets","where":"true"}',
    )
    assert reply.status == 200, reply.body
    seen = proxy.engine.requests[-1]
    assert seen.url.query["table"] == "items" and seen.url.query["where"] == "org_id = $1"
    assert json.loads(seen.body) == {"where": "true"}
    proxy.engine.requests.clear()
    reply = await proxy.request(
        "POST",
        "/v1/shape?offset=0_0&handle=h",
        token=proxy.tokens.make(),
        data=b'{"table":"secrets","where":"true"}',
    )
    assert_refused(reply, 403, "table_not_allowed", proxy)


async def test_oversized_post_body(proxy: Any) -> None:
    reply = await proxy.request(
        "POST",
        "/v1/shape?table=items&offset=0_0&handle=h",
        token=proxy.tokens.make(),
        data=b'{"where":"' + b"x" * 200_000 + b'"}',
    )
    assert reply.status == 413 and reply.body == b'{"error":"Request body too large"}'
    assert proxy.engine.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/Shape?table=items&offset=-1",
        "/v1/shape%2F?table=items&offset=-1",
        "/v1%2Fshape?table=items&offset=-1",
        "/v1/./shape?table=items&offset=-1",
        "/v1/x/../shape?table=items&offset=-1",
        "/shapes/..%2f?offset=-1",
        "/shapes/my-items/x?offset=-1",
        "/v1/healthz",
    ],
)
async def test_path_variants(proxy: Any, path: str) -> None:
    """Paths Electric's router (and the engine) match to no route: 404, as the engine's."""
    reply = await proxy.raw_get(path, token=proxy.tokens.make())
    assert reply.status == 404
    assert reply.body == b'{"message":"Not Found"}'  # (the engine's, byte for byte)
    assert reply.headers["Cache-Control"] == "no-store"
    assert proxy.engine.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1//shape?table=items&offset=-1",
        "//v1/shape?table=items&offset=-1",
        "/v1/%73hape?table=items&offset=-1",
        "/v1/shape//?table=items&offset=-1",
        "/shapes/my%2Ditems?offset=-1",
        "//shapes//my-items?offset=-1",
    ],
)
async def test_path_spellings_of_a_route_are_that_route_under_its_policy(
    proxy: Any, path: str
) -> None:
    """Spellings Electric's router reads as a route (empty segments dropped, each one
    percent-decoded) are that route, as on the engine: one handler, one policy, and the
    engine asked at the proxy's own `/v1/shape`. No second way in."""
    plain = "/shapes/my-items?offset=-1" if "items?" in path else SHAPE
    expected = await proxy.raw_get(plain, token=proxy.tokens.make(role="member"))
    assert expected.status == 200, expected.body
    sent = [(r.url.path, dict(r.url.query)) for r in proxy.engine.requests]
    proxy.engine.requests.clear()
    reply = await proxy.raw_get(path, token=proxy.tokens.make(role="member"))
    assert (reply.status, reply.body) == (200, expected.body)
    assert [(r.url.path, dict(r.url.query)) for r in proxy.engine.requests] == sent
    proxy.engine.requests.clear()
    assert (await proxy.raw_get(path, token="x")).status == 401
    assert proxy.engine.requests == []


@pytest.mark.parametrize("path", ["/v1/health/", "/v1//health", "/v1/%68ealth"])
async def test_path_spellings_of_health(proxy: Any, path: str) -> None:
    reply = await proxy.raw_get(path, token=proxy.tokens.make())
    assert reply.status == (await proxy.raw_get("/v1/health", token=proxy.tokens.make())).status


async def test_delete_refused_unless_the_rule_allows_it(proxy: Any) -> None:
    reply = await proxy.request("DELETE", SHAPE, token=proxy.tokens.make(role="admin"))
    assert_refused(reply, 403, "delete_not_allowed", proxy)


async def test_other_methods_refused(proxy: Any) -> None:
    for method in ("PUT", "PATCH"):
        reply = await proxy.request(method, SHAPE, token=proxy.tokens.make())
        assert reply.status == 405
    assert proxy.engine.requests == []


async def test_suspended_denied_even_if_admin(proxy: Any) -> None:
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(role="admin", suspended=True))
    assert_refused(reply, 403, "denied_by_rule", proxy)


async def test_disallowed_origin(proxy: Any) -> None:
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(), headers={"Origin": "https://evil"})
    assert_refused(reply, 403, "origin_not_allowed", proxy)


async def test_garbage_tokens_are_401_not_500(proxy: Any) -> None:
    for token in ("x", "a.b.c", "eyJ.eyJ.", "....", "e30.e30.e30", "eyJhbGciOiJSUzI1NiJ9.%%%.x"):
        reply = await proxy.get(SHAPE, token=token)
        assert reply.status == 401, (token, reply.body)
    assert proxy.engine.requests == []


async def test_malformed_queries_are_400_not_500(proxy: Any) -> None:
    token = proxy.tokens.make()
    for query in (
        '&columns="',
        "&where=%00",
        "&subset__limit=-5",
        "&params=x",
        "&table=" + "a" * 9000,
        "&where=" + "(" * 3000,
    ):
        reply = await proxy.get(SHAPE + query, token=token)
        assert 400 <= reply.status < 500, (query, reply.status, reply.body)
    assert proxy.engine.requests == []


@pytest.mark.parametrize("second", ["admin", "same"])
async def test_two_authorization_headers_are_refused(proxy: Any, second: str) -> None:
    """A front that reads the last `Authorization` and a proxy that reads the first would
    each authorise someone else: the proxy used to take the first and answer 200."""
    import asyncio

    member = proxy.tokens.make()
    other = proxy.tokens.make(sub="root", role="admin") if second == "admin" else member
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"GET {SHAPE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {member}\r\n"
        f"authorization: Bearer {other}\r\nConnection: close\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), raw
    assert json.loads(body)["message"] == (
        "Malformed HTTP request: more than one Authorization header"
    )
    assert member.encode() not in raw and other.encode() not in raw
    assert proxy.engine.requests == []


async def test_typ_header_compared_as_a_media_type(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    """RFC 7515 §4.1.9: `typ` is a media type, compared case-insensitively, `application/`
    optional. It was compared as text: an issuer writing `AT+JWT` or `application/at+jwt`
    was refused for a config saying `at+jwt`. Anything else is still refused."""
    from proxy.config.loader import build_config

    config_data["issuers"][0]["typ"] = "at+jwt"
    proxy = await make_proxy(build_config(config_data, environ))
    typ: str | int
    for typ in ("at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"):
        token = proxy.tokens.make(headers={"typ": typ})
        assert (await proxy.get(SHAPE, token=token)).status == 200, typ
    proxy.engine.requests.clear()
    for typ in ("JWT", "jwt", "at+jwt2", "application/jwt", "", 5):
        token = proxy.tokens.make(headers={"typ": typ})
        assert_refused(await proxy.get(SHAPE, token=token), 401, "invalid_token_type", proxy)
    token = proxy.tokens.make(headers={"typ": None})
    assert (await proxy.get(SHAPE, token=token)).status == 401


@pytest.mark.parametrize("max_lifetime", [7200, "unlimited"])
@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", 10**400), ("exp", 2**1024), ("nbf", -(10**400)), ("iat", -(2**1024))],
    ids=["exp-400-digits", "exp-2^1024", "nbf-400-digits", "iat-2^1024"],
)
async def test_a_date_no_float_holds_is_a_401_not_a_500(
    make_proxy: Any,
    config_data: dict[str, Any],
    environ: dict[str, str],
    claim: str,
    value: int,
    max_lifetime: int | str,
) -> None:
    """JSON numbers have any number of digits. An `exp` past what a float holds, under an
    issuer without `max_lifetime`, passed every check and then failed turning the deadline
    into a float: a 500. Every NumericDate must be a finite number a float holds."""
    from proxy.config.loader import build_config

    config_data["issuers"][0]["max_lifetime"] = max_lifetime
    proxy = await make_proxy(build_config(config_data, environ))
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(**{claim: value}))
    assert_refused(reply, 401, "invalid_claims", proxy)
    assert reply.json()["message"] == f"the token {claim} claim is out of range"


@pytest.mark.parametrize("kid", ["key-1", "key-2"])
async def test_keys_named_by_the_token_are_never_used(
    proxy: Any, other_key: KeyPair, aiohttp_server: Any, kid: str
) -> None:
    """A token signed with the attacker's key, which it embeds (`jwk`, `x5c`) and points at
    (`jku`, `x5u` on a server serving that key): only the issuer's own JWKS is consulted, and
    the attacker's server is never asked. A guard (RFC 8725 §3.10)."""
    attacker = FakeIdp(keys=[KeyPair(kid, other_key.private)])
    server = await aiohttp_server(attacker.app(), access_log=None)
    url = str(server.make_url("/jwks.json"))
    headers = {
        "kid": kid,
        "jwk": KeyPair(kid, other_key.private).public_jwk(),
        "jku": url,
        "x5u": url,
        "x5c": ["MIIB"],
    }
    token = proxy.tokens.make(key=other_key, headers=headers, role="admin")
    reason = "invalid_signature" if kid == "key-1" else "unknown_key"
    assert_refused(await proxy.get(SHAPE, token=token), 401, reason, proxy)
    assert attacker.fetches == 0
