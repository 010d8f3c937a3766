"""An admin API request with its credential header twice, or with both credential headers
(Authorization and X-Admin-Token), is a 400, whatever the values: one was read (a valid
token first, anything after: 200; the reverse a 401), where a request carrying two
credentials is malformed (Authorization is a singleton field, RFC 9110). A real engine process, its admin listener spoken to over a raw socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sync_engine.tenants.harness import PROCESS_TOKEN, AdminEngine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[AdminEngine]:
    engine = AdminEngine(tmp_path / "data", tmp_path / "engine.log")
    try:
        yield engine
    finally:
        engine.stop()


async def _ask(port: int, headers: list[bytes]) -> tuple[int, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /api/sources HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"".join(h + b"\r\n" for h in headers)
            + b"\r\n"
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_a_credential_header_sent_twice_is_a_400(engine: AdminEngine) -> None:
    good = PROCESS_TOKEN.encode()
    bearer = b"Authorization: Bearer " + good
    status, _ = await _ask(engine.admin_port, [bearer])
    assert status == 200
    for headers in (
        [bearer, b"Authorization: Bearer wrong"],
        [b"Authorization: Bearer wrong", bearer],
        [bearer, bearer],
        [b"X-Admin-Token: " + good, b"X-Admin-Token: wrong"],
        [bearer, b"X-Admin-Token: wrong"],
        [b"Authorization: Basic eDp5", b"X-Admin-Token: " + good],
        [bearer, b"X-Admin-Token: " + good],
    ):
        status, body = await _ask(engine.admin_port, headers)
        assert status == 400, (headers, status, body)
        assert body["error"] == "invalid_request" and "send one" in body["message"], body
    status, _ = await _ask(engine.admin_port, [b"X-Admin-Token: " + good])
    assert status == 200
