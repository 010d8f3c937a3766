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
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from proxy.upstream.url import MASK, SECRET_PARAMS
from sync_engine import console

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
#: What makes a query parameter's name secret-bearing once spelling is set aside (lower case,
#: percent-decoded, only letters and digits kept: `secret[]`, `%73ecret`, `Api-Secret`,
#: `source_secret`, `secret[0]` all read `...secret...`). Broader than what the engine reads as
#: its secret (`secret`, `api_secret`, `source_secret`) on purpose: a value named like a secret
#: is masked whatever it is (sources 13:46: `secret[]=` and `;secret=` were logged in clear).
_SECRET_NAME = re.compile(
    "|".join(
        sorted(
            {"secret", "token", "passw", "jwt", "credential", "auth", "apikey", "signature"}
            | {re.escape(name.replace("_", "")) for name in SECRET_PARAMS}
        )
    )
)
#: A `name=value` in free text: after the start, `?`, `&`, `;`, a space or a quote, the name up
#: to `=` (possibly percent-encoded or bracketed), the value up to the next separator (`;` too:
#: a query parser may split there, so `offset=-1;secret=S` is read as a second parameter).
_PARAM = re.compile(r"""(^|[?&;\s"'])([^=?&;\s"']{1,200})=([^&;\s"']*)""")
#: Text without any of these cannot hold a secret-named parameter (skips `_PARAM` for most).
_MAYBE_SECRET = re.compile(r"(?i)secret|token|passw|jwt|credential|auth|key|signature|%")
ACCESS_LOGGER = "proxy.access"


def redact(text: str) -> str:
    """Mask bearer tokens, JWTs and secret query values in arbitrary text."""
    return _redact(text, params=True)


def _redact(text: str, *, params: bool) -> str:
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _JWT.sub(MASK, text)
    if not params or "=" not in text or not _MAYBE_SECRET.search(text):
        return text
    return _PARAM.sub(_masked_param, text)


@lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """Whether a query parameter called `name` (as sent or decoded) carries a secret: its
    percent-decoded, lower-cased letters and digits name one (`_SECRET_NAME`)."""
    plain = _NOT_ALNUM.sub("", unquote_plus(name).lower())
    return _SECRET_NAME.search(plain) is not None


_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def _masked_param(match: re.Match[str]) -> str:
    if not secret_name(match.group(2)):
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}={MASK}"


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
    nested = False  # (a value holding `name=`: `offset=-1;secret=S`, or a decoded `&secret=S`)
    for name, value in items:
        if secret_name(name):
            value = MASK
        elif "=" in value and _MAYBE_SECRET.search(value):
            nested = True
        parts.append(f"{name}={value}")
    return _redact("&".join(parts), params=nested)


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
