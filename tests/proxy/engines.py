"""Real processes for proxy tests: an engine on a database of its own, for a module's tests
to share; a `python -m proxy` process in front of an engine."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.support.databases import create_database, drop_database
from tests.support.engine_process import EngineProcess
from tests.support.ports import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def engine_on_a_new_database(
    pg_server_url: str, data_dir: Path, secret: str, *setup_sql: str, args: tuple[str, ...] = ()
) -> Iterator[EngineProcess]:
    """A real `sync-engine` (`secret`, `args`) on a database of its own made by `setup_sql`;
    stopped and the database dropped after. Used by module-scoped fixtures: each test
    starting its own engine cost ~2 s in CI, and most tests only read."""
    dbname, db_url = create_database(pg_server_url)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for statement in setup_sql:
                conn.execute(statement)
        # (a stream id of its own: slot names are per cluster, and a test's own engine on
        # another database of it, with the default id, took this engine's slot from under
        # it: every shape it served was retired, a 409 at a client's own tip)
        engine = EngineProcess(
            db_url, data_dir, "--secret", secret, "--replication-stream-id", dbname, *args
        )
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()
    finally:
        drop_database(pg_server_url, dbname)


def shared_engine_fixtures(
    label: str, *setup_sql: str, args: tuple[str, ...] = ()
) -> tuple[Any, Any]:
    """The module-scoped `engine_secret` and `engine` fixtures of a test module whose tests
    share one engine (`engine_on_a_new_database` with `setup_sql` and `args`; its data dir
    named after `label`): `engine_secret, engine = shared_engine_fixtures(...)` at module
    level. The secret is the module's, as the engine is (the conftest's is per test)."""

    @pytest.fixture(scope="module", name="engine_secret")
    def engine_secret() -> str:
        return "engine-secret-" + secrets.token_hex(16)

    @pytest.fixture(scope="module", name="engine")
    def engine(
        pg_server_url: str, tmp_path_factory: pytest.TempPathFactory, engine_secret: str
    ) -> Iterator[EngineProcess]:
        data_dir = tmp_path_factory.mktemp(label) / "data"
        with engine_on_a_new_database(
            pg_server_url, data_dir, engine_secret, *setup_sql, args=args
        ) as shared:
            yield shared

    return engine_secret, engine


@dataclass(frozen=True)
class ProxyProcess:
    """A running `python -m proxy` (its own process: its own gc tuning, file limit, RSS)."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path  # its stdout and stderr


def healthy(url: str) -> bool:
    """Whether the proxy at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextmanager
def open_proxy_process(
    db_url: str,
    work: Path,
    engine_args: Sequence[str] = (),
    *,
    limits: dict[str, Any] | None = None,
    launcher: Sequence[str] = (),
    settings: dict[str, Any] | None = None,
) -> Iterator[ProxyProcess]:
    """A real engine (`engine_args`) on `db_url` and, in front of it, `python -m proxy` under
    config/examples/open.yaml (its anonymous rule's `limits` updated with `limits`), started
    through `launcher` (`prlimit ... --`, say) and healthy; both stopped after, the proxy
    killed if it does not stop within 10 s. Its log is `work`/proxy.log."""
    engine = EngineProcess(db_url, work / "data", *engine_args)
    engine.start()
    try:
        config = yaml.safe_load((ROOT / "config/examples/open.yaml").read_text())
        config["upstream"]["url"] = engine.url
        if limits is not None:
            config["tables"]["*.*"]["allow"][0]["limits"].update(limits)
        config.update(settings or {})  # (top-level sections: `collapse`, `cache`...)
        path = work / "proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        command = [sys.executable, "-m", "proxy", "--config", str(path), "--port", str(port)]
        with (work / "proxy.log").open("wb") as log:
            process = subprocess.Popen(
                [*launcher, *command], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: healthy(url), timeout=30, interval=0.1)
            yield ProxyProcess(url, port, process, work / "proxy.log")
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        engine.stop()
