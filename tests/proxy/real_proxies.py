"""Real-path proxies for the tests: a `sync-engine` with the `items` table, the config the
tests run it under, the open policy in front of an engine, the three ways through the proxy,
and who waits on a table lock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml

from proxy.config.loader import LoadedConfig, build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parents[2]

#: The `items` table the real-path tests read: org-a's rows 1 and 3, org-b's row 2.
ITEMS_SQL = (
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1'), (3, 'org-a', 'a3')",
)


def items_config(
    engine: EngineProcess,
    idp_server: Any,
    *,
    collapse: bool = True,
    first_byte_timeout: float = 30,
    sse: bool = False,
    leeway: float | None = None,
    reload_interval: float | None = None,
) -> dict[str, Any]:
    """`base_config` in front of `engine`: collapsing (and the response cache) on or off,
    the member rule's SSE, the issuer's leeway, the config file's poll."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=first_byte_timeout)
    if leeway is not None:
        config["issuers"][0]["leeway"] = leeway
    if sse:
        config["tables"]["items"]["allow"][1]["sse"] = True
    if not collapse:
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
    if reload_interval is not None:
        config["server"] = {"reload_interval": reload_interval}
    return config


def open_config(engine_url: str, secret: str | None = None, **settings: Any) -> LoadedConfig:
    """`config/examples/open.yaml` (the open development policy) in front of the engine at
    `engine_url`: its `secret` given to the proxy (as `ENGINE_SECRET`), top-level `settings`
    (`collapse=False`...) set."""
    config = yaml.safe_load((ROOT / "config/examples/open.yaml").read_text())
    config["upstream"]["url"] = engine_url
    environ = {}
    if secret is not None:
        config["upstream"]["secret_env"] = "ENGINE_SECRET"
        environ["ENGINE_SECRET"] = secret
    config.update(settings)
    return build_config(config, environ)


async def by_mode(
    reloadable_proxy: Callable[..., Awaitable[Any]], config: Callable[[bool], dict[str, Any]]
) -> dict[str, Any]:
    """The three ways through the proxy, each its own proxy from its own config file
    (`config(collapse)`): collapsing on; collapsing and cache off (the general path); the
    same on the fast lane."""
    return {
        "collapsed": await reloadable_proxy(config(True), "collapsed"),
        "direct": await reloadable_proxy(config(False), "direct", fast_lane=False),
        "fast": await reloadable_proxy(config(False), "fast"),
    }


def waiting_on_lock(db_url: str, table: str = "items") -> int:
    """Postgres sessions waiting for a lock in a query naming `table` (the engine's queries
    behind a test's `LOCK TABLE`)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query ILIKE %s",
            (f"%{table}%",),
        ).fetchone()
    return int(row[0]) if row else 0
