"""Claim conditions compare JSON values, not their text: a token cannot dodge a deny rule or
gain an allow rule by sending a claim of another type, case or spelling.

The proxy used to compare `str(claim)` with `str(condition)` (booleans as "true"/"false"):
`suspended: 1`, `"TRUE"`, `null` or `{"since": ...}` all slipped past a `suspended: true`
deny rule, `"BANNED"` past `role: banned`, `0.0` past `tier: 0`; and `"true"` gained an
allow rule written `mfa: true`, `"7"` one written `level: 7`. Now an allow condition needs the
same type and value (7 and 7.0 are one number; a list claim matches by an item), and a deny
condition also matches what could be the same value written another way, or a claim it
cannot read (`proxy.policy.evaluate`). Real tokens (RS256 from the fake identity provider),
the real proxy, a real engine and Postgres: the rows each token gets are checked.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import ConfigError, build_config, parse_yaml
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
ALL = {"1", "2", "3"}
ORG_A = {"1", "3"}

#: (claims added to a member of org-a's token, expected status, code or the row ids)
CASES: list[tuple[str, dict[str, Any], int, object]] = [
    # -- still served as before
    ("member", {}, 200, ORG_A),
    ("member, role in a list", {"role": ["viewer", "member"]}, 200, ORG_A),
    ("suspended false", {"suspended": False}, 200, ORG_A),
    ("suspended missing, empty list", {"suspended": []}, 200, ORG_A),
    ("admin with mfa", {"role": "admin", "mfa": True}, 200, ALL),
    ("level 7", {"role": "guest", "level": 7}, 200, ALL),
    ("level 7.0 is the number 7", {"role": "guest", "level": 7.0}, 200, ALL),
    ("tier 1", {"tier": 1}, 200, ORG_A),
    # -- deny rules: other spellings of the denied value
    ("suspended true", {"suspended": True}, 403, "denied_by_rule"),
    ("suspended 1", {"suspended": 1}, 403, "denied_by_rule"),
    ("suspended 'TRUE'", {"suspended": "TRUE"}, 403, "denied_by_rule"),
    ("suspended 'yes'", {"suspended": "yes"}, 403, "denied_by_rule"),
    ("suspended in a list", {"suspended": [False, "true"]}, 403, "denied_by_rule"),
    ("role 'BANNED'", {"role": ["member", "BANNED"]}, 403, "denied_by_rule"),
    (
        "role fullwidth",
        {"role": ["member", "\uff42\uff41\uff4e\uff4e\uff45\uff44"]},
        403,
        "denied_by_rule",
    ),
    ("role ' banned '", {"role": ["member", " banned "]}, 403, "denied_by_rule"),
    # format characters show as nothing and survive NFKC: a zero-width space, a soft hyphen
    ("role zero-width space", {"role": ["member", "ban\u200bned"]}, 403, "denied_by_rule"),
    ("role soft hyphen", {"role": ["member", "\ufeffban\u00adned"]}, 403, "denied_by_rule"),
    # other characters Unicode calls default-ignorable (shown as nothing, yet not Cf: a
    # combining grapheme joiner, a variation selector, Hangul fillers) and control
    # characters dodged the same rule, and were served org-a's rows
    ("role grapheme joiner", {"role": ["member", "ban\u034fned"]}, 403, "denied_by_rule"),
    ("role variation selector", {"role": ["member", "banned\ufe0f"]}, 403, "denied_by_rule"),
    ("role Hangul filler", {"role": ["member", "ban\u3164ned"]}, 403, "denied_by_rule"),
    ("role Mongolian selector", {"role": ["member", "b\u180banned"]}, 403, "denied_by_rule"),
    ("role a DEL control", {"role": ["member", "ban\x7fned"]}, 403, "denied_by_rule"),
    ("role a NUL", {"role": ["member", "banned\x00"]}, 403, "denied_by_rule"),
    ("tier 0.0", {"tier": 0.0}, 403, "denied_by_rule"),
    ("tier '0'", {"tier": "0"}, 403, "denied_by_rule"),
    ("tier '-0.0'", {"tier": "-0.0"}, 403, "denied_by_rule"),
    ("mfa 'false' on an admin", {"role": "admin", "mfa": "false"}, 403, "denied_by_rule"),
    ("mfa 0 on an admin", {"role": "admin", "mfa": 0}, 403, "denied_by_rule"),
    # -- deny rules: a claim present but unreadable
    ("suspended null", {"suspended": None}, 403, "denied_by_rule"),
    ("suspended an object", {"suspended": {"since": "2026"}}, 403, "denied_by_rule"),
    ("suspended a list of objects", {"suspended": [{"v": True}]}, 403, "denied_by_rule"),
    (
        "a dotted key shadowing the nested claim",
        {"account.status": "active", "account": {"status": "closed"}},
        403,
        "denied_by_rule",
    ),
    (
        "a dotted path through a value that is not an object",
        {"account": "closed"},
        403,
        "denied_by_rule",
    ),
    # -- a filter's claim Postgres cannot hold: the proxy's refusal, not the engine's
    ("org_id with a NUL", {"org_id": "org-a\x00"}, 403, "claim_unusable"),
    ("org_id list with a NUL", {"org_id": ["org-a", "b\x00"]}, 403, "claim_unusable"),
    # a lone surrogate (valid JSON, `\ud800`, no Unicode text) was dropped on the way to the
    # engine: "org-\ud800a" synced org-a's rows. Such a token is malformed (I-JSON)
    ("org_id with a lone surrogate", {"org_id": "org-\ud800a"}, 401, "invalid_token"),
    (
        "orgs list with a lone surrogate",
        {"role": "multi", "orgs": ["org-\udfffa"]},
        401,
        "invalid_token",
    ),
    ("a lone surrogate in another claim", {"note": "\udfff"}, 401, "invalid_token"),
    # -- a list claim is a JSON array, never text that Postgres reads as an array literal:
    #    `org_id = ANY({{orgs}})` with orgs "{org-a,org-b}" served both orgs (a one-value
    #    claim, perhaps a user-named org, holding many)
    ("orgs a list", {"role": "multi", "orgs": ["org-a"]}, 200, ORG_A),
    ("orgs a list of two", {"role": "multi", "orgs": ["org-a", "org-b"]}, 200, ALL),
    ("orgs array text", {"role": "multi", "orgs": "{org-a,org-b}"}, 403, "claim_unusable"),
    ("orgs array text, dims", {"role": "multi", "orgs": " [1:2]={a,org-b}"}, 403, "claim_unusable"),
    ("orgs a list of array text", {"role": "multi", "orgs": ["{org-a,org-b}"]}, 200, set()),
    # (`org_id = {{org_id}}` compares it: one value, no org is named "{org-a}")
    ("org_id array text", {"org_id": "{org-a}"}, 200, set()),
    # -- a claim that is no list where the filter reads an array: the proxy's 403, not the
    #    engine's 400 'malformed array literal' about a where the client never sent, located
    #    in the hidden filter (attack 07:58)
    ("orgs a string", {"role": "multi", "orgs": "org-a"}, 403, "claim_unusable"),
    ("orgs a string with a comma", {"role": "multi", "orgs": "org-a,org-b"}, 403, "claim_unusable"),
    ("orgs empty text", {"role": "multi", "orgs": ""}, 403, "claim_unusable"),
    ("orgs a number", {"role": "multi", "orgs": 7}, 403, "claim_unusable"),
    ("orgs a boolean", {"role": "multi", "orgs": True}, 403, "claim_unusable"),
    ("orgs an empty list", {"role": "multi", "orgs": []}, 200, set()),
    ("cast orgs a list", {"role": "within", "orgs": ["org-b"]}, 200, {"2"}),
    ("cast orgs a string", {"role": "within", "orgs": "org-b"}, 403, "claim_unusable"),
    # -- a number claim is a JSON number: 1.0 is 1 (it was bound as "1.0", which an int
    #    column refused: a 400)
    ("row 1.0", {"role": "one", "row": 1.0}, 200, {"1"}),
    ("row 1", {"role": "one", "row": 1}, 200, {"1"}),
    ("row 2.5", {"role": "one", "row": 2.5}, 403, "claim_unusable"),
    # -- allow rules: no gain from another type or spelling
    ("mfa 'true' on an admin", {"role": "admin", "mfa": "true"}, 403, "no_matching_rule"),
    ("mfa 1 on an admin", {"role": "admin", "mfa": 1}, 403, "no_matching_rule"),
    ("role 'Admin'", {"role": "Admin", "mfa": True}, 403, "no_matching_rule"),
    ("level '7'", {"role": "guest", "level": "7"}, 403, "no_matching_rule"),
    ("level true", {"role": "guest", "level": True}, 403, "no_matching_rule"),
    ("level [7] in a list", {"role": "guest", "level": [7]}, 200, ALL),
    ("level nested list", {"role": "guest", "level": [[7]]}, 403, "no_matching_rule"),
    (
        "a dotted key shadowing a nested allow claim",
        {"role": "guest", "staff.ok": True, "staff": {"ok": False}},
        403,
        "no_matching_rule",
    ),
]


def _policy(config: dict[str, Any]) -> None:
    config["tables"]["items"] = {
        "deny": [
            {"when": {"suspended": True}},
            {"when": {"role": "banned"}},
            {"when": {"tier": 0}},
            {"when": {"role": "admin", "mfa": False}},
            {"when": {"account.status": "closed"}},
        ],
        "allow": [
            {"name": "admin", "when": {"role": "admin", "mfa": True}, "all_rows": True},
            {"name": "level7", "when": {"level": 7}, "all_rows": True},
            {"name": "staff", "when": {"staff.ok": True}, "all_rows": True},
            {"name": "member", "when": {"role": "member"}, "where": "org_id = {{org_id}}"},
            {"name": "multi", "when": {"role": "multi"}, "where": "org_id = ANY({{orgs}})"},
            {"name": "one", "when": {"role": "one"}, "where": "id = {{row}}"},
            {
                "name": "within",
                "when": {"role": "within"},
                "where": "ARRAY[org_id] <@ {{orgs}}::text[]",
            },
        ],
    }


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a'), (2, 'org-b', 'b'), (3, 'org-a', 'c')",
    )


async def test_claim_types_neither_dodge_a_deny_nor_gain_an_allow(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    _policy(config)
    proxy = await make_proxy(build_config(config, environ))
    wrong = []
    for name, claims, status, expected in CASES:
        reply = await proxy.get(SHAPE, token=proxy.tokens.make(**claims))
        if reply.status == 200:
            got: object = {m["value"]["id"] for m in reply.json() if "value" in m}
        else:
            got = reply.json().get("code")
        if (reply.status, got) != (status, expected):
            wrong.append((name, reply.status, got))
    assert not wrong


#: the issuer's key, for the configs below that need one
ENV = {"K": "k" * 40}


def test_yaml_1_1_boolean_words_in_a_condition_are_refused_at_load() -> None:
    """`country: NO` is false to YAML 1.1 readers (PyYAML's safe_load): the rule compared
    claims with a boolean the operator never wrote. Now a load error; quoted, the text."""
    base = (
        "upstream: {url: 'http://127.0.0.1:1'}\n"
        "issuers: [{issuer: a, audience: b, algorithms: [HS256], keys: [{secret_env: K}]}]\n"
        "tables:\n  items:\n"
    )
    for word in ("NO", "yes", "off", "On"):
        text = (
            base + f"    deny: [{{when: {{country: {word}}}}}]\n    allow: [{{all_rows: true}}]\n"
        )
        with pytest.raises(ConfigError, match="write true or false for a boolean, or quote it"):
            build_config(parse_yaml(text), ENV)
    empty = base + "    deny: [{when: {country: []}}]\n    allow: [{all_rows: true}]\n"
    with pytest.raises(ConfigError, match="an empty list matches no token"):
        build_config(parse_yaml(empty), ENV)
    quoted = base + "    deny: [{when: {country: 'NO'}}]\n    allow: [{all_rows: true}]\n"
    loaded = build_config(parse_yaml(quoted), ENV)
    assert loaded.policy.tables[("public", "items")].deny[0].when == {"country": "NO"}
    # boolean settings take true/false only: the words are a load error there too
    flags = "collapse: no\n" + base + "    allow: [{all_rows: yes, sse: false}]\n"
    with pytest.raises(ConfigError, match=r"collapse: .*'no' is a boolean only in YAML 1\.1"):
        build_config(parse_yaml(flags), ENV)
    flags = "collapse: false\n" + base + "    allow: [{all_rows: true, sse: false}]\n"
    loaded = build_config(parse_yaml(flags), ENV)
    assert loaded.config.collapse is False
    assert loaded.config.tables["items"].allow[0].all_rows is True


def _signed(key: Any, header: bytes, payload: bytes) -> str:
    """A token signed (RS256) over the exact header and payload bytes given."""
    import base64

    from jwt.algorithms import RSAAlgorithm

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64(signature)}"


async def test_a_token_is_read_one_way_only(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """pyjwt is lenient where an issuer's own checks may not be: a claim given twice (it keeps
    the last: an org-a member's token with a second `org_id` got org-b's rows), a payload in
    UTF-16 or after a byte order mark, `"nbf": "0"` (read with `int()`), `true` as a date.
    RFC 7519 (7.2, 2) has UTF-8 JSON and NumericDates as numbers; all are refused now."""
    import json

    from tests.proxy.proxy_fakes import AUDIENCE, ISSUER, now

    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    _policy(config)
    proxy = await make_proxy(build_config(config, environ))
    key = proxy.tokens.key
    header = json.dumps({"alg": "RS256", "kid": key.kid}).encode()
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "role": "member"}
    claims.update(iat=now(), exp=now() + 600, org_id="org-a")
    payload = json.dumps(claims).encode()
    assert payload.endswith(b'"org_id": "org-a"}')

    def with_claim(name: str, value: str) -> bytes:
        return payload[:-1] + f', "{name}": {value}}}'.encode()

    cases: dict[str, tuple[Any, ...]] = {
        "plain": (header, payload, 200, ORG_A),
        "org_id twice": (header, with_claim("org_id", '"org-b"'), 401, "invalid_token"),
        "role twice": (header, with_claim("role", '"admin"'), 401, "invalid_token"),
        "kid twice": (header[:-1] + b', "kid": "other"}', payload, 401, "invalid_token"),
        "utf-16 payload": (header, payload.decode().encode("utf-16"), 401, "invalid_token"),
        "bom payload": (header, b"\xef\xbb\xbf" + payload, 401, "invalid_token"),
        "bom header": (b"\xef\xbb\xbf" + header, payload, 401, "invalid_token"),
        "nbf a string": (header, with_claim("nbf", '"0"'), 401, "invalid_claims"),
        "nbf true": (header, with_claim("nbf", "true"), 401, "invalid_claims"),
        "nbf NaN": (header, with_claim("nbf", "NaN"), 401, "invalid_token"),
        "iat true": (header, payload.replace(b'"iat": ', b'"iat": true, "x": '), 401),
        "exp true": (header, payload.replace(b'"exp": ', b'"exp": true, "x": '), 401),
    }
    wrong = []
    for name, (head, body, status, *expected) in cases.items():
        token = _signed(key, head, body)
        proxy.tokens.issued.append(token)
        reply = await proxy.get(SHAPE, token=token)
        if reply.status == 200:
            got: object = {m["value"]["id"] for m in reply.json() if "value" in m}
        else:
            got = reply.json().get("code")
        if reply.status != status or (expected and got != expected[0]):
            wrong.append((name, reply.status, got))
    assert not wrong
    # One token, one spelling (RFC 7515 base64url): pyjwt verified `<token>==` as the token
    # itself, a distinct entry in every cache keyed on it. Every other spelling is refused.
    token = _signed(key, header, payload)
    proxy.tokens.issued.append(token)
    assert (await proxy.get(SHAPE, token=token)).status == 200
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    stray_bit = alphabet[alphabet.index(token[-1]) ^ 1]  # (an RSA-2048 signature: 4 unused)
    head, body, signature = token.split(".")
    for spelling in (
        token + "=",
        token + "==",
        token[:-1] + stray_bit,
        f"{head}=.{body}.{signature}",
        f"{head}.{body}.{signature.replace('-', '+').replace('_', '/')}",
    ):
        if spelling == token:
            continue  # (a signature with neither '-' nor '_')
        proxy.tokens.issued.append(spelling)
        reply = await proxy.get(SHAPE, token=spelling)
        code = "invalid_token" if spelling.startswith(f"{head}=") else "invalid_signature"
        assert (reply.status, reply.json()["code"]) == (401, code), spelling[-8:]
    # the dates' own words
    token = _signed(key, header, payload.replace(b'"iat": ', b'"iat": true, "x": '))
    proxy.tokens.issued.append(token)
    assert (await proxy.get(SHAPE, token=token)).json()["message"] == (
        "the token iat claim must be a number"
    )


async def test_a_scalar_claim_where_a_list_is_read_is_the_proxys_refusal(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """`org_id = ANY({{orgs}})` with a token whose `orgs` is `"org-a"`: the engine answered
    400 `{"errors":{"where":["At location 13: malformed array literal: \"org-a\""]}}`, a
    where the client never sent, and where the claim sits in the hidden filter (attack
    07:58). Now a 403 `claim_unusable` naming the claim only, with or without a client where,
    on GET and HEAD, before anything reaches the engine."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    _policy(config)
    config["tables"]["items"]["allow"][4]["client_where"] = "validated"
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make(role="multi", orgs="org-a")
    paths = (
        SHAPE,
        SHAPE + "&where=title%20%3C%3E%20%27z%27",
        SHAPE + "&where=id%20%3D%20%241&params%5B1%5D=1",
    )
    for path in paths:
        head = await proxy.request("HEAD", path, token=token)
        assert head.status == 403, (path, head.status)
        reply = await proxy.get(path, token=token)
        assert reply.status == 403, (path, reply.status, reply.body)
        body = reply.json()
        assert body == {
            "message": "the token's 'orgs' claim must be a JSON array for this shape",
            "code": "claim_unusable",
        }, path
        for hidden in ("ANY", "org_id", "location", "array literal", "where"):
            assert hidden not in reply.body.decode(), (path, hidden)
    # the same token with the list it should hold is served
    token = proxy.tokens.make(role="multi", orgs=["org-a"])
    reply = await proxy.get(SHAPE + "&where=title%20%3C%3E%20%27z%27", token=token)
    assert reply.status == 200
    assert {m["value"]["id"] for m in reply.json() if "value" in m} == ORG_A


