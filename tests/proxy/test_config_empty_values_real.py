"""Values an envsubst with an unset variable (or a slip of the pen) leaves in the policy file,
which loaded and meant something else than the operator wrote (proxycfg, 2026-12-07, second
session): each a real file loaded by `load_config`, the proxy in front of a real
`sync-engine` and Postgres.

- `cache.max_age_cap:` left empty (null) read as "no cap": browsers kept a per-user answer
  as long as the engine said. Now a load error naming the line, as `max_lifetime` is; the
  engine's own max-age is said in words, `max_age_cap: unlimited`.
- A claim condition on empty text (`account_status: "${STATUS}"`, the variable unset): the
  deny matched only blank claims, and the suspended account was served. A load error now.
- `true` or `false` where a number is expected (`max_age_cap: false`, `port: true`, a
  limit): YAML's booleans are Python ints, so they loaded as 0 or 1. A load error now,
  naming the setting's line, in every section (limits and a rule's limits too).
- `audience: "${AUDIENCE}"` unset: every token was refused (401) by a proxy that ran; a rule's
  column written with spaces around it or an invisible character: every request of the
  rule was the engine's 400. Load errors now.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess

PATH = "/v1/shape?table=items&offset=-1"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        "INSERT INTO items VALUES (1, 'one')",
    )


def _max_age(reply: Any) -> int | None:
    found = re.search(r"max-age=(\d+)", reply.headers.get("Cache-Control", ""))
    return None if found is None else int(found.group(1))


async def test_max_age_cap_left_empty_is_refused_and_unlimited_keeps_the_engines(
    engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    """On the old code `max_age_cap:` (null) loaded and every answer kept the engine's
    max-age (a week for an initial chunk) where the file's reader expects a cap."""
    rule = "tables:\n  items:\n    allow: [{all_rows: true}]\n"
    head = proxy_from_yaml.head(engine.url)
    for empty in ("", " null", " ~"):
        with pytest.raises(ConfigError, match=r"cache\.max_age_cap \(line 8\): .*empty \(null\)"):
            proxy_from_yaml.load(head + f"cache:\n  max_age_cap:{empty}\n" + rule)
    capped = await proxy_from_yaml(head + "cache:\n  max_age_cap: 60\n" + rule, name="capped")
    token = capped.tokens.make()
    reply = await capped.get(PATH, token=token)
    assert reply.status == 200, reply.body
    assert _max_age(reply) == 60
    engines = await proxy_from_yaml(
        head + "cache:\n  max_age_cap: unlimited\n" + rule, name="unlimited"
    )
    reply = await engines.get(PATH, token=token)
    assert reply.status == 200, reply.body
    engine_max_age = _max_age(reply)
    assert engine_max_age is not None and engine_max_age > 60, reply.headers


