"""A secret pasted where its environment variable's name goes is never repeated.

`upstream: {secret_env: 3fa9...}` (the value `openssl rand -hex 32` printed, pasted instead
of the variable's name): a hex or base64 secret that starts with a letter passes the name's
pattern, and the load error said "environment variable <the secret> is not set or empty", at
start on stderr and at a reload in the log and in `/healthz`'s `config_error` for a metrics
reader (config probe, 2026-12-07). Now the name is repeated only when it is written as
variable names are (upper case); otherwise the error says what to give.

Real path: a proxy run from a file in front of a real `sync-engine` and Postgres, the bad
file written over it and reloaded (refused, the old config serves); and `python -m proxy
--config` at start (exit 2). On the old code the secret was in each.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from proxy.logs import JsonFormatter
from tests.support.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parents[2]
SHAPE = "/v1/shape?table=items&offset=-1"
RULES = "tables:\n  items:\n    allow: [{all_rows: true}]\n"


def _pasted() -> str:
    """A secret as `openssl rand -hex 32` prints it, starting with a letter."""
    return "c" + secrets.token_hex(32)[1:]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)", "INSERT INTO items VALUES (1, 'a')"
    )


async def test_a_reload_with_a_secret_as_the_name_does_not_repeat_it(
    engine: EngineProcess, proxy_from_yaml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = proxy_from_yaml.head(engine.url) + RULES
    proxy = await proxy_from_yaml(good)
    token = proxy.tokens.make()
    assert (await proxy.get(SHAPE, token=token)).status == 200

    pasted = _pasted()
    written = proxy.path.with_suffix(".next")
    written.write_text(good.replace("secret_env: ENGINE_SECRET", f"secret_env: {pasted}"))
    os.replace(written, proxy.path)
    holder = proxy.app.holder
    assert holder.reload() is False
    error = holder.last_error
    assert error is not None and "upstream.secret_env" in error, error
    assert "not set or empty" in error and "ENGINE_SECRET" in error, error
    assert pasted not in error
    formatter = JsonFormatter()
    for record in caplog.records:
        for line in (formatter.format(record), record.getMessage()):
            assert pasted not in line, line
    assert pasted not in (await proxy.get("/healthz")).body.decode()
    assert (await proxy.get(SHAPE, token=token)).status == 200  # (the old config serves)


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ("metrics: {token_env: NAME}\n", "metrics.token_env"),
        ("issuer", "issuers.0.keys.0.secret_env"),
    ],
)
def test_other_secret_names_are_not_repeated(
    proxy_from_yaml: Any, section: str, where: str
) -> None:
    pasted = _pasted()
    text = proxy_from_yaml.head("http://127.0.0.1:9") + RULES
    if section == "issuer":
        text = (
            'upstream: {url: "http://127.0.0.1:9", secret_env: ENGINE_SECRET}\n'
            "issuers:\n"
            f'  - {{issuer: "https://idp", audience: a, algorithms: [HS256], '
            f"keys: [{{secret_env: {pasted}}}]}}\n" + RULES
        )
    else:
        text += section.replace("NAME", pasted)
    with pytest.raises(ConfigError) as err:
        proxy_from_yaml.load(text)
    assert where in str(err.value), err.value
    assert pasted not in str(err.value)
    # an upper-case name is said, as before
    with pytest.raises(ConfigError, match="environment variable MISSING_NAME is not set"):
        proxy_from_yaml.load(text.replace(pasted, "MISSING_NAME"))


def test_at_start_the_secret_is_not_printed(tmp_path: Path) -> None:
    pasted = _pasted()
    path = tmp_path / "proxy.yaml"
    path.write_text(
        f'upstream: {{url: "http://127.0.0.1:9", secret_env: {pasted}}}\n'
        "issuers:\n"
        '  - {issuer: "https://idp", audience: a, algorithms: [RS256], '
        'jwks_url: "https://idp/jwks"}\n' + RULES
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(path), "--port", "0"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != pasted},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "upstream.secret_env" in done.stderr, done.stderr
    assert pasted not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "pasted",
    [
        "ABCDEF" + secrets.token_hex(29).upper(),  # (upper-case hex)
        "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",  # (base32, as TOTP-style secrets are written)
        "3fa9" + secrets.token_hex(30),  # (starts with a digit: not a name at all)
        secrets.token_urlsafe(32).replace("-", "+", 1) + "/=",  # (base64)
    ],
    ids=["upper_hex", "base32", "digit_first", "base64"],  # (values drawn: ids fixed for xdist)
)
def test_an_upper_case_or_unnameable_secret_is_not_repeated(
    proxy_from_yaml: Any, pasted: str
) -> None:
    """newuser 13:46: an upper-case hex or base32 secret still passed as a name and was
    repeated; one with characters no name has got pydantic's "String should match pattern",
    which did not say that the key takes the variable's name. On 73c87501 the first two were
    echoed and the last two said nothing of what to write."""
    text = (
        proxy_from_yaml.head("http://127.0.0.1:9").replace(
            "secret_env: ENGINE_SECRET", f"secret_env: '{pasted}'"
        )
        + RULES
    )
    with pytest.raises(ConfigError) as err:
        proxy_from_yaml.load(text)
    said = str(err.value)
    assert "upstream.secret_env" in said, said
    assert "not repeated here" in said and "e.g. ENGINE_SECRET" in said, said
    assert pasted not in said
