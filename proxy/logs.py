"""JSON log lines with secrets and tokens redacted.

Access log lines carry the request id, method, raw path, a redacted query, status, outcome,
reason, subject and timings. The formatter also scrubs any message: bearer tokens, JWT-shaped
strings and `secret=`-style query values are masked wherever they appear, so a careless
`logger.info("%s", url)` cannot leak them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable

from proxy.upstream.url import MASK, SECRET_PARAMS

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
_SECRET_QUERY = re.compile(
    r"(?i)((?:^|[?&\s\"'])(?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)[^&\s\"']*"
)
ACCESS_LOGGER = "proxy.access"
#: Attributes of a LogRecord that are not user `extra` fields.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every log line to stderr as JSON. Called only from `__main__`."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log prints the raw request line (query included): we log our own.
    logging.getLogger("aiohttp.access").disabled = True
