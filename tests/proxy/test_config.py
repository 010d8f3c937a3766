"""Config loading: the shipped examples, field-naming errors, env secrets, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.__main__ import main
from proxy.config.loader import ConfigError, build_config, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "config" / "proxy.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml"))]
ENV = {"ENGINE_SECRET": "e" * 32, "SHAPE_PROXY_JWT_SECRET": "j" * 32}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    loaded = load_config(path, ENV)
    assert loaded.config.tables


def test_three_examples_shipped() -> None:
    assert {p.name for p in EXAMPLES} >= {"proxy.yaml", "multi-tenant.yaml", "admin.yaml"}


def _base() -> dict[str, Any]:
    return {
        "upstream": {"url": "http://127.0.0.1:3000", "secret_env": "ENGINE_SECRET"},
        "issuers": [
            {
                "issuer": "https://i/",
                "audience": "a",
                "algorithms": ["RS256"],
                "jwks_url": "https://i/jwks",
            }
        ],
        "tables": {"items": {"allow": [{"where": "org_id = {{org_id}}"}]}},
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["tables"]["items"]["allow"][0].update(colums=["id"]),
            "tables.items.allow.0.colums: Extra inputs are not permitted",
        ),
        (
            lambda c: c["tables"]["items"]["allow"][0].pop("where"),
            "tables.items.allow.0: Value error, give either a where filter or all_rows",
        ),
        (
            lambda c: c["tables"]["items"]["allow"][0].update(where="name = '{{sub}}'"),
            "tables.items.allow.0.where: write claim values only as {{claim.path}}",
        ),
        (
            lambda c: c["tables"]["items"]["allow"][0].update(where="a = {{x}}) OR (1=1"),
            "tables.items.allow.0.where: does not parse",
        ),
        (
            lambda c: c["issuers"][0].update(algorithms=["RS256", "HS256"]),
            "issuers.0: Value error, algorithms: do not mix HMAC",
        ),
        (lambda c: c["issuers"][0].update(algorithms=["none"]), "issuers.0.algorithms.0"),
        (
            lambda c: c["upstream"].update(secret_env="MISSING_VAR"),
            "upstream.secret_env: environment variable MISSING_VAR is not set",
        ),
        (
            lambda c: c["upstream"].update(url="ftp://x"),
            "upstream.url: Value error, must be an http",
        ),
        (lambda c: c.update(tables={}), "give at least one entry under tables or shapes"),
        (lambda c: c["tables"].update({"a.b.c": c["tables"]["items"]}), "tables.a.b.c"),
        (
            lambda c: c.update(cors={"allow_origins": ["*"], "allow_credentials": True}),
            "cors: Value error, allow_credentials: true needs the origins listed",
        ),
    ],
)
def test_errors_name_the_field(mutate: Any, message: str) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        build_config(data, {"ENGINE_SECRET": "super-secret-value"})
    assert message in str(info.value)
    assert "super-secret-value" not in str(info.value)


def test_secret_resolved_from_env_and_masked() -> None:
    loaded = build_config(_base(), {"ENGINE_SECRET": "super-secret-value"})
    assert loaded.upstream_secret is not None
    assert loaded.upstream_secret.get_secret_value() == "super-secret-value"
    assert "super-secret-value" not in repr(loaded)


def test_short_hmac_secret_refused() -> None:
    data = _base()
    data["issuers"][0] = {
        "issuer": "https://i/",
        "audience": "a",
        "algorithms": ["HS256"],
        "keys": [{"secret_env": "K"}],
    }
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        build_config(data, {"ENGINE_SECRET": "x", "K": "short"})


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstream:\n  url: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(path, {})


def test_a_key_given_twice_is_refused_not_last_one_wins(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second `todos` block replaced the first's
    owner filter with all rows, and the proxy served every row to every member (attack,
    2026-12-05). Refused at load (and so on reload), naming the key and where it is."""
    from proxy.config.loader import parse_yaml
    from tests.proxy.proxy_fakes import base_config

    config = base_config("http://engine:3000", "https://idp/jwks.json")
    config.pop("tables", None)
    head = yaml.safe_dump(config)
    tables = (
        "tables:\n"
        "  todos:\n"
        "    allow: [{when: {role: member}, where: 'owner = {{sub}}'}]\n"
        "  notes:\n"
        "    allow: [{when: {role: member}, all_rows: true}]\n"
    )
    twice = "  todos:\n    allow: [{when: {role: member}, all_rows: true}]\n"
    path = tmp_path / "twice.yaml"
    path.write_text(head + tables)
    assert load_config(path, {"ENGINE_SECRET": "s" * 20}).policy is not None  # (valid once)
    path.write_text(head + tables + twice)
    line = (head + tables).count("\n") + 1
    with pytest.raises(ConfigError, match=rf"line {line}, column 3: found the key 'todos' twice"):
        load_config(path, {"ENGINE_SECRET": "s" * 20})
    # Nested too; a merge (`<<`) may still be overridden on purpose.
    path.write_text(head + tables.replace("all_rows: true}]", "all_rows: true}]\n    allow: []"))
    with pytest.raises(ConfigError, match="found the key 'allow' twice"):
        load_config(path, {"ENGINE_SECRET": "s" * 20})
    assert parse_yaml("base: &b {a: 1, b: 2}\nother:\n  <<: *b\n  b: 3\n")["other"] == {
        "a": 1,
        "b": 3,
    }