async def test_a_condition_on_empty_text_is_refused(
    engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    """On the old code the deny on `""` loaded and the suspended token was served (200)."""
    text = proxy_from_yaml.head(engine.url) + (
        "tables:\n  items:\n"
        "    deny: [{when: {account_status: ''}}]\n"
        "    allow: [{all_rows: true}]\n"
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert "(line 9)" in str(exc) and "is empty text" in str(exc), exc
    else:
        token = proxy.tokens.make(account_status="suspended")
        reply = await proxy.get(PATH, token=token)
        assert reply.status == 403, reply.body
    for value in ("' '", "[suspended, '']"):
        with pytest.raises(ConfigError, match=r"allow\.0\.when \(line 10\): .*empty text"):
            proxy_from_yaml.load(
                text.replace("account_status: ''}}]", "a: 1}}]").replace(
                    "{all_rows: true}", f"{{all_rows: true, when: {{account_status: {value}}}}}"
                )
            )


@pytest.mark.parametrize(
    ("section", "line", "where"),
    [
        ("cache:\n  max_age_cap: false\n", 8, "cache.max_age_cap"),
        ("server:\n  port: true\n", 8, "server.port"),
        ("limits:\n  rate: true\n", 8, "limits.rate"),
        ("limits:\n  max_subsets: true\n", 8, "limits.max_subsets"),
        ("upstream2: {first_byte_timeout: true}\n", 1, "upstream.first_byte_timeout"),
        ("issuer: {max_lifetime: true}\n", 3, "issuers.0.max_lifetime"),
        ("rule: {limits: {burst: false}}\n", 11, "tables.items.allow.0.limits.burst"),
    ],
)
def test_a_boolean_where_a_number_is_expected_is_refused(
    proxy_from_yaml: Any, section: str, line: int, where: str
) -> None:
    """On the old code each loaded, as 0 or 1 (`max_age_cap: false`: no browser kept any
    answer; `rate: true`: one request a second)."""
    head = proxy_from_yaml.head("http://127.0.0.1:9")
    rule = "tables:\n  items:\n    allow:\n      - all_rows: true\n"
    if section.startswith("upstream2"):
        head = head.replace("first_byte_timeout: 10", "first_byte_timeout: true")
        section = ""
    elif section.startswith("issuer"):
        head = head.replace("  - issuer:", "  - max_lifetime: true\n    issuer:")
        section = ""
    elif section.startswith("rule"):
        rule += "        limits: {burst: false}\n"
        section = ""
    text = head + section + rule
    with pytest.raises(ConfigError) as raised:
        proxy_from_yaml.load(text)
    assert f"{where} (line {line}): " in str(raised.value), raised.value
    assert "is a boolean, not a number" in str(raised.value)
    fixed = text.replace("true", "1").replace("false", "1").replace("all_rows: 1", "all_rows: true")
    assert proxy_from_yaml.load(fixed).config.tables["items"]


def test_an_empty_audience_is_refused(proxy_from_yaml: Any) -> None:
    """On the old code `audience: ''` loaded, and every token was refused with a 401 (an
    empty `aud` reads as none): the proxy ran, refusing everyone, for a missing variable.
    A load error naming the line now."""
    rule = "tables:\n  items:\n    allow: [{all_rows: true}]\n"
    head = proxy_from_yaml.head("http://127.0.0.1:9")
    for empty in ("''", "[app, ' ']"):
        text = re.sub(r'    audience: "[^"]*"\n', f"    audience: {empty}\n", head) + rule
        with pytest.raises(ConfigError, match=r"issuers\.0\.audience \(line 4\): .* is empty"):
            proxy_from_yaml.load(text)


@pytest.mark.parametrize(
    ("column", "why"),
    [
        ("' title'", "spaces around it"),
        ('"title\\u200b"', "invisible character U\\+200B"),
    ],
)
async def test_a_rule_column_spelt_unlike_postgres_is_refused(
    engine: EngineProcess, proxy_from_yaml: Any, column: str, why: str
) -> None:
    """On the old code each loaded, and every request of the rule was the engine's 400
    about a column the client never named."""
    text = proxy_from_yaml.head(engine.url) + (
        f"tables:\n  items:\n    allow: [{{all_rows: true, columns: [id, {column}]}}]\n"
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert re.search(rf"allow\.0\.columns \(line 9\): .*{why}", str(exc)), exc
        return
    reply = await proxy.get(PATH, token=proxy.tokens.make())
    assert reply.status == 200, reply.body
    assert reply.json()[0]["value"] == {"id": "1", "title": "one"}


def test_a_source_id_left_empty_is_refused(proxy_from_yaml: Any) -> None:
    """On the old code `source_id:` (null) loaded and every request went to the engine's own
    database, not the source (`''`: to no source): a proxy that ran, refusing everyone."""
    rule = "tables:\n  items:\n    allow: [{all_rows: true}]\n"
    head = proxy_from_yaml.head("http://127.0.0.1:9")
    for empty in ("", " ''", " ' '"):
        text = head.replace("secret_env:", f"source_id:{empty}, secret_env:", 1) + rule
        text = text.replace("source_id:,", "source_id: ,")
        with pytest.raises(ConfigError, match=r"upstream\.source_id \(line 1\): .*empty: give"):
            proxy_from_yaml.load(text)
    text = head.replace("secret_env:", "source_id: SRC, secret_env:", 1) + rule
    assert proxy_from_yaml.load(text).config.upstream.source_id == "SRC"


def test_max_connections_per_address_is_a_number_or_left_out(proxy_from_yaml: Any) -> None:
    """`server.max_connections_per_address` (read by proxy/http/serve.py): a number of at
    least 1; left empty, 0, or a boolean, a load error naming the line; left out, None (the
    default share)."""
    head = proxy_from_yaml.head("http://127.0.0.1:9")
    rule = "tables:\n  items:\n    allow: [{all_rows: true}]\n"
    for value, words in (("", "empty \\(null\\)"), ("0", "greater than or equal to 1"),
                         ("true", "is a boolean")):  # fmt: skip
        text = head + f"server:\n  max_connections_per_address: {value}\n" + rule
        with pytest.raises(
            ConfigError, match=rf"max_connections_per_address \(line 8\): .*{words}"
        ):
            proxy_from_yaml.load(text)
    text = head + "server:\n  max_connections_per_address: 12\n" + rule
    assert proxy_from_yaml.load(text).config.server.max_connections_per_address == 12
    assert proxy_from_yaml.load(head + rule).config.server.max_connections_per_address is None


async def test_a_named_shape_saying_clients_may_filter_is_warned_about(
    engine: EngineProcess, proxy_from_yaml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A named shape's `client_where: validated` loaded silently, and every client `where`
    was refused there (its URL is its definition): the file said something the proxy never
    did. It still loads (it errs safe), with a warning naming the rule."""
    text = proxy_from_yaml.head(engine.url) + (
        "shapes:\n  mine:\n    table: items\n"
        "    allow: [{name: own, all_rows: true, client_where: validated}]\n"
    )
    proxy = await proxy_from_yaml(text)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "shapes.mine: allow rule 'own' (allow.0) says client_where: validated" in w for w in warned
    ), warned
    token = proxy.tokens.make()
    reply = await proxy.get("/shapes/mine?offset=-1&where=id%20%3D%201", token=token)
    assert (reply.status, reply.json()["code"]) == (400, "named_shape_definition"), reply.body


@pytest.mark.parametrize(
    ("setting", "line", "where"),
    [
        ("server:\n  reload_interval: .inf\n", 8, "server.reload_interval"),
        ("server:\n  token_cache_ttl: .nan\n", 8, "server.token_cache_ttl"),
        ("limits:\n  rate: .inf\n", 8, "limits.rate"),
        ("    jwks_ttl: .inf\n", 7, "issuers.0.jwks_ttl"),
        # Quoted, pydantic made the string a float after the check above: each loaded as inf.
        ('server:\n  reload_interval: "inf"\n', 8, "server.reload_interval"),
        ('server:\n  reload_interval: "1e999"\n', 8, "server.reload_interval"),
        ("server:\n  token_cache_ttl: 'Infinity'\n", 8, "server.token_cache_ttl"),
        ('limits:\n  rate: "+inf"\n', 8, "limits.rate"),
        ('    jwks_ttl: "inf"\n', 7, "issuers.0.jwks_ttl"),
    ],
)
def test_an_infinite_number_setting_is_refused(
    proxy_from_yaml: Any, setting: str, line: int, where: str
) -> None:
    """On the old code `.inf` loaded wherever a setting had no upper bound:
    `reload_interval: .inf` never polled the file again, so an edit narrowing the policy
    never applied (`jwks_ttl: .inf`: a key dropped from the issuer's set was kept). A
    quoted infinity ("inf", "1e999", "Infinity") loaded too, until the models refused
    non-finite numbers however spelled (`allow_inf_nan=False`)."""
    text = proxy_from_yaml.head("http://127.0.0.1:9") + setting
    text += "tables:\n  items:\n    allow: [{all_rows: true}]\n"
    with pytest.raises(ConfigError) as raised:
        proxy_from_yaml.load(text)
    assert f"{where} (line {line}): " in str(raised.value), raised.value
    assert "finite number" in str(raised.value)
