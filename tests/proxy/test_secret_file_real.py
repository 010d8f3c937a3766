"""The engine secret can come from a file (`upstream.secret_file`), read again at every reload:
a secret rotated on the engine (`sync-engine sources rotate-secret`) is given to a running
proxy by writing the file and reloading (attack 02:31, LOW: `secret_env` is the proxy's own
environment, which a reload reads unchanged, so only a restart took a new secret).

Real path: proxy -> `sync-engine` -> Postgres; a real config file and secret file. The proxy
starts with a secret the engine refuses (its 401 is the proxy's 502 `upstream_unauthorized`);
the file gets the engine's secret and the config is reloaded: the same request is served."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import SECRET_FILE_MAX_BYTES, ConfigError, build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.real_proxies import items_config
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"


async def test_a_reload_reads_a_rotated_engine_secret_from_its_file(
    items_engine: EngineProcess,
    idp_server: Any,
    reloadable_proxy: Any,
    engine_secret: str,
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "engine-secret"
    secret_file.write_text("not-the-engines-secret-0123456789\n")
    config = items_config(items_engine, idp_server)
    del config["upstream"]["secret_env"]
    config["upstream"]["secret_file"] = str(secret_file)
    proxy = await reloadable_proxy(config)
    token = proxy.tokens.make()
    refused = await proxy.get(SHAPE, token=token)
    assert refused.status == 502, refused.body
    assert json.loads(refused.body)["code"] == "upstream_unauthorized"

    secret_file.write_text(engine_secret + "\n")  # (as `echo` writes it)
    proxy.reload()
    served = await proxy.get(SHAPE, token=token)
    assert served.status == 200, served.body
    assert [m["value"]["id"] for m in json.loads(served.body) if "value" in m] == ["1", "3"]


def test_a_secret_file_that_is_missing_empty_or_given_with_secret_env_is_refused(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    config = base_config("http://127.0.0.1:1", "http://127.0.0.1:1/jwks.json")
    with pytest.raises(ConfigError, match="secret_env or secret_file, not both"):
        build_config({**config, "upstream": {**config["upstream"], "secret_file": "x"}}, environ)
    del config["upstream"]["secret_env"]
    for name, text in (("missing", None), ("empty", "\n")):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        config["upstream"]["secret_file"] = str(path)
        with pytest.raises(ConfigError, match=r"upstream\.secret_file"):
            build_config(config, environ)


def test_a_secret_file_that_is_no_regular_file_or_too_large_is_refused_without_blocking(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """A FIFO with no writer blocked the load (on the event loop, at a reload: every client
    waited; attack 02:35), `/dev/zero` was read whole: refused, the load fails at once (in a
    thread here, so that a load that blocks fails the test instead of hanging it)."""
    config = base_config("http://127.0.0.1:1", "http://127.0.0.1:1/jwks.json")
    del config["upstream"]["secret_env"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    large = tmp_path / "large"
    large.write_text("x" * (SECRET_FILE_MAX_BYTES + 1))
    for path, why in ((fifo, "not a regular file"), (large, "larger than")):
        config["upstream"]["secret_file"] = str(path)
        refused: list[BaseException] = []

        def load(config: dict[str, Any] = config, refused: list[BaseException] = refused) -> None:
            try:
                build_config(config, environ)
            except ConfigError as exc:
                refused.append(exc)

        loading = threading.Thread(target=load, daemon=True)
        loading.start()
        loading.join(30)
        assert not loading.is_alive(), f"loading {path.name} blocked"
        assert refused and why in str(refused[0]), refused
    bom = tmp_path / "bom"
    bom.write_bytes(b"\xef\xbb\xbfs3cret\r\n")  # (a Windows editor's)
    config["upstream"]["secret_file"] = str(bom)
    loaded = build_config(config, environ)
    assert loaded.upstream_secret is not None
    assert loaded.upstream_secret.get_secret_value() == "s3cret"
