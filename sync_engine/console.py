"""What both programs (`sync-engine`, `shape-proxy`) show at the console, set up in one place.

- Logs: text on a terminal, one JSON object per line otherwise (a file, a pipe, a container
  log collector); `--log-format text|json|auto` chooses. Both programs share the formatters,
  so one console carries one format.
- Startup failures: `fail()` prints ONE line naming what is wrong and what to change (the flag
  or environment variable) and exits non-zero; no traceback reaches a person for a mistake
  they can fix.
- Listeners: `listen()` binds the socket before the app starts, so a busy port is such a line
  rather than an `OSError` traceback from inside the server.
- `--version`: from the installed package's metadata.

Standard library only: the proxy imports this module too (both ship in one distribution).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

#: Attributes of a LogRecord that are not user `extra` fields.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
LOG_FORMATS = ("auto", "text", "json")

Scrub = Callable[[str], str]


def package_version() -> str:
    """The installed distribution's version (pyproject's), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shapegate")
    except PackageNotFoundError:
        from sync_engine import __version__

        return __version__


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """Exit with one line on stderr: `prog: message`. 2 = bad usage/config, 1 = environment."""
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, and where help is)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (see {self.prog} --help)")


def add_common_flags(parser: argparse.ArgumentParser, env_prefix: str) -> None:
    """`--version`, `--log-level` and `--log-format`, with their environment variables."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get(env_prefix + "LOG_LEVEL", "INFO"),
        help=f"DEBUG, INFO, WARNING or ERROR (default INFO). Env: {env_prefix}LOG_LEVEL",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get(env_prefix + "LOG_FORMAT", "auto"),
        help="text, json or auto (default: text on a terminal, JSON otherwise)."
        f" Env: {env_prefix}LOG_FORMAT",
    )


def env_value(
    environ: Mapping[str, str],
    name: str,
    convert: Callable[[str], T],
    what: str,
    *,
    prog: str,
    flag: str,
) -> T | None:
    """An environment variable converted, or one line naming the variable and the flag."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return convert(raw)
    except ValueError:
        fail(prog, f"{name}={raw!r} is not {what}: fix or unset {name} (or pass {flag})")


def port_number(text: str) -> int:
    """argparse type and env converter: a TCP port, 0-65535 (0 = any free port)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


port_number.__name__ = "port"  # argparse says "invalid port value: 'abc'"


def positive_number(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(text)
    return value


positive_number.__name__ = "positive number"


def non_negative_number(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


non_negative_number.__name__ = "non-negative number"


def whole_number(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


whole_number.__name__ = "whole number"


# -- logging ------------------------------------------------------------------------------


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def __init__(self, scrub: Scrub | None = None) -> None:
        super().__init__()
        self._scrub = scrub or (lambda text: text)

    def format(self, record: logging.LogRecord) -> str:
        scrub = self._scrub
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for key, value in _extras(record).items():
            entry[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
            entry["traceback"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`12:00:00.123 INFO  logger: message key=value ...` for a person at a terminal."""

    def __init__(self, scrub: Scrub | None = None) -> None:
        super().__init__()
        self._scrub = scrub or (lambda text: text)

    def format(self, record: logging.LogRecord) -> str:
        scrub = self._scrub
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name}: "
        line += scrub(record.getMessage())
        extras = [
            f"{k}={scrub(v) if isinstance(v, str) else v}"
            for k, v in _extras(record).items()
            if v is not None and v != ""
        ]
        if extras:
            line += "  " + " ".join(extras)
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


def configure_logging(
    level: str, log_format: str, *, prog: str, env_prefix: str, scrub: Scrub | None = None
) -> None:
    """Send every log line to stderr in the chosen format. Called only from a `__main__`."""
    name = str(level).upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        fail(
            prog,
            f"--log-level {level!r} is not DEBUG, INFO, WARNING or ERROR"
            f" (flag --log-level, env {env_prefix}LOG_LEVEL)",
        )
    fmt = str(log_format).lower()
    if fmt not in LOG_FORMATS:
        fail(
            prog,
            f"--log-format {log_format!r} is not text, json or auto"
            f" (flag --log-format, env {env_prefix}LOG_FORMAT)",
        )
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter(scrub) if fmt == "text" else JsonFormatter(scrub))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(name)
    # aiohttp's own access log prints the raw request line (query and secrets included);
    # the programs log their own requests.
    logging.getLogger("aiohttp.access").disabled = True


# -- listeners ----------------------------------------------------------------------------


def listen(
    host: str, port: int, *, prog: str, what: str, change: str, backlog: int = 128
) -> list[socket.socket]:
    """Listening sockets for host:port (each address a name resolves to, like aiohttp), or
    one line saying why not and what to change.

    `change` names the flag and variable a person edits, e.g. "--port or SYNC_ENGINE_PORT".
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        fail(
            prog,
            f"cannot listen for {what} on {host}: unknown address ({exc.strerror});"
            f" change {change}",
            1,
        )
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    socks: list[socket.socket] = []
    for family, address in addresses:
        if socks and port == 0:  # one port for every address, the one the first one got
            address = (address[0], socks[0].getsockname()[1], *address[2:])
        try:
            sock = socket.create_server(address, family=family, backlog=backlog)
        except OSError as exc:
            # An IPv6 address on a machine without IPv6 is skipped when another one works
            # (as asyncio does); anything else is the person's to fix.
            unusable = exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            if unusable and len(addresses) > 1:
                continue
            for s in socks:
                s.close()
            fail(
                prog,
                f"cannot listen for {what} on {host}:{port}: {_why(exc, host, port)};"
                f" change {change}",
                1,
            )
        sock.set_inheritable(False)
        socks.append(sock)
    if not socks:
        fail(
            prog,
            f"cannot listen for {what} on {host}:{port}: no usable address; change {change}",
            1,
        )
    return socks


def _why(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use (another program, or another copy of this one)"
    if exc.errno == errno.EACCES:
        return f"permission denied for port {port} (ports below 1024 need root)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    return exc.strerror or type(exc).__name__


def url_of(socks: list[socket.socket]) -> str:
    """`http://host:port` of the first listening socket (the real port when 0 was asked)."""
    host, port = socks[0].getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard one; returns the limit now in force.

    Every held client (a long-poll, an SSE stream) is a socket, and so is every connection
    to the engine or to Postgres, and every open chunk file: a service started under a
    default soft limit of 1,024 (systemd's, and many a shell's) would refuse the 1,025th
    client with EMFILE, while the hard limit the operator set (often 524,288) goes unused.
    Go and Node lift it themselves for the same reason. Called before anything sizes itself
    by the limit (the engine's cache of open chunk files, `log/fds.py`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # (an infinite hard limit the kernel caps: keep the soft one)
        return soft
    return hard
