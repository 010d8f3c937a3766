"""A subset snapshot's response (`subset__*` params or a POST body): JSON rows and metadata.

The query itself is `snapshot/subset.py`; the metadata carries its snapshot, so the client
can drop live changes it already saw in the subset.

The body is `{"metadata":{...},"data":[` + the spooled messages + `]}`, the bytes
`orjson.dumps` of the whole object gives, with its Content-Length: an answer that spilled to
a file (`Spool`) is sent from it at the client's pace (`os.sendfile`, as a snapshot chunk,
`sendfile.py`), never read whole into memory (the part a full disk refused, if any, is
sent from memory after it); a client that takes nothing for
`live.SEND_TIMEOUT` is cut. The query has ended before the status is sent, so a failed one
is still its 4xx/5xx, never a 200 cut short; a send that fails midway aborts the connection,
short of the Content-Length (a client cannot take it for the whole answer).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..errors import ShapeGone
from ..snapshot.subset import Spool, SubsetQuery, run_subset
from .live import client_gone
from .sendfile import _flushed, _sendfile, close_dup, dup_socket

if TYPE_CHECKING:
    from ..shapes.shape import Shape
    from ..source import Source
    from .params import ShapeRequest

#: Bytes read from a spooled answer per write where `os.sendfile` cannot be used (TLS).
READ_BYTES = 256 * 1024


async def serve_subset(
    source: Source,
    shape: Shape,
    req: ShapeRequest,
    subset: SubsetQuery,
    request: web.Request | None = None,
) -> web.StreamResponse:
    """The subset's answer; `request`, when given, is watched for its client leaving, which
    abandons the query in Postgres (`run_subset`)."""
    if req.handle is not None and req.handle != shape.handle:
        raise ShapeGone(shape.handle)
    gone = None if request is None else client_gone(request)
    result = await run_subset(source, shape, subset, gone)
    snapshot = result.snapshot
    metadata = {
        "xmin": str(snapshot.xmin),
        "xmax": str(snapshot.xmax),
        "xip_list": [str(x) for x in sorted(snapshot.xip)],
        "database_lsn": str(result.lsn),
        "snapshot_mark": result.mark,
    }
    head = b'{"metadata":' + orjson.dumps(metadata) + b',"data":['
    offset = req.offset if req.offset is not None and not req.offset.is_before_all else None
    headers = {
        "cache-control": "no-cache",
        "electric-snapshot": "true",
        "electric-handle": shape.handle,
        "electric-schema": shape.schema_json,
        "electric-offset": str(offset if offset is not None else shape.log.latest_offset),
    }
    answer = result.answer
    body = answer.in_memory
    if body is not None:
        answer.close()  # (its bytes are the response's now)
        return web.Response(
            body=head + body + _TAIL,
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )
    return SpooledResponse(head, answer, headers)


_TAIL = b"]}"


class SpooledResponse(web.StreamResponse):
    """200 with body `head` + the spooled answer's file + `]}`; closes the spool (its file,
    its share of the budget) once sent, failed, or never prepared."""

    def __init__(self, head: bytes, answer: Spool, headers: Mapping[str, str]) -> None:
        super().__init__(status=200, headers=headers)
        self.content_type = "application/json"
        self.charset = "utf-8"
        self.content_length = len(head) + answer.size + len(_TAIL)
        self._head = head
        self._answer = answer
        self._close = weakref.finalize(self, answer.close)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            if writer is None or request.method == "HEAD":
                return writer
            try:
                await self._send_body(request, writer)
            except BaseException:
                if request.transport is not None:
                    request.transport.abort()  # short of its length: end the connection
                raise
            return writer
        finally:
            self._close()

    async def _send_body(self, request: web.BaseRequest, writer: AbstractStreamWriter) -> None:
        await self.write(self._head)
        fd, size = self._answer.fileno(), self._answer.file_size
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if transport is None or sock is None or transport.get_extra_info("sslcontext"):
            for start in range(0, size, READ_BYTES):
                # (the transport's writes are cut by `LiveConnection` past SEND_TIMEOUT)
                part = min(READ_BYTES, size - start)
                await self.write(await asyncio.to_thread(_read, fd, start, part))
        else:
            await _flushed(transport, writer)
            out = dup_socket(sock.fileno())
            try:
                await _sendfile(out, fd, size)  # (cuts a client that takes nothing)
            finally:
                close_dup(out)
        for held in self._answer.tail:  # (what a full disk left in memory)
            await self.write(held)
        await self.write(_TAIL)


def _read(fd: int, start: int, size: int) -> bytes:
    data = os.pread(fd, size, start)
    if len(data) != size:
        raise ConnectionResetError("the spooled answer is shorter than its size")
    return data