def test_cli_bad_config_exits_2(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tables: {items: {allow: [{all_rows: true}]}}\n")
    with pytest.raises(SystemExit) as info:
        main(["--config", str(path)])
    assert info.value.code == 2
    assert "upstream: Field required" in capsys.readouterr().err


def test_cli_explain(tmp_path: Path) -> None:
    import jwt

    from tests.proxy.proxy_fakes import now

    token = jwt.encode(
        {
            "iss": "https://app.example.com/",
            "aud": "shapegate",
            "sub": "u1",
            "exp": now() + 60,
            "iat": now(),
        },
        ENV["SHAPE_PROXY_JWT_SECRET"],
        algorithm="HS256",
    )
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "explain",
        "--config",
        str(EXAMPLES[0]),
        "--token",
        token,
        "/v1/shape?table=todos&offset=-1&where=done = false",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "PATH": ""}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["allowed"] is True and report["rule"] == "owner"
    assert report["where"] == (
        "(owner_id = $1) AND COALESCE(NULLIF((owner_id = $1) IS TRUE, true), (done = false))"
    )
    assert report["params"] == ["u1"]
    assert "secret=[REDACTED]" in report["upstream_url"]
    assert ENV["ENGINE_SECRET"] not in out.stdout + out.stderr

    denied = subprocess.run(
        [*cmd[:-3], "--claims", '{"sub": "u1"}', "/v1/shape?table=users&offset=-1"],
        capture_output=True,
        text=True,
        env={**ENV, "PATH": ""},
        cwd=ROOT,
    )
    assert denied.returncode == 1
    assert json.loads(denied.stdout)["reason"] == "table_not_allowed"


@pytest.mark.parametrize(
    ("where", "construct"),
    [
        ("org_id IN (SELECT org_id FROM members WHERE user_id = {{sub}})", "subquery"),
        ("random() < 0.5", "random"),
        ("title::money = '1'", "money"),
    ],
)
def test_policy_filter_the_engine_refuses_fails_to_load(
    tmp_path: Path, where: str, construct: str
) -> None:
    """A filter the engine would refuse fails at load, naming the file, the rule and the
    construct (not at the first request, as a 400 for every user of the rule)."""
    data = _base()
    data["tables"]["items"]["allow"][0].update(name="members", where=where)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path, {"ENGINE_SECRET": "x"})
    message = str(info.value)
    assert str(path) in message
    assert "tables.items.allow.0 (rule 'members').where" in message
    assert construct in message


@pytest.mark.parametrize(
    "spelling",
    [
        "0F3A9C1E-5B7D-4E2A-9C3B-1D2E3F4A5B6C",
        "{0f3a9c1e-5b7d-4e2a-9c3b-1d2e3f4a5b6c}",
        "urn:uuid:0f3a9c1e-5b7d-4e2a-9c3b-1d2e3f4a5b6c",
        "0f3a9c1e5b7d4e2a9c3b1d2e3f4a5b6c",
    ],
)
def test_a_source_id_is_written_as_the_engine_writes_it(spelling: str) -> None:
    """The engine takes a source id only lower-case with hyphens (another spelling is an
    unknown id, a 401 at the first request): the proxy writes any spelling of a uuid so."""
    data = _base()
    data["upstream"]["source_id"] = spelling
    loaded = build_config(data, {"ENGINE_SECRET": "e" * 32})
    assert loaded.config.upstream.source_id == "0f3a9c1e-5b7d-4e2a-9c3b-1d2e3f4a5b6c"