#: Filters that read a claim as an array through an expression around it: a CASE's result,
#: COALESCE's or NULLIF's argument (wherefuzz 01:58 asked about the CASE).
WRAPPED_ARRAY_READS = [
    "org_id = ANY(CASE WHEN id > 0 THEN {{orgs}} ELSE '{}'::text[] END)",
    "org_id = ANY(CASE id WHEN 0 THEN '{}'::text[] ELSE {{orgs}} END)",
    "org_id = ANY(COALESCE({{orgs}}, '{}'::text[]))",
    "org_id = ANY(NULLIF({{orgs}}, '{}'::text[]))",
]


@pytest.mark.parametrize("where", WRAPPED_ARRAY_READS)
async def test_a_scalar_claim_read_as_an_array_through_an_expression_is_the_proxys_refusal(
    where: str, engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """`org_id = ANY(CASE WHEN .. THEN {{orgs}} END)` with a token whose `orgs` is `"org-a"`
    (or 7) went to the engine, whose refusal of the filter the proxy told as 403 "claim is
    not a value this shape's filter can use": the proxy's array slots did not look inside
    the CASE. Now it says, before the engine, what `ANY({{orgs}})` says: the claim must be
    a JSON array. Text in
    array syntax (`"{org-a,org-b}"`) is refused there as before (never one claim read as many
    values), and a JSON list is served: the engine's rows for the org it names."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"]["items"] = {"allow": [{"name": "m", "when": {"role": "m"}, "where": where}]}
    proxy = await make_proxy(build_config(config, environ))
    for claim in ("org-a", 7, "{org-a,org-b}", " [1:2]={org-a,org-b}"):
        reply = await proxy.get(SHAPE, token=proxy.tokens.make(role="m", orgs=claim))
        assert (reply.status, reply.json()["code"]) == (403, "claim_unusable"), (claim, reply.body)
        for hidden in ("ANY", "org_id", "location", "array literal", "where"):
            assert hidden not in reply.body.decode(), (claim, hidden)
        if not str(claim).lstrip().startswith(("{", "[")):
            assert reply.json()["message"] == (
                "the token's 'orgs' claim must be a JSON array for this shape"
            ), (claim, reply.body)
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(role="m", orgs=["org-a"]))
    assert reply.status == 200, reply.body
    assert {m["value"]["id"] for m in reply.json() if "value" in m} == ORG_A
