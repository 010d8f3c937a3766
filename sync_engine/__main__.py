"""`sync-engine`: flags and environment -> Settings -> the running engine.

Every flag has an environment variable (shown in --help); flags win over the environment.
Every mistake found at start (a bad flag or variable, a busy port, an unusable data
directory or database) is one line on stderr and a non-zero exit, never a traceback. This is
the only place that configures logging (through `console`, shared with the proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import gc
import ipaddress
import logging
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from . import stopping
from .console import (
    OneLineParser,
    add_common_flags,
    configure_logging,
    env_value,
    fail,
    listen,
    non_negative_number,
    port_number,
    positive_number,
    raise_open_file_limit,
    url_of,
    whole_number,
)
from .settings import Settings

PROG = "sync-engine"
_ENV = "SYNC_ENGINE_"
#: Seconds an idle admin connection stays open (the public port's keep-alive, `run_app`'s).
ADMIN_KEEPALIVE = 75.0
T = TypeVar("T")
# Not __name__: run as `python -m sync_engine` this module is `__main__`.
logger = logging.getLogger("sync_engine")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(_ENV + name, default)


def _flag(name: str) -> bool:
    return (_env(name, "") or "").lower() in ("1", "true", "yes", "on")


def _positive_whole(text: str) -> int:
    """A whole number above 0 (a budget of 0 bytes would refuse every subset)."""
    value = whole_number(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_whole.__name__ = "positive whole number"


def _num(
    name: str,
    convert: Callable[[str], T],
    what: str,
    flag: str,
    default: T,
    electric: str | None = None,
) -> T:
    """A flag's default from SYNC_ENGINE_<name>, else from Electric's own variable for the
    same setting (`electric`, so an Electric deployment's environment carries over), or one
    line naming the variable if bad."""
    value = env_value(os.environ, _ENV + name, convert, what, prog=PROG, flag=flag)
    if value is None and electric:
        value = env_value(os.environ, electric, convert, what, prog=PROG, flag=flag)
    return default if value is None else value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
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
        type=port_number,
        default=_num("PORT", port_number, "a port number (0-65535)", "--port", 3000),
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
        help="when set, every /v1/shape request must carry secret=<this>. Env: SYNC_ENGINE_SECRET"
        " (prefer it: a flag shows in ps)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=_flag("INSECURE"),
        help="serve --database-url without --secret on an address other hosts can reach"
        " (--host other than loopback; refused otherwise: anyone reaching it reads every"
        " row the role can read). Env: SYNC_ENGINE_INSECURE=true",
    )
    p.add_argument(
        "--long-poll-timeout",
        type=positive_number,
        default=_num(
            "LONG_POLL_TIMEOUT",
            positive_number,
            "a positive number of seconds",
            "--long-poll-timeout",
            20.0,
        ),
        help="seconds a live request is held before answering up-to-date (default 20)."
        " Env: SYNC_ENGINE_LONG_POLL_TIMEOUT",
    )
    p.add_argument(
        "--sse-timeout",
        type=positive_number,
        default=_num(
            "SSE_TIMEOUT", positive_number, "a positive number of seconds", "--sse-timeout", 60.0
        ),
        help="seconds an SSE stream stays open (default 60). Env: SYNC_ENGINE_SSE_TIMEOUT",
    )
    p.add_argument(
        "--max-age",
        type=whole_number,
        default=_num(
            "MAX_AGE",
            whole_number,
            "a whole number of seconds",
            "--max-age",
            60,
            electric="ELECTRIC_CACHE_MAX_AGE",
        ),
        help="cache max-age for catch-up responses (default 60). Env: SYNC_ENGINE_MAX_AGE"
        " or Electric's ELECTRIC_CACHE_MAX_AGE",
    )
    p.add_argument(
        "--stale-age",
        type=whole_number,
        default=_num(
            "STALE_AGE",
            whole_number,
            "a whole number of seconds",
            "--stale-age",
            300,
            electric="ELECTRIC_CACHE_STALE_AGE",
        ),
        help="stale-while-revalidate for catch-up responses (default 300)."
        " Env: SYNC_ENGINE_STALE_AGE or Electric's ELECTRIC_CACHE_STALE_AGE",
    )
    p.add_argument(
        "--chunk-bytes",
        type=whole_number,
        default=_num(
            "CHUNK_BYTES",
            whole_number,
            "a whole number of bytes",
            "--chunk-bytes",
            10 * 1024 * 1024,
            electric="ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD",
        ),
        help="size at which log and snapshot chunks are cut (default 10 MiB)."
        " Env: SYNC_ENGINE_CHUNK_BYTES or Electric's ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD",
    )
    p.add_argument(
        "--max-shapes",
        type=whole_number,
        default=_num("MAX_SHAPES", whole_number, "a whole number", "--max-shapes", 0),
        help="keep at most this many shapes per source: a new one retires the least recently"
        " requested shapes no client is reading now (their clients refetch), and is refused"
        " (503) only while every shape is in use. Env: SYNC_ENGINE_MAX_SHAPES",
    )
    p.add_argument(
        "--max-log-bytes",
        type=whole_number,
        default=_num(
            "MAX_LOG_BYTES", whole_number, "a whole number of bytes", "--max-log-bytes", None
        ),
        help="rotate a shape whose transaction log grows past this many bytes: its clients"
        " get 409 must-refetch and a fresh snapshot (logs are never compacted: a new client"
        " downloads all of it, and repeated big transactions would fill the disk). Default:"
        " the larger of 64 MiB and 4 times the shape's snapshot bytes; 0: no limit."
        " Env: SYNC_ENGINE_MAX_LOG_BYTES",
    )
    p.add_argument(
        "--disk-reserve",
        type=whole_number,
        default=_num(
            "DISK_RESERVE", whole_number, "a whole number of bytes", "--disk-reserve", None
        ),
        help="bytes of the data directory's file system that snapshots leave free, for the"
        " live changes of the shapes there are: a new shape's snapshot that would go below"
        " it is refused (503 disk_full, Retry-After), so many new shapes cannot fill the"
        " disk and stop replication. Default: the smaller of 64 MiB and 5%% of the file"
        " system; 0: none. Env: SYNC_ENGINE_DISK_RESERVE",
    )
    p.add_argument(
        "--subset-spool-budget",
        type=_positive_whole,
        default=_num(
            "SUBSET_SPOOL_BUDGET",
            _positive_whole,
            "a positive whole number of bytes",
            "--subset-spool-budget",
            1 << 30,
        ),
        help="bytes all subset answers (POST /v1/shape snapshots) may hold at once, in memory"
        " or spooled to the data directory, until sent: past it a subset is a 503"
        " subset_budget with Retry-After, one answer bigger than it alone a 400. Default"
        " 1073741824 (1 GiB). Env: SYNC_ENGINE_SUBSET_SPOOL_BUDGET",
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
        type=whole_number,
        default=_num(
            "MAX_INITIAL_SYNCS", whole_number, "a whole number", "--max-initial-syncs", 32
        ),
        help="per registered source, the most shape snapshots in progress at once;"
        " a request needing one more gets 503 with Retry-After (default 32, 0 ="
        " no limit). Env: SYNC_ENGINE_MAX_INITIAL_SYNCS",
    )
    p.add_argument(
        "--snapshot-timeout",
        type=non_negative_number,
        default=_num(
            "SNAPSHOT_TIMEOUT",
            non_negative_number,
            "a non-negative number of seconds",
            "--snapshot-timeout",
            300.0,
        ),
        help="seconds a shape's snapshot query with a where clause (or a subset query) may"
        " run in Postgres before it is cancelled: a clause cheap to send can cost seconds"
        " per row. Its requests get 503 {code: snapshot_timeout} with Retry-After (default"
        " 300, 0 = no limit; whole-table snapshots are not limited). Env:"
        " SYNC_ENGINE_SNAPSHOT_TIMEOUT",
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
        type=port_number,
        default=_num("ADMIN_PORT", port_number, "a port number (0-65535)", "--admin-port", 3100),
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
        "--replication-timeout",
        type=positive_number,
        default=_num(
            "REPLICATION_TIMEOUT",
            positive_number,
            "a positive number of seconds",
            "--replication-timeout",
            30.0,
        ),
        help="seconds the replication stream may hear nothing from Postgres, not even an"
        " answer to a keepalive it asked for (a stopped server, a network partition),"
        " before it is reconnected (default 30). Env: SYNC_ENGINE_REPLICATION_TIMEOUT",
    )
    p.add_argument(
        "--catalog-timeout",
        type=positive_number,
        default=_num(
            "CATALOG_TIMEOUT",
            positive_number,
            "a positive number of seconds",
            "--catalog-timeout",
            5.0,
        ),
        help="seconds a catalog query (a new shape's table look-up, an existing shape's"
        " check that its table is still there) may take before the request gets a 503: a"
        " Postgres that is stopped or behind a network partition answers nothing"
        " (default 5). Env: SYNC_ENGINE_CATALOG_TIMEOUT",
    )
    p.add_argument(
        "--probe-timeout",
        type=positive_number,
        default=_num(
            "PROBE_TIMEOUT", positive_number, "a positive number of seconds", "--probe-timeout", 5.0
        ),
        help="seconds a new connection may take to answer SELECT 1 when a request's snapshot"
        " is slow to come, before the request gets a 503 (default 5)."
        " Env: SYNC_ENGINE_PROBE_TIMEOUT",
    )
    p.add_argument(
        "--snapshot-quiet",
        type=positive_number,
        default=_num(
            "SNAPSHOT_QUIET",
            positive_number,
            "a positive number of seconds",
            "--snapshot-quiet",
            2.0,
        ),
        help="seconds a request waits for its snapshot's first rows before it asks (every as"
        " many) whether Postgres answers at all, within --probe-timeout: a 503 if not, else it"
        " waits on (default 2). Env: SYNC_ENGINE_SNAPSHOT_QUIET",
    )
    p.add_argument(
        "--schema-check-interval",
        type=positive_number,
        default=_num(
            "SCHEMA_CHECK_INTERVAL",
            positive_number,
            "a positive number of seconds",
            "--schema-check-interval",
            10.0,
        ),
        help="seconds between looks at the columns, primary key and publication membership"
        " of tables with shapes: DDL that changes what SELECT returns without any row change"
        " (a column dropped and added again, a new primary key, the table taken out of the"
        " engine's publication) retires their shapes and their clients refetch (default 10)."
        " A table whose next change follows DDL is also checked before that change is"
        " streamed. Env: SYNC_ENGINE_SCHEMA_CHECK_INTERVAL",
    )
    p.add_argument(
        "--family-check-interval",
        type=positive_number,
        default=_num(
            "FAMILY_CHECK_INTERVAL",
            positive_number,
            "a positive number of seconds",
            "--family-check-interval",
            2.0,
        ),
        help="seconds between looks at the partitions and inheritance children of tables"
        " with shapes: a shape whose table gained rows by ATTACH PARTITION or INHERIT, or"
        " lost some by DETACH, NO INHERIT or DROP, is retired and its clients refetch"
        " (default 2). Env: SYNC_ENGINE_FAMILY_CHECK_INTERVAL",
    )
    p.add_argument(
        "--replication-stream-id",
        default=_env("REPLICATION_STREAM_ID", "default"),
        help="names the database-mode slot and publication (shapegate_slot_<id>,"
        " shapegate_pub_<id>); slot names are per Postgres cluster, so give each"
        " engine serving another database of the same cluster its own id"
        " (default: default). Env: SYNC_ENGINE_REPLICATION_STREAM_ID",
    )
    add_common_flags(p, _ENV)
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        database_url=args.database_url,
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        secret=args.secret or None,
        insecure=args.insecure,
        long_poll_timeout=args.long_poll_timeout,
        sse_timeout=args.sse_timeout,
        max_age=args.max_age,
        stale_age=args.stale_age,
        chunk_bytes=args.chunk_bytes,
        max_shapes=args.max_shapes or None,
        max_log_bytes=args.max_log_bytes,
        disk_reserve=args.disk_reserve,
        subset_spool_budget=args.subset_spool_budget,
        allow_delete=args.allow_delete,
        fsync=not args.no_fsync,
        max_initial_syncs=args.max_initial_syncs or None,
        admin_token=args.admin_token or None,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        public_url=args.public_url or None,
        replication_stream_id=args.replication_stream_id,
        replication_timeout=args.replication_timeout,
        catalog_timeout=args.catalog_timeout,
        probe_timeout=args.probe_timeout,
        snapshot_quiet=args.snapshot_quiet,
        snapshot_timeout=args.snapshot_timeout,
        family_check_interval=args.family_check_interval,
        schema_check_interval=args.schema_check_interval,
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
    os.umask(0o077)  # (what the engine writes holds every user's rows: `preflight.keep_private`)
    if argv and argv[0] == "sources":
        from .tenants.cli import main as sources_main

        raise SystemExit(sources_main(argv[1:]))
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format, prog=PROG, env_prefix=_ENV)
    settings = settings_from_args(args)
    check_settings(settings)
    lock_data_dir(settings.data_dir)
    open_files = raise_open_file_limit()
    engine_sock = listen(
        settings.host,
        settings.port,
        prog=PROG,
        what="/v1/shape",
        change="--port or SYNC_ENGINE_PORT (--host, SYNC_ENGINE_HOST)",
    )
    admin_sock = None
    if settings.admin_token is not None:
        admin_sock = listen(
            settings.admin_host,
            settings.admin_port,
            prog=PROG,
            what="the admin API",
            change="--admin-port or SYNC_ENGINE_ADMIN_PORT (--admin-host, SYNC_ENGINE_ADMIN_HOST)",
        )
    if settings.database_url:
        from .preflight import PermanentError, check_database

        try:
            check_database(
                settings.database_url,
                flag="--database-url or SYNC_ENGINE_DATABASE_URL",
                wait=False,  # serve 503s while Postgres is not up; the source retries
            )
        except PermanentError as exc:
            fail(PROG, f"cannot use the database: {exc}", 1)
        except KeyboardInterrupt:
            fail(PROG, "interrupted while waiting for the database", 130)
    serve(settings, engine_sock, admin_sock, open_files)


#: Seconds a second engine on a data directory waits for the first one to stop.
LOCK_WAIT = 60.0
_data_dir_lock: list[int] = []  # the lock's descriptor, open as long as the process runs


def lock_data_dir(data_dir: Path, wait: float = LOCK_WAIT) -> None:
    """Hold `<data-dir>/engine.lock` (flock, released by the kernel when the process ends,
    however it ends) before touching the shape logs: a second engine on the same directory
    (a restart that began before the old process was gone, a second container on a shared
    volume) would load the logs once, know nothing of what the first appends after, and on
    taking over the slot write over it. It waits for the first to stop, up to `wait`
    seconds, then exits."""
    path = data_dir / "engine.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # serve what there is (`preflight`)
            logger.warning("cannot create %s (the disk is full): not locked", path)
            return
        fail(PROG, f"cannot use the data directory {data_dir} ({exc.strerror})", 1)
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pass
        if not said:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            logger.warning(
                "the data directory %s is in use by another engine (pid %s): waiting up to"
                " %.0f s for it to stop",
                data_dir,
                holder,
                wait,
            )
            said = True
        if time.monotonic() >= deadline:
            fail(
                PROG,
                f"the data directory {data_dir} is in use by another engine: stop it, or give"
                " this one another --data-dir (SYNC_ENGINE_DATA_DIR)",
                1,
            )
        time.sleep(0.1)
    _data_dir_lock.append(fd)
    try:  # (who holds it, for the message above; not on a full disk)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    if said:
        logger.info("the other engine has stopped: the data directory %s is this one's", data_dir)


def check_settings(settings: Settings) -> None:
    """Everything about the flags that can be wrong before anything connects or listens."""
    if not re.fullmatch(r"[a-z0-9_]{1,40}", settings.replication_stream_id):
        fail(
            PROG,
            "--replication-stream-id may use only a-z, 0-9 and _ (1-40 characters),"
            " as Postgres slot names do (flag --replication-stream-id, env"
            " SYNC_ENGINE_REPLICATION_STREAM_ID)",
        )
    from .admin.api import MIN_TOKEN_LENGTH
    from .preflight import check_data_dir, check_registry, keep_private
    from .tenants.dburl import check_database_url
    from .tenants.errors import InvalidInput
    from .tenants.store import store_has_sources

    if settings.admin_token is not None and len(settings.admin_token) < MIN_TOKEN_LENGTH:
        fail(
            PROG,
            f"--admin-token must be at least {MIN_TOKEN_LENGTH} characters (flag"
            " --admin-token, env SYNC_ENGINE_ADMIN_TOKEN)",
        )
    if settings.database_url:
        try:
            check_database_url(settings.database_url)
        except InvalidInput as exc:
            message = exc.message.replace("database_url", "--database-url", 1)
            fail(
                PROG,
                f"{message} (flag --database-url, env SYNC_ENGINE_DATABASE_URL or DATABASE_URL)",
            )
    check_secret(settings)
    problem = check_data_dir(settings.data_dir)
    if problem is not None:
        fail(
            PROG,
            f"cannot use the data directory {settings.data_dir} ({problem}): give one the"
            " engine can write, with --data-dir or SYNC_ENGINE_DATA_DIR",
            1,
        )
    keep_private(settings.data_dir)
    problem = check_registry(settings.data_dir)
    if problem is not None:
        fail(PROG, problem, 1)
    if (
        not settings.database_url
        and settings.admin_token is None
        and not store_has_sources(settings.data_dir)
    ):
        fail(
            PROG,
            "--database-url (or SYNC_ENGINE_DATABASE_URL, DATABASE_URL) is required,"
            " unless sources are registered (start with --admin-token to register"
            " them)",
        )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is one only this machine reaches."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # (a name: whatever it resolves to, other hosts may reach it)


def _listening(url: str, open_files: object, notice: str | None) -> None:
    logger.info(
        "listening on %s (Shape API: %s/v1/shape; open files limit %s)", url, url, open_files
    )
    if notice is not None:
        logger.info("%s", notice)


def secret_notice(settings: Settings) -> str | None:
    """What to say once the engine listens on loopback with `--database-url` and no secret
    (not before: a start that fails says only what to fix)."""
    if not settings.database_url or settings.secret is not None:
        return None
    if not is_loopback(settings.host):
        return None  # (refused by `check_secret`, or --insecure: warned there)
    return (
        f"serving --database-url on {settings.host} without a secret: every local user"
        " (and anything that forwards to this port) can read every row the role can read;"
        " set --secret (env SYNC_ENGINE_SECRET) where that matters"
    )


def check_secret(settings: Settings) -> None:
    """Refuse to serve `--database-url` without a secret where other hosts can reach it,
    unless `--insecure`: every row the role can read would be anyone's, past any proxy.
    (Registered sources each have a secret of their own.)"""
    if not settings.database_url or settings.secret is not None or is_loopback(settings.host):
        return
    if not settings.insecure:
        fail(
            PROG,
            f"refusing to serve --database-url on {settings.host} (--host) without a secret:"
            " anyone who reaches it would read every row the role can read; set --secret"
            " (env SYNC_ENGINE_SECRET), listen on 127.0.0.1, or pass --insecure (env"
            " SYNC_ENGINE_INSECURE=true) on a network only trusted clients reach",
        )
    logger.warning(
        "serving --database-url on %s without a secret (--insecure): anyone who reaches"
        " it reads every row the role can read",
        settings.host,
    )


def serve(
    settings: Settings,
    engine_sock: list[socket.socket],
    admin_sock: list[socket.socket] | None,
    open_files: int | None = None,
) -> None:
    """Run the engine (and the admin listener) on already bound sockets until a signal."""
    from .app import build_app

    app = build_app(settings)
    if admin_sock is not None:
        app.cleanup_ctx.append(_admin_listener(settings, admin_sock))
    app.on_shutdown.append(_log_shutdown)
    # Snapshots and fsyncs of every source run in threads: give sources room so one busy
    # source cannot take all of the default executor's few workers.
    loop = new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="engine"))
    # What exists now (modules, the app) lives as long as the process: keep it out of the
    # collector's full passes, which a storm of new shapes triggers by the hundred. Shapes
    # made later are long-lived too (100k of them make a full pass expensive): collect the
    # short-lived per-request and per-change garbage in fewer first-generation passes
    # (CPython's default is one per 700 allocations), as the proxy does. A second-generation
    # pass scans everything that outlived a first-generation one since the last: in a storm
    # of 10,000 new shapes that is every request in flight and every new shape, ~1M objects,
    # one 300 ms pause with every request stalled (S6). Ten times fewer of them: the engine
    # makes few reference cycles (such a storm: ~1,400 objects freed by first-generation
    # passes, ~470 by second-generation ones), so little garbage waits longer for them.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 200, 20)
    url = url_of(engine_sock)
    try:
        web.run_app(
            app,
            sock=engine_sock,
            print=lambda *_: _listening(url, open_files, secret_notice(settings)),
            access_log=None,
            shutdown_timeout=2,
            loop=loop,
        )
    except Exception as exc:
        # Not a mistake checked above: a bug or an environment we did not foresee. The
        # traceback goes into the log (one record), the exit status says it failed.
        logger.critical("stopped by an unexpected error: %s", exc, exc_info=True)
        raise SystemExit(1) from None
    logger.info("stopped")
    if stopping.exit_status:
        raise SystemExit(stopping.exit_status)


async def _log_shutdown(app: web.Application) -> None:
    logger.info("shutting down: closing held requests and replication")
    stopping.exit_unless_stopped(asyncio.get_running_loop(), stopping.STOP_LIMIT)


def _admin_listener(settings: Settings, socks: list[socket.socket]) -> Any:
    """Serve the admin app on its own socket for as long as the engine app runs."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        from .admin import build_admin_app
        from .app import MANAGER

        # (keep-alive as the public port's, run_app's 75 s: aiohttp's own default is 3630 s,
        # and an idle admin connection, no token needed, stayed open an hour: attack 20:13)
        runner = web.AppRunner(
            build_admin_app(settings, app[MANAGER]),
            access_log=None,
            keepalive_timeout=ADMIN_KEEPALIVE,
        )
        await runner.setup()
        for sock in socks:
            await web.SockSite(runner, sock).start()
        logger.info("admin API and dashboard listening on %s/", url_of(socks))
        yield
        await runner.cleanup()

    return listener


if __name__ == "__main__":
    main()
