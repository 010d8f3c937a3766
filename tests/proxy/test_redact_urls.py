"""Credentials in configured URLs never reach the log or an `explain` report.

`upstream.url` may hold a `user:password@` and a `jwks_url` a password and a key in its query
(the config accepts both). The "listening" line showed the engine URL, `explain` its
`upstream_url` and the "JWKS fetch failed" warning the JWKS URL with all of it in clear
(attack round 7, 21:42). Now the password and a JWKS URL's query values are `[REDACTED]`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from yarl import URL

from proxy.auth.jwks import JwksCache
from proxy.errors import ServiceUnavailable
from proxy.redact import redact_url
from proxy.upstream.url import mask_url
from tests.cdn.processes import running
from tests.support.ports import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_redact_url_masks_the_password_and_every_query_value() -> None:
    shown = redact_url("http://jwksuser:JWKSPW-r7@127.0.0.1:29059/jwks.json?key=JWKSKEY-r7&b=2")
    assert (
        shown == "http://jwksuser:[REDACTED]@127.0.0.1:29059/jwks.json?key=[REDACTED]&b=[REDACTED]"
    )
    assert redact_url("http://upuser:UPSTREAMPW-r7@engine:3000") == (
        "http://upuser:[REDACTED]@engine:3000"
    )
    assert redact_url("http://engine:3000/") == "http://engine:3000/"  # (nothing to hide)


def test_explain_upstream_url_hides_the_password_of_upstream_url() -> None:
    url = URL("http://upuser:UPSTREAMPW-r7@127.0.0.1:29000/v1/shape?table=todos&secret=S3CRET")
    shown = mask_url(url)
    assert "UPSTREAMPW-r7" not in shown and "S3CRET" not in shown
    assert (
        shown == "http://upuser:[REDACTED]@127.0.0.1:29000/v1/shape?table=todos&secret=[REDACTED]"
    )


async def test_the_jwks_fetch_failed_warning_shows_no_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as closed:  # (a port nothing listens on: the fetch fails at once)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://jwksuser:JWKSPW-r7@127.0.0.1:{port}/jwks.json?key=JWKSKEY-r7"
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(url, session, timeout=2)
        with caplog.at_level(logging.WARNING, logger="proxy.auth.jwks"):
            with pytest.raises(ServiceUnavailable):  # (no key: the token cannot be verified)
                await cache.get_key("kid-1", "RS256")
    text = caplog.text
    assert "JWKS fetch failed" in text  # (the warning this test is about was written)
    assert "JWKSPW-r7" not in text and "JWKSKEY-r7" not in text
    assert f"jwksuser:[REDACTED]@127.0.0.1:{port}/jwks.json?key=[REDACTED]" in text


def test_the_listening_line_shows_no_password_of_upstream_url(tmp_path: Path) -> None:
    """`python -m proxy` with a `user:password@` in `upstream.url` (no engine needed: the
    line is written once the proxy listens)."""
    config = yaml.safe_load((ROOT / "config/examples/open.yaml").read_text())
    config["upstream"]["url"] = f"http://upuser:UPSTREAMPW-r7@127.0.0.1:{free_port()}"
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "proxy", "--config", str(path), "--port", str(free_port())]
    log = tmp_path / "proxy.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        log.open("wb") as out,
        running(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT),
    ):
        wait_until(lambda: "listening on" in log.read_text(), timeout=30, interval=0.1)
    text = log.read_text()
    assert "UPSTREAMPW-r7" not in text
    assert "upuser:[REDACTED]@127.0.0.1" in text
