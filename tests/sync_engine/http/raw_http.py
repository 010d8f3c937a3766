"""Raw HTTP/1.1 over a socket to the in-process engine: for the tests of what aiohttp's client
would not send or would hide (heads trickled byte by byte, bodies declared and never sent,
connections left open after an answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from sync_engine.app import SOURCES, build_app
from tests.sync_engine.engine_harness import SETTINGS


async def engine_port(
    aiohttp_client: Any,
    db_url: str,
    tmp_path: Path,
    server: Callable[[web.Application], TestServer] | None = None,
) -> int:
    """The port of an engine served in-process on `db_url` (by `server`, if given), once its
    source is ready."""
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    app = build_app(settings)
    client = await aiohttp_client(server(app) if server is not None else app)
    await client.app[SOURCES]["default"].ready.wait()
    assert client.port is not None
    return int(client.port)


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """One answer (head, then a body of its Content-Length) off the connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    return head + await asyncio.wait_for(reader.readexactly(length), timeout)


def parse_answer(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers by lower-case name, body) of an answer's bytes."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body
