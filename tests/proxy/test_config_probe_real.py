"""Hand-written configs that loaded but let a user see more than the file says (proxycfg's
config probe, 2026-12-07, afternoon batch): each a real file loaded by `load_config`
(`proxy_from_yaml`), the proxy in front of a real `sync-engine` and Postgres.

- A quoted table name holding a glob character (`'"user*"'`, the table literally named
  `user*`) was matched as a pattern: every table whose name starts with `user` was served by
  its rule, `user_secrets` too. A load error now while the policy reads it so
  (`_quoted_globs`; w-proxy e742ebb1 makes a quoted part a name).
- Left empty by an envsubst with its variable unset: an issuer's `typ:` (null read as "any
  typ": an ID token passed where only access tokens should), a condition's claim name
  (`"${CLAIM}": suspended` became `"": suspended`, a deny that never fires) and a boolean
  setting (null). Each a load error now, naming the line.
- A value with an explicit tag (`!!bool yes`, `!!int 0777`) took YAML 1.1's reading, and one
  its tag's constructor could not read (`!!int abc`) raised out of the loader (a traceback at
  start). Read as both YAMLs read it, or a load error.
- A deny on a claim path no token can have (`$.account_status`, `statuses[0]`,
  `account..status`) never fired. A load error now.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        'CREATE TABLE "user*" (id int PRIMARY KEY, name text)',
        "INSERT INTO \"user*\" VALUES (1, 'star')",
        "CREATE TABLE user_secrets (id int PRIMARY KEY, secret text)",
        "INSERT INTO user_secrets VALUES (1, 's1')",
    )


@pytest.mark.parametrize(
    "key", ["'\"user*\"'", "'public.\"user*\"'", '\'"pub?ic"."user_secrets"\'', "'\"*\"'"]
)
async def test_a_quoted_name_with_a_glob_character_is_no_pattern(
    engine: EngineProcess, proxy_from_yaml: Any, key: str
) -> None:
    """On the old code the file loaded and `user_secrets` was served (200, its rows). Now
    the key is refused at load while the policy would match it as a pattern, and once the
    policy reads a quoted part as a name (w-proxy e742ebb1) it loads and serves only the
    table it names."""
    text = (
        proxy_from_yaml.head(engine.url) + f"tables:\n  {key}:\n    allow: [{{all_rows: true}}]\n"
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert re.search(r"the quoted name .* matches such a name as a pattern", str(exc)), exc
        return
    reply = await proxy.get("/v1/shape?table=user_secrets&offset=-1", token=proxy.tokens.make())
    assert reply.status == 403, reply.body


async def test_typ_left_empty_is_refused(engine: EngineProcess, proxy_from_yaml: Any) -> None:
    """On the old code `typ:` (null) loaded and a token whose typ is `id+jwt` was served."""
    rule = "tables:\n  user_secrets:\n    allow: [{all_rows: true}]\n"
    for empty in ("", " null", " ''"):
        text = proxy_from_yaml.head(engine.url) + f"    typ:{empty}\n" + rule
        try:
            proxy = await proxy_from_yaml(text, name=f"typ{len(empty)}")
        except ConfigError as exc:
            assert re.search(r"issuers\.0\.typ \(line 7\): .*empty.*remove the key", str(exc))
            continue
        token = proxy.tokens.make(headers={"typ": "id+jwt"})
        reply = await proxy.get("/v1/shape?table=user_secrets&offset=-1", token=token)
        assert reply.status == 401, reply.body
    proxy = await proxy_from_yaml(proxy_from_yaml.head(engine.url) + "    typ: at+jwt\n" + rule)
    path = "/v1/shape?table=user_secrets&offset=-1"
    reply = await proxy.get(path, token=proxy.tokens.make(headers={"typ": "id+jwt"}))
    assert (reply.status, reply.json()["code"]) == (401, "invalid_token_type")
    reply = await proxy.get(path, token=proxy.tokens.make(headers={"typ": "at+jwt"}))
    assert reply.status == 200, reply.body


async def test_an_empty_claim_name_in_a_condition_is_refused(
    engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    """On the old code the deny on `""` loaded and never fired: the suspended token was
    served."""
    text = proxy_from_yaml.head(engine.url) + (
        "tables:\n  user_secrets:\n"
        "    deny: [{when: {'': suspended}}]\n"
        "    allow: [{all_rows: true}]\n"
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert "an empty claim name names no claim" in str(exc), exc
        assert "(line 9)" in str(exc), exc
    else:
        token = proxy.tokens.make(account_status="suspended")
        reply = await proxy.get("/v1/shape?table=user_secrets&offset=-1", token=token)
        assert reply.status == 403, reply.body
    with pytest.raises(ConfigError, match=r"require.*an empty claim name"):
        proxy_from_yaml.load(text.replace("tables:", "    require: ['']\ntables:", 1))


def test_a_boolean_setting_left_empty_is_refused(proxy_from_yaml: Any) -> None:
    text = proxy_from_yaml.head("http://127.0.0.1:9") + (
        "tables:\n  items:\n    allow: [{all_rows: true, sse: SSE}]\n"
    )
    with pytest.raises(ConfigError, match=r"allow\.0\.sse \(line 9\): .*empty \(null\)"):
        proxy_from_yaml.load(text.replace("SSE", "null"))
    assert proxy_from_yaml.load(text.replace("SSE", "false")).config.tables["items"].allow[0]


def test_the_capitals_warning_quotes_each_part_and_never_a_pattern(
    proxy_from_yaml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning for unquoted capitals told `Sales.Q1` to write `'"Sales.Q1"'` (one table
    named `Sales.Q1` in public) and `PUBLIC.Item*` to quote the pattern (now a load error):
    each part is quoted on its own, and a pattern part is not quoted at all."""
    text = (
        proxy_from_yaml.head("http://127.0.0.1:9")
        + "tables:\n"
        + "".join(
            f"  {key}:\n    allow: [{{all_rows: true}}]\n"
            for key in ("Sales.Q1", "'\"Sales\".Q2'", "PUBLIC.Item*", "User")
        )
    )
    proxy_from_yaml.load(text)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("tables.Sales.Q1: Sales.Q1 names sales.q1" in w for w in warned), warned
    assert any("""quote it: '"Sales"."Q1"'""" in w for w in warned), warned
    assert any("""tables."Sales".Q2: "Sales".Q2 names "Sales".q2""" in w for w in warned)
    assert any("""quote it: '"Sales"."Q2"'""" in w for w in warned), warned
    item = [w for w in warned if w.startswith(("/", "<")) and "PUBLIC.Item*" in w]
    assert len(item) == 1 and "list a table spelt with capitals by its quoted name" in item[0]
    assert any("""quote it: '"User"'""" in w for w in warned), warned


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("!!int abc", r"a !!int value that YAML 1\.1 and 1\.2 read differently, or not as"),
        ("!!float abc", r"a !!float value"),
        ("!!int 0777", r"a !!int value that YAML 1\.1 and 1\.2 read differently"),
        ("!!timestamp abc", r"a date \(!!timestamp\) is YAML 1\.1 only"),
        ("!!bool maybe", r"!!bool takes true or false only"),
        ("!!bool yes", r"!!bool takes true or false only"),
    ],
)
def test_a_tagged_value_is_read_as_both_yamls_read_it_or_refused(
    proxy_from_yaml: Any, value: str, said: str
) -> None:
    """An explicit tag took PyYAML's YAML 1.1 reading (`!!bool yes` True, `!!int 0777` 511,
    which YAML 1.2 reads as 777) and a value the tag's constructor could not read raised a
    ValueError, AttributeError or KeyError out of `load_config` (not a `ConfigError`: a
    traceback at start, quoting the value). Each is a load error naming the line now."""
    head = proxy_from_yaml.head("http://127.0.0.1:9")
    rule = "tables:\n  items:\n    allow: [{all_rows: true}]\n"
    setting = "server: {port: VALUE}\n" if "int" in value else "collapse: VALUE\n"
    with pytest.raises(ConfigError, match=rf"invalid YAML at line 7, column \d+: {said}") as err:
        proxy_from_yaml.load(head + setting.replace("VALUE", value) + rule)
    assert "abc" not in str(err.value) and "maybe" not in str(err.value)
    good = {"server: {port: VALUE}\n": "!!int 8080", "collapse: VALUE\n": "!!bool false"}[setting]
    loaded = proxy_from_yaml.load(head + setting.replace("VALUE", good) + rule)
    assert (loaded.config.server.port, loaded.config.collapse) in ((8080, True), (8080, False))


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("$.account_status", r"JSONPath \(\$, \[n\]\) is not read here"),
        ("statuses[0]", r"JSONPath"),
        ("account..status", r"a dotted claim path with an empty part"),
        (".account_status", r"a dotted claim path with an empty part"),
    ],
)
async def test_a_claim_path_no_token_can_have_is_refused(
    engine: EngineProcess, proxy_from_yaml: Any, path: str, said: str
) -> None:
    """A deny on `$.account_status` (JSONPath) or `account..status` looked up a claim no
    token has, so it never fired: on the old code the suspended token was served."""
    text = proxy_from_yaml.head(engine.url) + (
        "tables:\n  user_secrets:\n"
        f"    deny: [{{when: {{'{path}': suspended}}}}]\n"
        "    allow: [{all_rows: true}]\n"
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert re.search(rf"deny\.0\.when \(line 9\): .*{said}", str(exc)), exc
        return
    token = proxy.tokens.make(account_status="suspended", statuses=["suspended"])
    reply = await proxy.get("/v1/shape?table=user_secrets&offset=-1", token=token)
    assert reply.status == 403, reply.body
