"""`sync-engine`: flags and environment -> Settings -> the running engine.

Every flag has an environment variable (shown in --help); flags win over the environment.
This is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

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
        description="Serve Electric's HTTP Shape API (/v1/shape) from Postgres logical replication.",
    )
    p.add_argument("--database-url", default=_env("DATABASE_URL", os.environ.get("DATABASE_URL")),
                   help="Postgres connection string; the role needs REPLICATION and must own the"
                        " synced tables. Env: SYNC_ENGINE_DATABASE_URL or DATABASE_URL")  # fmt: skip
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1). Env: SYNC_ENGINE_HOST")  # fmt: skip
    p.add_argument("--port", type=int, default=int(_env("PORT", "3000") or 3000),
                   help="port to listen on (default 3000). Env: SYNC_ENGINE_PORT")  # fmt: skip
    p.add_argument("--data-dir", default=_env("DATA_DIR", "./data"),
                   help="where shape logs live; survives restarts (default ./data)."
                        " Env: SYNC_ENGINE_DATA_DIR")  # fmt: skip
    p.add_argument("--secret", default=_env("SECRET"),
                   help="when set, every /v1/shape request must carry secret=<this>."
                        " Env: SYNC_ENGINE_SECRET")  # fmt: skip
    p.add_argument("--long-poll-timeout", type=float,
                   default=float(_env("LONG_POLL_TIMEOUT", "20") or 20),
                   help="seconds a live request is held before answering up-to-date (default 20)."
                        " Env: SYNC_ENGINE_LONG_POLL_TIMEOUT")  # fmt: skip
    p.add_argument("--sse-timeout", type=float, default=float(_env("SSE_TIMEOUT", "60") or 60),
                   help="seconds an SSE stream stays open (default 60). Env: SYNC_ENGINE_SSE_TIMEOUT")
    p.add_argument("--max-age", type=int, default=int(_env("MAX_AGE", "60") or 60),
                   help="cache max-age for catch-up responses (default 60). Env: SYNC_ENGINE_MAX_AGE")
    p.add_argument("--stale-age", type=int, default=int(_env("STALE_AGE", "300") or 300),
                   help="stale-while-revalidate for catch-up responses (default 300)."
                        " Env: SYNC_ENGINE_STALE_AGE")  # fmt: skip
    p.add_argument("--chunk-bytes", type=int,
                   default=int(_env("CHUNK_BYTES", str(10 * 1024 * 1024)) or 0),
                   help="size at which log and snapshot chunks are cut (default 10 MiB)."
                        " Env: SYNC_ENGINE_CHUNK_BYTES")  # fmt: skip
    p.add_argument("--max-shapes", type=int, default=int(_env("MAX_SHAPES", "0") or 0) or None,
                   help="refuse new shapes beyond this many per source (503). Env: SYNC_ENGINE_MAX_SHAPES")
    p.add_argument("--allow-delete", action="store_true", default=_flag("ALLOW_DELETE"),
                   help="enable DELETE /v1/shape (for tests and admin use). Env: SYNC_ENGINE_ALLOW_DELETE=true")
    p.add_argument("--no-fsync", action="store_true", default=_flag("NO_FSYNC"),
                   help="do not fsync shape logs before acknowledging WAL (faster, unsafe on power"
                        " loss; safe against process crashes). Env: SYNC_ENGINE_NO_FSYNC=true")  # fmt: skip
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO, WARNING or ERROR (default INFO). Env: SYNC_ENGINE_LOG_LEVEL")
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
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings = settings_from_args(args)
    if not settings.database_url:
        print("sync-engine: --database-url (or DATABASE_URL) is required", file=sys.stderr)
        raise SystemExit(2)
    from .app import build_app

    web.run_app(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        print=lambda *_: logging.getLogger("sync_engine").info(
            "listening on http://%s:%d", settings.host, settings.port
        ),
        access_log=None,
        shutdown_timeout=2,
    )


if __name__ == "__main__":
    main()
