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
from typing import Any

from proxy.upstream.url import MASK, SECRET_PARAMS
from sync_engine import console

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
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


def escape_controls(text: str) -> str:
    """Control characters as `\\xHH` (what nginx's access log does), so one record stays one line.

    The text log is read line by line (a terminal, `grep`, journald): a `%0a` a client put in a
    query value, a `sub` claim or an `X-Request-Id` must not start a line of the client's own
    that looks like a real access line. The `\\` itself is doubled so an escape cannot be forged.
    """
    if not _CONTROL.search(text) and "\\" not in text:
        return text
    return _CONTROL.sub(_escaped, text.replace("\\", "\\\\"))


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02X}" if code <= 0xFF else f"\\u{code:04X}"


def _text_scrub(text: str) -> str:
    return escape_controls(redact(text))


def redact_query(items: Iterable[tuple[str, str]]) -> str:
    """A query string for logs: secret-named values masked, then scrubbed like any text."""
    parts = []
    for name, value in items:
        shown = MASK if name.lower() in SECRET_PARAMS or name.lower() == "authorization" else value
        parts.append(f"{name}={shown}")
    return redact("&".join(parts))


#: The statuses a held live request routinely ends with: its access line is DEBUG (a held
#: live request ends every 20 s, 204/200 up-to-date or 304, for every idle client: at INFO
#: they would bury everything else), where a 5xx is WARNING (the engine unreachable: 502
#: needs a look) and anything else INFO (`proxy.app.ProxyApp.answered`).
ROUTINE_LIVE = frozenset((200, 204, 304, 499))


class JsonFormatter(console.JsonFormatter):
    """One JSON object per line (time, level, logger, message, `extra` fields), redacted."""

    def __init__(self) -> None:
        super().__init__(scrub=redact)


class TextFormatter(console.TextFormatter):
    """One line per record for a terminal, redacted, control characters escaped.

    Message and every field are escaped (`escape_controls`); a traceback keeps its own lines,
    each indented, so no line of it can pass for a record (records start with a time).
    """

    def __init__(self) -> None:
        super().__init__(scrub=_text_scrub)

    def format(self, record: logging.LogRecord) -> str:
        exc_info: Any = record.exc_info
        exc_text = record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text = exc_info, exc_text
        if exc_info and exc_info[0] is not None:
            trace = self.formatException(exc_info)
            line += "".join(f"\n  {escape_controls(redact(part))}" for part in trace.splitlines())
        return line


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    """Every log line to stderr, text on a terminal and JSON otherwise. Only from `__main__`."""
    console.configure_logging(
        level, log_format, prog="shape-proxy", env_prefix="SHAPE_PROXY_", scrub=redact
    )
    for handler in logging.getLogger().handlers:
        if type(handler.formatter) is console.TextFormatter:
            handler.setFormatter(TextFormatter())  # (the shared one keeps raw line breaks)
