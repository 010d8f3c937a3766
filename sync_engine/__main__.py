"""`sync-engine`: flags and environment -> Settings -> the running engine.

Every flag has an environment variable (shown in --help); flags win over the environment.
This is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from .settings import Settings

_ENV = "SYNC_ENGINE_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(_ENV + name, default)


def _flag(name: str) -> bool:
    return (_env(name, "") or "").lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sync-engine",
        description="Serve Electric's HTTP Shape API (/v1/shape) from Postgres logical"
        " replication.",
        epilog="Many databases: start with --admin-token, then register each database with"
        " `sync-engine sources add --name NAME --database-url URL` (see `sync-engine sources"
        " --help`) or the dashboard at http://ADMIN_HOST:ADMIN_PORT/. Requests then name"
        " source_id=<id>&secret=<secret>. Without registered sources the engine serves"
        " --database-url alone.",
    )
    p.add_argument(
        "--database-url",
        default=_env("DATABASE_URL", os.environ.get("DATABASE_URL")),
        help="Postgres connection string; the role needs REPLICATION and must own the"
        " synced tables. Env: SYNC_ENGINE_DATABASE_URL or DATABASE_URL",
    )
    p.add_argument(
        "--host",
        default=_env("HOST", "127.0.0.1"),
        help="address to listen on (default 127.0.0.1). Env: SYNC_ENGINE_HOST",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", "3000") or 3000),
        help="port to listen on (default 3000). Env: SYNC_ENGINE_PORT",
    )
    p.add_argument(
        "--data-dir",
        default=_env("DATA_DIR", "./data"),
        help="where shape logs live; survives restarts (default ./data). Env: SYNC_ENGINE_DATA_DIR",
    )
    p.add_argument(
        "--secret",
        default=_env("SECRET"),
        help="when set, every /v1/shape request must carry secret=<this>. Env: SYNC_ENGINE_SECRET",
    )
    p.add_argument(
        "--long-poll-timeout",
        type=float,
        default=float(_env("LONG_POLL_TIMEOUT", "20") or 20),
        help="seconds a live request is held before answering up-to-date (default 20)."
        " Env: SYNC_ENGINE_LONG_POLL_TIMEOUT",
    )
    p.add_argument(
        "--sse-timeout",
        type=float,
        default=float(_env("SSE_TIMEOUT", "60") or 60),
        help="seconds an SSE stream stays open (default 60). Env: SYNC_ENGINE_SSE_TIMEOUT",
    )
    p.add_argument(
        "--max-age",
        type=int,
        default=int(_env("MAX_AGE", "60") or 60),
        help="cache max-age for catch-up responses (default 60). Env: SYNC_ENGINE_MAX_AGE",
    )
    p.add_argument(
        "--stale-age",
        type=int,
        default=int(_env("STALE_AGE", "300") or 300),
        help="stale-while-revalidate for catch-up responses (default 300)."
        " Env: SYNC_ENGINE_STALE_AGE",
    )
    p.add_argument(
        "--chunk-bytes",
        type=int,
        default=int(_env("CHUNK_BYTES", str(10 * 1024 * 1024)) or 0),
        help="size at which log and snapshot chunks are cut (default 10 MiB)."
        " Env: SYNC_ENGINE_CHUNK_BYTES",
    )
    p.add_argument(
        "--max-shapes",
        type=int,
        default=int(_env("MAX_SHAPES", "0") or 0) or None,
        help="refuse new shapes beyond this many per source (503). Env: SYNC_ENGINE_MAX_SHAPES",
    )
    p.add_argument(
        "--allow-delete",
        action="store_true",
        default=_flag("ALLOW_DELETE"),
        help="enable DELETE /v1/shape (for tests and admin use)."
        " Env: SYNC_ENGINE_ALLOW_DELETE=true",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        default=_flag("NO_FSYNC"),
        help="do not fsync shape logs before acknowledging WAL (faster, unsafe on power"
        " loss; safe against process crashes). Env: SYNC_ENGINE_NO_FSYNC=true",
    )
    p.add_argument(
        "--max-initial-syncs",
        type=int,
        default=int(_env("MAX_INITIAL_SYNCS", "32") or 0) or None,
        help="per registered source, the most shape snapshots in progress at once;"
        " a request needing one more gets 503 with Retry-After (default 32, 0 ="
        " no limit). Env: SYNC_ENGINE_MAX_INITIAL_SYNCS",
    )
    p.add_argument(
        "--admin-token",
        default=_env("ADMIN_TOKEN"),
        help="enables the admin listener (API + dashboard for registered sources);"
        " requests must send 'Authorization: Bearer <token>'. At least 16"
        " characters. Env: SYNC_ENGINE_ADMIN_TOKEN",
    )
    p.add_argument(
        "--admin-host",
        default=_env("ADMIN_HOST", "127.0.0.1"),
        help="address of the admin listener (default 127.0.0.1: this machine only)."
        " Env: SYNC_ENGINE_ADMIN_HOST",
    )
    p.add_argument(
        "--admin-port",
        type=int,
        default=int(_env("ADMIN_PORT", "3100") or 3100),
        help="port of the admin listener (default 3100). Env: SYNC_ENGINE_ADMIN_PORT",
    )
    p.add_argument(
        "--public-url",
        default=_env("PUBLIC_URL"),
        help="the URL proxies and clients use to reach this engine, shown in the"
        " dashboard's examples (default http://HOST:PORT)."
        " Env: SYNC_ENGINE_PUBLIC_URL",
    )
    p.add_argument(
        "--replication-stream-id",
        default=_env("REPLICATION_STREAM_ID", "default"),
        help="names the database-mode slot and publication (shapegate_slot_<id>,"
        " shapegate_pub_<id>); slot names are per Postgres cluster, so give each"
        " engine serving another database of the same cluster its own id"
        " (default: default). Env: SYNC_ENGINE_REPLICATION_STREAM_ID",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default INFO). Env: SYNC_ENGINE_LOG_LEVEL",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        database_url=args.database_url,
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        secret=args.secret or None,
        long_poll_timeout=args.long_poll_timeout,
        sse_timeout=args.sse_timeout,
        max_age=args.max_age,
        stale_age=args.stale_age,
        chunk_bytes=args.chunk_bytes,
        max_shapes=args.max_shapes,
        allow_delete=args.allow_delete,
        fsync=not args.no_fsync,
        max_initial_syncs=args.max_initial_syncs,
        admin_token=args.admin_token or None,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        public_url=args.public_url or None,
        replication_stream_id=args.replication_stream_id,
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (cheaper HTTP and socket work per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sources":
        from .sources.cli import main as sources_main

        raise SystemExit(sources_main(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings = settings_from_args(args)
    if not re.fullmatch(r"[a-z0-9_]{1,40}", settings.replication_stream_id):
        print(
            "sync-engine: --replication-stream-id may use only a-z, 0-9 and _ (1-40 characters),"
            " as Postgres slot names do",
            file=sys.stderr,
        )
        raise SystemExit(2)
    from .admin.api import MIN_TOKEN_LENGTH
    from .sources.registry import registry_has_sources

    if settings.admin_token is not None and len(settings.admin_token) < MIN_TOKEN_LENGTH:
        print(
            f"sync-engine: --admin-token must be at least {MIN_TOKEN_LENGTH} characters",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if (
        not settings.database_url
        and settings.admin_token is None
        and not registry_has_sources(settings.data_dir)
    ):
        print(
            "sync-engine: --database-url (or DATABASE_URL) is required, unless sources are"
            " registered (start with --admin-token to register them)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    from .app import build_app

    app = build_app(settings)
    if settings.admin_token is not None:
        app.cleanup_ctx.append(_admin_listener(settings))
    # Snapshots and fsyncs of every source run in threads: give sources room so one busy
    # source cannot take all of the default executor's few workers.
    loop = new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="engine"))
    # What exists now (modules, the app) lives as long as the process: keep it out of the
    # collector's full passes, which a storm of new shapes triggers by the hundred. Shapes
    # made later are long-lived too (100k of them make a full pass expensive): collect the
    # short-lived per-request and per-change garbage in fewer first-generation passes
    # (CPython's default is one per 700 allocations), as the proxy does.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda *_: logging.getLogger("sync_engine").info(
            "listening on http://%s:%d", settings.host, settings.port
        ),
        access_log=None,
        shutdown_timeout=2,
        loop=loop,
    )


def _admin_listener(settings: Settings) -> Any:
    """Serve the admin app on its own address for as long as the engine app runs."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        from .admin import build_admin_app
        from .app import MANAGER

        runner = web.AppRunner(build_admin_app(settings, app[MANAGER]), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.admin_host, settings.admin_port)
        await site.start()
        logging.getLogger("sync_engine").info(
            "admin API and dashboard on http://%s:%d/", settings.admin_host, settings.admin_port
        )
        yield
        await runner.cleanup()

    return listener


if __name__ == "__main__":
    main()
