"""A token's dates must describe a lifetime: `iat` and `nbf` no later than `exp`.

A token that claims to have been issued (`iat`) or to become valid (`nbf`) after it expires
was accepted while its `exp` was inside the leeway: `exp - iat` is then negative, which no
`max_lifetime` refuses, and pyjwt checks each date against the clock only. Such a token is
malformed, whatever the clock says: 401 `invalid_claims`, as Microsoft.IdentityModel refuses
a NotBefore after Expires (IDX10224). A date equal to `exp` is a zero-length lifetime, not a
contradiction, and is judged by the clock as before.

Also here: every date that is no JSON number (a string, a boolean, null, an object, NaN, a
number no float holds) is a JSON 401 that never echoes the token, and an ES256 signature in
its high-S form is accepted (docs/auth.md says why). Real tokens, the real proxy, a real
engine and Postgres.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import AUDIENCE, ISSUER, base_config, now
from tests.proxy.real_proxies import ITEMS_SQL
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
ORG_A = {"1", "3"}
#: The order of P-256 (the group ES256 signs in): `(r, s)` and `(r, N - s)` both verify.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(*ITEMS_SQL)


def _rows(reply: Any) -> object:
    if reply.status == 200:
        return {m["value"]["id"] for m in reply.json() if "value" in m}
    return reply.json().get("code")


def _assert_json_401(reply: Any, token: str) -> None:
    """A refusal as docs/auth.md has it: 401, JSON, not cacheable, a Bearer challenge, and
    nothing of the token in it (the harness also checks every issued token)."""
    assert reply.status == 401, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    body = reply.json()
    assert set(body) >= {"message", "code"}
    text = reply.body.decode() + repr(list(reply.headers.items()))
    for part in token.split("."):
        assert part not in text


async def test_a_token_issued_or_valid_only_after_it_expires_is_refused(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["issuers"][0]["leeway"] = 30
    proxy = await make_proxy(build_config(config, environ))
    t = now()
    cases: dict[str, tuple[dict[str, Any], int, object]] = {
        "fresh": ({}, 200, ORG_A),
        # -- contradictions, every date inside the 30 s leeway: 200 on the old code
        "iat after exp, both past": ({"exp": t - 5, "iat": t - 2}, 401, "invalid_claims"),
        "iat after exp, both ahead": ({"exp": t + 10, "iat": t + 20}, 401, "invalid_claims"),
        "nbf after exp": ({"exp": t + 5, "nbf": t + 10}, 401, "invalid_claims"),
        "nbf after exp, both past": (
            {"exp": t - 5, "iat": t - 60, "nbf": t - 2},
            401,
            "invalid_claims",
        ),
        "fractional iat after exp": ({"exp": t + 10, "iat": t + 10.5}, 401, "invalid_claims"),
        # -- boundaries: a zero-length lifetime is no contradiction, and the clock decides
        "iat equal to exp, inside the leeway": ({"exp": t - 5, "iat": t - 5}, 200, ORG_A),
        "nbf equal to exp": ({"exp": t + 10, "nbf": t + 10}, 200, ORG_A),
        "nbf before exp": ({"exp": t + 60, "nbf": t - 1}, 200, ORG_A),
        # -- what the clock refused before still comes first
        "expired beyond the leeway, iat after": (
            {"exp": t - 60, "iat": t - 40},
            401,
            "token_expired",
        ),
        "iat past the leeway": ({"exp": t + 600, "iat": t + 100}, 401, "token_not_yet_valid"),
    }
    wrong = []
    for name, (claims, status, expected) in cases.items():
        token = proxy.tokens.make(**claims)
        reply = await proxy.get(SHAPE, token=token)
        got = _rows(reply)
        if (reply.status, got) != (status, expected):
            wrong.append((name, reply.status, got))
        elif status == 401:
            _assert_json_401(reply, token)
    assert not wrong
    token = proxy.tokens.make(exp=t - 5, iat=t - 2)
    assert (await proxy.get(SHAPE, token=token)).json()["message"] == (
        "the token iat claim is after its exp claim"
    )
    token = proxy.tokens.make(exp=t + 5, nbf=t + 10)
    assert (await proxy.get(SHAPE, token=token)).json()["message"] == (
        "the token nbf claim is after its exp claim"
    )


@pytest.mark.parametrize("max_lifetime", [86400, "unlimited"])
async def test_a_date_that_is_no_number_is_a_json_401(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    max_lifetime: int | str,
) -> None:
    """pyjwt reads a date with `int()`: `true` is 1, `"0"` is 0, `1e999` overflows. Each is
    `invalid_claims` naming the claim, under an issuer with or without `max_lifetime`, and
    never a 500 or the token echoed. `exp` says so in the same words as `iat` and `nbf` (it
    was `invalid_token`, "not a number")."""
    from tests.proxy.test_claim_types_real import _signed

    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["issuers"][0]["max_lifetime"] = max_lifetime
    proxy = await make_proxy(build_config(config, environ))
    key = proxy.tokens.key
    header = json.dumps({"alg": "RS256", "kid": key.kid}).encode()
    t = now()
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "role": "member", "org_id": "org-a"}
    wrong = []
    for claim in ("exp", "iat", "nbf"):
        for spelt in ("true", "false", '"1"', "null", "[1]", '{"t": 1}', "1e999", "-1e999"):
            dates = {"exp": str(t + 600), "iat": str(t)}
            dates[claim] = spelt
            payload = json.dumps(base)[:-1] + "".join(
                f', "{name}": {value}' for name, value in dates.items()
            )
            token = _signed(key, header, (payload + "}").encode())
            proxy.tokens.issued.append(token)
            reply = await proxy.get(SHAPE, token=token)
            message = reply.json().get("message") if reply.status == 401 else None
            words = "is out of range" if spelt.endswith("e999") else "must be a number"
            if (
                reply.status != 401
                or reply.json().get("code") != "invalid_claims"
                or (message != f"the token {claim} claim {words}")
            ):
                wrong.append((claim, spelt, reply.status, reply.body[:120]))
            else:
                _assert_json_401(reply, token)
        # NaN is no JSON: the token is malformed before any claim is read
        dates = {"exp": str(t + 600), "iat": str(t), claim: "NaN"}
        payload = json.dumps(base)[:-1] + "".join(f', "{n}": {v}' for n, v in dates.items())
        token = _signed(key, header, (payload + "}").encode())
        proxy.tokens.issued.append(token)
        reply = await proxy.get(SHAPE, token=token)
        if (reply.status, _rows(reply)) != (401, "invalid_token"):
            wrong.append((claim, "NaN", reply.status, reply.body[:120]))
        else:
            _assert_json_401(reply, token)
    assert not wrong


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_an_es256_signature_in_high_s_form_verifies(
    engine: EngineProcess, environ: dict[str, str], make_proxy: Any
) -> None:
    """ECDSA signatures come in pairs: `(r, s)` and `(r, N - s)` verify alike. RFC 7518 asks
    for neither form, and many signers (Go's crypto/ecdsa, HSMs, cloud KMS) emit either at
    random, so refusing high S would refuse about half of such an issuer's tokens. The
    proxy accepts both (docs/auth.md); the other form of a token grants exactly what the
    token grants, for as long, and a changed signature is still refused."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    config = base_config(engine.url, "http://127.0.0.1:1/unused")
    issuer = config["issuers"][0]
    issuer.pop("jwks_url")
    issuer.update(algorithms=["ES256"], keys=[{"kid": "ec-1", "public_key": pem}])
    proxy = await make_proxy(build_config(config, environ))
    import jwt

    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now(),
        "exp": now() + 600,
        "role": "member",
        "org_id": "org-a",
    }
    token = jwt.encode(claims, private, algorithm="ES256", headers={"kid": "ec-1"})
    head, body, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    other = f"{head}.{body}.{_b64(r.to_bytes(32, 'big') + (P256_N - s).to_bytes(32, 'big'))}"
    low, high = (token, other) if s <= P256_N // 2 else (other, token)
    bent = f"{head}.{body}.{_b64(r.to_bytes(32, 'big') + ((s + 1) % P256_N).to_bytes(32, 'big'))}"
    proxy.tokens.issued.extend([low, high, bent])
    for spelling in (low, high):
        reply = await proxy.get(SHAPE, token=spelling)
        assert (reply.status, _rows(reply)) == (200, ORG_A)
    reply = await proxy.get(SHAPE, token=bent)
    assert (reply.status, _rows(reply)) == (401, "invalid_signature")
    _assert_json_401(reply, bent)


