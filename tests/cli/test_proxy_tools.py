"""`shape-proxy explain` without secrets, `shape-proxy token`, and precise token errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "demo-secret-for-cli-tests-" + "z" * 20


def shape_proxy(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("ENGINE_SECRET", "SHAPE_PROXY_JWT_SECRET", "DEMO_JWT_SECRET")
            and not k.startswith("SHAPE_PROXY_")}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def assert_one_line_failure(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_explain_as_the_readme_shows_it_needs_no_secrets() -> None:
    out = shape_proxy("explain", "--config", "config/proxy.yaml", "--claims", '{"sub":"u1"}',
                      "/v1/shape?table=todos&offset=-1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["allowed"] is True and report["rule"] == "owner"
    assert report["params"] == ["u1"]
    assert report["upstream_url"].endswith("secret=[REDACTED]")
    assert "stand-in" not in out.stdout


def test_explain_with_a_token_needs_the_issuer_key_and_says_so() -> None:
    out = shape_proxy("explain", "--config", "config/demo.yaml", "--token", "x.y.z",
                      "/v1/shape?table=todos&offset=-1")  # fmt: skip
    assert_one_line_failure(out, "DEMO_JWT_SECRET", "--claims")


def test_token_minted_for_the_demo_config_is_accepted_by_explain() -> None:
    out = shape_proxy("token", "--sub", "bob", "--config", "config/demo.yaml",
                      DEMO_JWT_SECRET=SECRET)  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="shapegate")
    assert claims["sub"] == "bob" and claims["iss"] == "shapegate-demo"
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    out = shape_proxy("explain", "--config", "config/demo.yaml", "--token", token,
                      "/v1/shape?table=todos&offset=-1", DEMO_JWT_SECRET=SECRET)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["allowed"] and report["params"] == ["bob"]


def test_token_extra_claims_and_ttl() -> None:
    out = shape_proxy("token", "--sub", "bob", "--config", "config/demo.yaml", "--claims",
                      '{"role": "admin"}', "--ttl", "60", DEMO_JWT_SECRET=SECRET)  # fmt: skip
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"], audience="shapegate")
    assert claims["role"] == "admin" and claims["exp"] - claims["iat"] == 60
    out = shape_proxy("token", "--sub", "bob", "--config", "config/demo.yaml", "--ttl",
                      "99999999", DEMO_JWT_SECRET=SECRET)  # fmt: skip
    assert_one_line_failure(out, "--ttl", "max_lifetime")
    out = shape_proxy("token", "--sub", "bob", "--config", "config/demo.yaml", "--claims", "[1]",
                      DEMO_JWT_SECRET=SECRET)  # fmt: skip
    assert_one_line_failure(out, "--claims", "JSON object")


def test_token_refuses_without_the_secret_and_for_remote_keys() -> None:
    out = shape_proxy("token", "--sub", "bob", "--config", "config/demo.yaml")
    assert_one_line_failure(out, "DEMO_JWT_SECRET", "not set")
    out = shape_proxy("token", "--sub", "bob", "--config", "config/examples/multi-tenant.yaml")
    assert_one_line_failure(out, "JWKS", "identity provider")
    out = shape_proxy("token", "--config", "config/demo.yaml")
    assert_one_line_failure(out, "--sub")


def _demo_token(**claims: object) -> str:
    now = int(time.time())
    body = {"iss": "shapegate-demo", "aud": "shapegate", "sub": "bob", "iat": now,
            "exp": now + 600, **claims}  # fmt: skip
    return jwt.encode(body, SECRET, algorithm="HS256")


def _explain_token(token: str) -> dict[str, object]:
    out = shape_proxy("explain", "--config", "config/demo.yaml", "--token", token,
                      "/v1/shape?table=todos&offset=-1", DEMO_JWT_SECRET=SECRET)  # fmt: skip
    assert "Traceback" not in out.stderr
    report: dict[str, object] = json.loads(out.stdout)
    return report


def test_numeric_sub_is_invalid_claims_not_malformed() -> None:
    report = _explain_token(_demo_token(sub=42))
    assert report["allowed"] is False and report["status"] == 401
    assert report["reason"] == "invalid_claims" and "sub" in str(report["message"])


@pytest.mark.parametrize("position", [0, 10, -1])
def test_one_changed_signature_character_is_invalid_signature(position: int) -> None:
    head, body, signature = _demo_token().split(".")
    index = position % len(signature)
    changed = "A" if signature[index] != "A" else "B"
    if position == -1:
        changed = "_" if signature[index] != "_" else "-"  # padding bits: not valid base64url
    signature = signature[:index] + changed + signature[index + 1 :]
    report = _explain_token(f"{head}.{body}.{signature}")
    assert report["allowed"] is False and report["reason"] == "invalid_signature", report
