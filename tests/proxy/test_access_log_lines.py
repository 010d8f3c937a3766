"""A client cannot write lines of its own into the proxy's log.

The access line carries the request's query (`query=...`), decoded. A `%0a` (or `%0d`, `%00`)
in any parameter, even one the proxy drops such as `cache-buster`, became a real line break in the
text log (`--log-format text`, what an operator reads in a terminal or a file), so a client, with
or without a token, could append a whole forged access line (`... subject=admin ...`). Each request
must stay one line, with no control character, in both formats.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any
from urllib.parse import quote

import pytest

from proxy.logs import JsonFormatter, TextFormatter, configure_logging

FORGED = "x\n13:00:00.000 INFO    proxy.access: GET /v1/shape 200  subject=admin\r\x00forged=yes"


@pytest.mark.parametrize("with_token", [True, False])
async def test_a_query_cannot_break_an_access_line(
    proxy: Any, caplog: pytest.LogCaptureFixture, with_token: bool
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy.access")
    token = proxy.tokens.make() if with_token else None
    for name in ("cache-buster", "where", "table", "handle"):
        caplog.clear()
        target = f"/v1/shape?table=items&offset=-1&{name}={quote(FORGED, safe='')}"
        reply = await proxy.get(target, token=token) if token else await proxy.get(target)
        assert reply.status < 500
        access = [r for r in caplog.records if r.name == "proxy.access"]
        assert len(access) == 1, [r.getMessage() for r in caplog.records]
        text = TextFormatter().format(access[0])
        assert "\n" not in text and "\r" not in text and "\x00" not in text, text
        assert "forged=yes" in text  # (still shown, escaped: the operator sees what came)
        entry = json.loads(JsonFormatter().format(access[0]))
        assert "forged=yes" in entry["query"]


def test_text_log_fields_and_tracebacks_stay_their_own_lines() -> None:
    """A `sub` claim, an `X-Request-Id` or an exception's message are escaped too; a traceback
    keeps its lines but indented, so none of them starts like a record."""
    record = logging.LogRecord(
        "proxy.access", logging.INFO, __file__, 1, "GET %s", ("/a\nb",), None
    )
    record.subject = "eve\n12:00:00.000 INFO    proxy.access: forged"
    record.request_id = "r\x1b[2Jid"
    record.query = "where=a\\x0Ab"  # a literal backslash cannot pass for an escape
    text = TextFormatter().format(record)
    assert "\n" not in text and "\x1b" not in text, text
    assert "/a\\x0Ab" in text and "eve\\x0A12:00" in text and "where=a\\\\x0Ab" in text
    try:
        raise ValueError("boom\n12:00:00.000 INFO    proxy.access: forged")
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = TextFormatter().format(record).split("\n")
    assert lines[1].startswith("  Traceback") and all(line.startswith("  ") for line in lines[1:])


def test_the_programs_text_log_is_the_escaping_one() -> None:
    """`--log-format text` (what `__main__` sets up) uses the escaping formatter."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    aiohttp_access = logging.getLogger("aiohttp.access")
    disabled = aiohttp_access.disabled
    try:
        configure_logging("INFO", "text")
        assert [type(h.formatter) for h in root.handlers] == [TextFormatter]
    finally:
        root.handlers[:], root.level = saved, level
        aiohttp_access.disabled = disabled
