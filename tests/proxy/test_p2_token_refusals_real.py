"""A refused token says what to fix: `explain --token` shows the token's iss/aud/alg/kid beside
the config's accepted values, a `require:` claim it lacks is named, and a proxy with no
issuers says so (real `shape-proxy explain` process; real proxy app, engine and Postgres).

newuser MEDIUM: `explain` on invalid_issuer said only "the token issuer is not accepted", hiding
the #1 JWT setup mistake (a trailing slash in iss). newuser LOW: `require: [org_id]` without
org_id was "the token lacks a required claim". proxycfg 13:58: with no `issuers:` a token was
refused in words that send the operator to the keys or the token.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import yaml

from proxy.config.loader import build_config
from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parents[2]
KEY = "p2-explain-issuer-key-" + "z" * 42

engine_secret, engine = shared_engine_fixtures(
    "p2tokens",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
    "CREATE TABLE notes (id int PRIMARY KEY, org_id text NOT NULL, body text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a')",
    args=("--long-poll-timeout", "1"),
)


def _config(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    config["issuers"] = [
        {
            "issuer": "https://app.example.com/",
            "audience": ["shapegate"],
            "algorithms": ["HS256"],
            "keys": [{"secret_env": "P2_JWT_KEY"}],
        }
    ]
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _token(**claims: Any) -> str:
    payload = {
        "sub": "bob",
        "iat": int(time.time()),
        "exp": int(time.time()) + 600,
        "aud": "shapegate",
        **claims,
    }
    return jwt.encode(payload, KEY, algorithm="HS256", headers={"kid": "k-1"})


def _explain(config: Path, token: str) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPE_PROXY_")}
    env["P2_JWT_KEY"] = KEY
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "explain", "--config", str(config), "--token", "-",
         "/v1/shape?table=todos&offset=-1"],
        cwd=ROOT, env=env, input=token, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout), out.stdout + out.stderr


def test_explain_shows_the_issuer_that_differs_by_a_trailing_slash(tmp_path: Path) -> None:
    token = _token(iss="https://app.example.com")
    report, text = _explain(_config(tmp_path), token)
    assert report["reason"] == "invalid_issuer"
    shown = report["token"]
    assert {k: shown[k] for k in ("alg", "kid", "typ", "iss", "aud")} == {
        "alg": "HS256",
        "kid": "k-1",
        "typ": "JWT",
        "iss": "https://app.example.com",
        "aud": "shapegate",
    }
    assert report["accepted"] == [
        {
            "issuer": "https://app.example.com/",
            "audience": ["shapegate"],
            "algorithms": ["HS256"],
            "max_lifetime": 86400,
            "leeway": 30,
        }
    ]
    assert "trailing slash" in report["hint"]
    assert token not in text and token.split(".")[2] not in text and KEY not in text


def test_explain_shows_a_refused_tokens_times_and_the_issuers_limits(tmp_path: Path) -> None:
    """A 7-day token (an IdP's default, or `exp` in milliseconds) is `token_lifetime_too_long`:
    explain shows its iat, exp and lifetime, the clock's now and the issuer's max_lifetime and
    leeway, so the fix is plain (newuser LOW: none of them was shown)."""
    now = int(time.time())
    token = _token(iss="https://app.example.com/", iat=now, exp=now + 7 * 86400)
    report, text = _explain(_config(tmp_path), token)
    assert report["reason"] == "token_lifetime_too_long"
    assert report["token"]["iat"] == now and report["token"]["exp"] == now + 7 * 86400
    assert report["token"]["lifetime"] == 7 * 86400
    assert abs(report["now"] - now) < 60
    assert report["accepted"][0]["max_lifetime"] == 86400
    assert report["accepted"][0]["leeway"] == 30
    assert token.split(".")[2] not in text and KEY not in text
    # An expired one: its exp beside now (a clock skew reads the same way).
    token = _token(iss="https://app.example.com/", iat=now - 7200, exp=now - 3600)
    report, _ = _explain(_config(tmp_path), token)
    assert report["reason"] == "token_expired"
    assert report["token"]["exp"] == now - 3600 < report["now"]


def test_explain_of_a_token_with_out_of_range_times_is_json(tmp_path: Path) -> None:
    """`1e400` reads as an infinite float: shown, it made the report `Infinity`/`NaN`, which
    no strict JSON reader takes (review 20:07). Such times are left out."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    payload = b'{"iss":"https://app.example.com/","aud":"shapegate","iat":1e400,"exp":1e400}'
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    report, text = _explain(_config(tmp_path), f"{header}.{body}.c2ln")
    assert "Infinity" not in text and "NaN" not in text
    assert "exp" not in report["token"] and "lifetime" not in report["token"]
    assert report["token"]["iss"] == "https://app.example.com/"


def test_explain_shows_the_audience_that_differs(tmp_path: Path) -> None:
    token = _token(iss="https://app.example.com/", aud="ShapeGate/")
    report, text = _explain(_config(tmp_path), token)
    assert report["reason"] == "invalid_audience"
    assert report["token"]["aud"] == "ShapeGate/"
    assert report["accepted"][0]["audience"] == ["shapegate"]
    assert '"ShapeGate/"' in report["hint"] and '"shapegate"' in report["hint"]
    assert token.split(".")[2] not in text


async def test_a_missing_required_claim_is_named(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["issuers"][0]["require"] = ["org_id"]
    proxy = await make_proxy(build_config(config, environ))
    reply = await proxy.get(
        "/v1/shape?table=items&offset=-1", token=proxy.tokens.make(role="admin", drop=("org_id",))
    )
    assert reply.status == 401, reply.body
    body = reply.json()
    assert body["code"] == "missing_claim", body
    assert body["message"] == "the token lacks the required org_id claim"


async def test_a_token_to_a_proxy_without_issuers_says_none_is_configured(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["issuers"] = []
    # (a file whose every rule needs a token and has no issuer is a load error, proxycfg
    # 4d939469; with one anonymous rule it loads, and a token sent to a token-only table
    # must say why it cannot be used)
    config["tables"] = {
        "items": {"allow": [{"name": "member", "where": "org_id = {{org_id}}"}]},
        "public_items": {"allow": [{"name": "everyone", "all_rows": True, "anonymous": True}]},
    }
    proxy = await make_proxy(build_config(config, environ))
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=proxy.tokens.make())
    assert reply.status == 401, reply.body
    assert reply.json()["code"] == "no_issuer", reply.body
    assert "no issuer is configured" in reply.json()["message"]
