"""The proxy's log lines: the shared console formats (`sync_engine.console`), secrets redacted.

Access log lines carry the request id, method, raw path, a redacted query, status, outcome,
reason, subject and timings. The formatter also scrubs any message: bearer tokens, JWT-shaped
strings and `secret=`-style query values are masked wherever they appear, so a careless
`logger.info("%s", url)` cannot leak them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from proxy.upstream.url import MASK, SECRET_PARAMS
from sync_engine import console

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
_SECRET_QUERY = re.compile(
    r"(?i)((?:^|[?&\s\"'])(?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)[^&\s\"']*"
)
ACCESS_LOGGER = "proxy.access"


def redact(text: str) -> str:
    """Mask bearer tokens, JWTs and secret query values in arbitrary text."""
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _JWT.sub(MASK, text)
    return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, text)


def redact_query(items: Iterable[tuple[str, str]]) -> str:
    """A query string for logs: secret-named values masked, then scrubbed like any text."""
    parts = []
    for name, value in items:
        shown = MASK if name.lower() in SECRET_PARAMS or name.lower() == "authorization" else value
        parts.append(f"{name}={shown}")
    return redact("&".join(parts))


def access_level(status: int, *, live: bool) -> int:
    """The level of an access line: routine long-polls are DEBUG, failures WARNING.

    A held live request ends every 20 s (204/200 up-to-date, 304) for every idle client: at
    INFO they would bury everything else. A 5xx (the engine unreachable: 502) needs a look.
    """
    if status >= 500:
        return logging.WARNING
    if live and status in (200, 204, 304, 499):
        return logging.DEBUG
    return logging.INFO


class JsonFormatter(console.JsonFormatter):
    """One JSON object per line (time, level, logger, message, `extra` fields), redacted."""

    def __init__(self) -> None:
        super().__init__(scrub=redact)


class TextFormatter(console.TextFormatter):
    """One readable line per record for a terminal, redacted."""

    def __init__(self) -> None:
        super().__init__(scrub=redact)


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    """Every log line to stderr, text on a terminal and JSON otherwise. Only from `__main__`."""
    console.configure_logging(
        level, log_format, prog="shape-proxy", env_prefix="SHAPE_PROXY_", scrub=redact
    )
