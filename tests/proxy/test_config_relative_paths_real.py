"""`upstream.secret_file` and an issuer's `public_key_file` must be absolute paths.

A relative one was read from the directory the proxy was started in, not the config file's:
`secret_file: engine.secret` written beside the config read whatever `engine.secret` the
start directory held (an old secret, here; an old, perhaps leaked, key for
`public_key_file`) or nothing (config probe, 2026-12-07). Now a load error saying to give an
absolute path. Real path: the file loaded by `load_config` while the working directory holds
another `engine.secret`; on the old code it loaded, read that one, and the real engine
refused the proxy (502) though the file beside the config holds the engine's secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
RULES = "tables:\n  items:\n    allow: [{all_rows: true}]\n"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)", "INSERT INTO items VALUES (1, 'a')"
    )


async def test_a_relative_secret_file_is_refused(
    engine: EngineProcess,
    proxy_from_yaml: Any,
    engine_secret: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "engine.secret").write_text(engine_secret + "\n")  # (beside the config)
    elsewhere = tmp_path / "started-here"
    elsewhere.mkdir()
    (elsewhere / "engine.secret").write_text("an-old-secret-" + "x" * 32 + "\n")
    monkeypatch.chdir(elsewhere)
    text = (
        proxy_from_yaml.head(engine.url).replace(
            "secret_env: ENGINE_SECRET", "secret_file: engine.secret"
        )
        + RULES
    )
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        assert "upstream.secret_file (line 1)" in str(exc), exc
        assert "give an absolute path" in str(exc), exc
    else:  # (the old code: the start directory's file, and the engine refuses it)
        reply = await proxy.get(SHAPE, token=proxy.tokens.make())
        assert reply.status == 200, (reply.status, reply.body)
        pytest.fail("loaded")
    absolute = text.replace("secret_file: engine.secret", f"secret_file: {tmp_path}/engine.secret")
    proxy = await proxy_from_yaml(absolute, name="absolute")
    reply = await proxy.get(SHAPE, token=proxy.tokens.make())
    assert reply.status == 200, (reply.status, reply.body)


def test_a_relative_public_key_file_is_refused(proxy_from_yaml: Any) -> None:
    text = (
        'upstream: {url: "http://127.0.0.1:9", secret_env: ENGINE_SECRET}\n'
        "issuers:\n"
        '  - {issuer: "https://idp", audience: a, algorithms: [RS256], '
        "keys: [{public_key_file: keys/idp.pem}]}\n" + RULES
    )
    with pytest.raises(ConfigError, match=r"issuers\.0\.keys\.0\.public_key_file .*absolute path"):
        proxy_from_yaml.load(text)