@pytest.mark.parametrize("exp", [1.7e308, 1e307, 2.0**64])
async def test_a_live_request_whose_token_expires_at_the_end_of_time_is_held(
    engine: EngineProcess,
    idp_server: Any,
    reloadable_proxy: Any,
    exp: float,
) -> None:
    """Under an issuer without `max_lifetime`, a token may expire when it likes. With `exp`
    1.7e308 (a finite double) every live request was a 500: its hold's deadline, in tenths
    of a second, overflowed to infinity (`Deadlines.add`). Long-polls (the three ways
    through the proxy) and an SSE stream are held and answered as for any token."""
    from functools import partial

    from tests.proxy.real_proxies import by_mode, items_config

    def config(collapse: bool) -> dict[str, Any]:
        data = items_config(engine, idp_server, collapse=collapse, sse=True)
        data["issuers"][0]["max_lifetime"] = "unlimited"  # (null is a load error)
        return data

    proxies = await by_mode(reloadable_proxy, partial(config))
    wrong = []
    for mode, proxy in proxies.items():
        token = proxy.tokens.make(exp=exp)
        first = await proxy.get(SHAPE, token=token)
        assert first.status == 200, (mode, first.body)
        handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
        live = f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true&cursor=x"
        reply = await proxy.get(live, token=token)  # (the engine's 1 s long-poll ends it)
        if (reply.status, reply.headers.get("electric-up-to-date")) != (200, ""):
            wrong.append((mode, "long-poll", reply.status, reply.body[:100]))
        async with proxy.client.get(
            live + "&live_sse=true", headers={"Authorization": f"Bearer {token}"}
        ) as stream:
            if stream.status != 200 or not stream.headers["Content-Type"].startswith(
                "text/event-stream"
            ):
                wrong.append((mode, "sse", stream.status, (await stream.read())[:100]))
    assert not wrong
