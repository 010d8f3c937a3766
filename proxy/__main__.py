"""Command line: `shape-proxy --config FILE` serves; `explain` explains; `token` mints.

Every flag has an environment variable (`SHAPE_PROXY_CONFIG`, `SHAPE_PROXY_HOST`,
`SHAPE_PROXY_PORT`, `SHAPE_PROXY_LOG_LEVEL`, `SHAPE_PROXY_LOG_FORMAT`). The config is
validated before anything listens; every mistake found at start (a bad file, flag or
variable, a busy port) is one line on stderr and a non-zero exit, never a traceback. Logging
is configured only here (through `sync_engine.console`, shared with the engine).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from proxy.app import ProxyApp, create_app
from proxy.config.loader import ConfigError, LoadedConfig, load_config
from proxy.devtoken import TokenError, mint
from proxy.explain import explain, format_report, load_for_explain
from proxy.http.serve import serve_until_signalled
from proxy.logs import configure_logging
from proxy.redact import redact_url
from sync_engine.console import (
    OneLineParser,
    add_common_flags,
    env_value,
    fail,
    listen,
    port_number,
    raise_open_file_limit,
    url_of,
)
from sync_engine.stopping import STOP_WAIT, cancel_and_wait

PROG = "shape-proxy"
_ENV = "SHAPE_PROXY_"
log = logging.getLogger("proxy")

#: Pending connections the kernel queues before `accept`: thousands of clients (re)connecting
#: at once must not overflow it (an overflowed SYN is retried by the client after 1 s).
LISTEN_BACKLOG = 4096
#: Net new container objects between first-generation collections (CPython's default is 700).
#: Above the ~200k-400k objects that 10,000 held long-polls keep alive (see `tune_gc`).
GC_GEN0_THRESHOLD = 500_000
#: Seconds answers in progress get to finish at shutdown before they are cut.
SHUTDOWN_TIMEOUT = 5.0


def _serve_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = OneLineParser(
        prog=PROG,
        description="Authenticating proxy for Electric-compatible shape sync. Subcommands:"
        " 'shape-proxy explain --help' (what the proxy would do with a request),"
        " 'shape-proxy token --help' (a development token for an HS256 issuer).",
    )
    parser.add_argument(
        "--config",
        default=env.get("SHAPE_PROXY_CONFIG"),
        help="YAML config file (env SHAPE_PROXY_CONFIG); reloaded on change and SIGHUP",
    )
    parser.add_argument(
        "--host",
        default=env.get("SHAPE_PROXY_HOST"),
        help="listen address; overrides server.host (env SHAPE_PROXY_HOST)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=env_value(
            env,
            "SHAPE_PROXY_PORT",
            port_number,
            "a port number (0-65535)",
            prog=PROG,
            flag="--port",
        ),
        help="listen port; overrides server.port (env SHAPE_PROXY_PORT)",
    )
    add_common_flags(parser, _ENV)
    return parser


#: `explain --token -`: the token is read from standard input.
_FROM_STDIN = "-"


def _explain_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=f"{PROG} explain",
        description="Print the decision and the upstream URL (secret masked) for a request."
        " Needs no secrets in the environment, except the issuer's key to verify --token.",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("SHAPE_PROXY_CONFIG"),
        help="YAML config file (env SHAPE_PROXY_CONFIG)",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--token",
        help="a bearer token, verified like a request's; `-` reads it from standard input "
        "(a user's token given as an argument shows in ps and the shell history)",
    )
    who.add_argument("--claims", help="JSON claims, used unverified (for drafting policies)")
    parser.add_argument("url", help="e.g. '/v1/shape?table=items&offset=-1'")
    return parser


def _token_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=f"{PROG} token",
        description="Print a development token the proxy accepts, signed with the key of an"
        " HS256/384/512 issuer of the config (its secret_env variable must be set). Issuers"
        " with JWKS or public keys are refused: their tokens come from your identity provider.",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("SHAPE_PROXY_CONFIG"),
        help="YAML config file (env SHAPE_PROXY_CONFIG)",
    )
    parser.add_argument("--sub", required=True, help="the user id (the token's sub claim)")
    parser.add_argument("--claims", help="extra claims as a JSON object, e.g. '{\"org_id\": 7}'")
    parser.add_argument("--ttl", type=int, help="lifetime in seconds (default 3600)")
    parser.add_argument("--issuer", help="the issuer to sign for (default: the first HS* one)")
    return parser


def _config_path(path: str | None) -> str:
    if not path:
        fail(PROG, "--config FILE (or SHAPE_PROXY_CONFIG) is required")
    return path


def _load(path: str | None) -> LoadedConfig:
    try:
        return load_config(_config_path(path))
    except ConfigError as exc:
        fail(PROG, f"invalid config: {exc}")


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        fail(PROG, f'{flag} must be a JSON object, e.g. \'{{"sub": "u1"}}\'')
    return value


def _explain(argv: list[str]) -> None:
    args = _explain_parser().parse_args(argv)
    try:
        loaded = load_for_explain(_config_path(args.config), verify_tokens=args.token is not None)
    except ConfigError as exc:
        fail(PROG, f"invalid config: {exc}")
    claims = _json_object(args.claims, "--claims") if args.claims is not None else None
    token = args.token
    if args.token == _FROM_STDIN:
        token = sys.stdin.readline().strip()
        if not token:
            fail(PROG, "--token -: no token on standard input")
    report = asyncio.run(explain(loaded, args.url, token=token, claims=claims))
    print(format_report(report))
    raise SystemExit(0 if report.get("allowed") else 1)


def _token(argv: list[str]) -> None:
    args = _token_parser().parse_args(argv)
    try:
        loaded = load_for_explain(_config_path(args.config), verify_tokens=False)
    except ConfigError as exc:
        fail(PROG, f"invalid config: {exc}")
    claims = _json_object(args.claims, "--claims") if args.claims is not None else None
    try:
        token = mint(loaded.config, os.environ, sub=args.sub, claims=claims, ttl=args.ttl,
                     issuer_name=args.issuer)  # fmt: skip
    except TokenError as exc:
        fail(f"{PROG} token", str(exc), 1)
    print(token)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (its transports and callbacks cost about half of asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def tune_gc() -> None:
    """Keep the cyclic garbage collector out of the way of thousands of held requests.

    With 2,000 long-polls held, every connection keeps a protocol, parser, request, task and
    their frames alive, and a full collection walks all of them: measured pauses of up to
    77 ms in a fan-out burst, paid by whichever waiters are answered after it. Freezing what
    start-up created (modules, config, policy) takes it out of every later collection, and a
    larger first-generation threshold collects the short-lived per-request garbage in fewer,
    cheaper passes. Reference counting still frees almost everything as before.

    The threshold counts allocations minus deallocations, so a first-generation pass walks
    every young object alive at that moment. 10,000 held long-polls keep a few hundred
    thousand of them alive and replace them on every fan-out: at 50,000 the collector ran
    ~60 passes of up to 250 ms in a 30 s S8 run (2.6 s, ~17% of the proxy's CPU); at 500,000
    it ran once (0.27 s) with the same peak RSS (237 MiB). Cycles are still collected, at
    most 500,000 net new objects apart, and the older generations keep their thresholds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["explain"]:
        _explain(args_list[1:])
    if args_list[:1] == ["token"]:
        _token(args_list[1:])
        return
    args = _serve_parser().parse_args(args_list)
    configure_logging(args.log_level, args.log_format)
    loaded = _load(args.config)
    open_files = raise_open_file_limit()
    server = loaded.config.server
    sock = listen(
        args.host or server.host,
        args.port if args.port is not None else server.port,
        prog=PROG,
        what="clients",
        change="--port or SHAPE_PROXY_PORT (or server.port in the config)",
        backlog=LISTEN_BACKLOG,
    )
    app = create_app(loaded, config_path=args.config, sighup=True)
    url = url_of(sock)
    upstream = redact_url(loaded.config.upstream.url)  # (no password in the log)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(
            _serve(
                app,
                sock,
                lambda: log.info(
                    "listening on %s (engine: %s; open files limit %s)", url, upstream, open_files
                ),
            )
        )
    except Exception as exc:
        # A bug or an unforeseen environment: one log record with the traceback, exit 1.
        log.critical("stopped by an unexpected error: %s", exc, exc_info=True)
        raise SystemExit(1) from None
    finally:
        loop.close()
    log.info("stopped")


async def _serve(
    app: ProxyApp, socks: list[socket.socket], on_listening: Callable[[], None]
) -> None:
    """Start the app's resources, serve until SIGINT/SIGTERM, then close them."""
    await app.start()
    try:
        tune_gc()
        await serve_until_signalled(
            app,
            socks,
            backlog=LISTEN_BACKLOG,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            on_listening=on_listening,
            on_stopping=lambda: log.info("shutting down: closing held requests"),
        )
    finally:
        await app.stop()
        await _end_remaining_tasks()


async def _end_remaining_tasks() -> None:
    """Cancel every task still running and wait for each to end (at most `STOP_WAIT`), as
    `asyncio.run` does before it closes its loop: the loop closed under a task still
    unwinding logged "Task was destroyed but it is pending!" at error level, with a
    traceback, on a clean stop (chaos 20:00)."""
    current = asyncio.current_task()
    await cancel_and_wait(
        [t for t in asyncio.all_tasks() if t is not current], "proxy shutdown", STOP_WAIT
    )


if __name__ == "__main__":
    main()
