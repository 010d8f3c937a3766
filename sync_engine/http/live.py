"""SSE (`live=true&live_sse=true`): one `data:` event per message, up-to-date after each batch.

The client resumes from `<global_last_seen_lsn>_0`, so every up-to-date names the LSN of the
last delivered transaction; reading by transaction makes that offset exact. Keep-alive
comments fill silences, the stream ends after `sse_timeout`, when the shape rotates (the
client's next request then gets the 409) or at once when its source is paused or deleted
(`Source.close_to_requests`: the next request gets the 503 or 401).

A request held at the tip (a long-poll or an SSE stream) is let go as soon as its client's
connection closes (`LiveConnection`, `client_gone`), not at the end of its timeout: the
server does not cancel handlers (a write in progress, a shape being created, must finish),
so without this a reconnect storm multiplied the held waiters, each for its 20 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import EngineError
from ..log.entries import up_to_date_message
from . import headers as h
from .server import EngineRequestHandler

if TYPE_CHECKING:
    from ..log.offsets import LogOffset
    from ..settings import Settings
    from ..shapes.shape import Shape
    from ..source import Source
    from .params import ShapeRequest

logger = logging.getLogger(__name__)
KEEPALIVE = b": keep-alive\n\n"


class LiveConnection(EngineRequestHandler):
    """The engine's connection, which tells the requests held on it when its client has gone
    (`client_gone`): aiohttp, without `handler_cancellation`, lets a handler run on."""

    __slots__ = ("_gone",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gone: asyncio.Future[None] | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result(None)

    def gone(self) -> asyncio.Future[None]:
        """Resolved once the connection is lost: one per connection, made when first asked."""
        gone = self._gone
        if gone is None:
            gone = self._gone = asyncio.get_running_loop().create_future()
            if self.transport is None:  # lost (or closed by the server) already
                gone.set_result(None)
        return gone


#: Seconds a write to an SSE stream may wait for its client to read (the proxy's
#: `SEND_TIMEOUT`; nginx's send_timeout is 60 s) before the stream is cut.
SEND_TIMEOUT = 60.0


class _NotReading(Exception):
    """An SSE client did not read its stream within `SEND_TIMEOUT`."""


def client_gone(request: web.Request) -> asyncio.Future[None] | None:
    """A future resolved when `request`'s client has closed its connection (None when the
    request did not come through a `LiveConnection`, as in tests of the app alone)."""
    protocol = request.protocol
    return protocol.gone() if isinstance(protocol, LiveConnection) else None


def sse_frame(message: bytes) -> bytes:
    return b"data: " + message + b"\n\n"


async def serve_sse(
    request: web.Request, s: Settings, source: Source, shape: Shape, req: ShapeRequest
) -> web.StreamResponse:
    assert req.offset is not None
    offset = req.offset
    latest = shape.log.latest_offset
    resp = web.StreamResponse(
        status=200,
        headers={
            "content-type": "text/event-stream",
            "cache-control": h.cache_control(
                method=request.method,
                before_all=False,
                live=True,
                sse=True,
                sse_timeout=s.sse_timeout,
                max_age=s.max_age,
                stale_age=s.stale_age,
            ),
            "electric-handle": shape.handle,
            # The client adopts this offset when the stream opens, before any event: it must
            # be where this stream starts, or a stream cut before its first up-to-date (say
            # `forceDisconnectAndRefresh`) would resume past changes it never processed.
            "electric-offset": str(offset),
            "electric-cursor": str(h.next_cursor(req.cursor, s.long_poll_timeout)),
            "electric-has-data": "true",
            # `handle:offset:<log end>:time`: where the log ended when the stream opened (a
            # transaction's end, never the client's offset: a forged one past the log's end
            # would teach the proxy's SSE fan-out a wrong transaction end). The fan-out reads
            # it from here (`proxy.upstream.sse`): no header of its own, none a client sees
            # that the proxy's clients do not.
            "etag": h.etag(shape.handle, str(offset), str(latest), no_change=True),
            "x-accel-buffering": "no",
        },
    )
    # Read before the headers go: a log found damaged now is a plain 409.
    first = shape.log.read_after(offset, whole_transactions=True)
    await resp.prepare(request)
    # From here on an error cannot be answered (the 200 is sent): the stream ends, whole.
    # Answered by the middleware, it was a second response written into this one's body.
    try:
        await _stream(resp, s, source, shape, offset, client_gone(request), first)
    except _NotReading as exc:
        logger.info("SSE stream of shape %s cut: %s", shape.handle, exc)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError as exc:  # the client went away: nothing to answer, no error
        # (ConnectionResetError, and aiohttp's plain ConnectionError("Connection lost") when
        # it goes while a write waits for room: logged with a traceback at ERROR, 66 times
        # in one probe, where nothing was wrong)
        logger.debug("SSE client of shape %s went away: %r", shape.handle, exc)
    except EngineError as exc:  # its log found damaged (the shape is retired): a 409 next
        logger.info("SSE stream of shape %s ended: %s", shape.handle, exc)
        await _end(resp)
    except Exception:
        logger.exception("SSE stream of shape %s failed", shape.handle)
        if request.transport is not None:
            request.transport.close()  # (no well-formed end to give it)
    return resp


async def _end(resp: web.StreamResponse) -> None:
    try:
        await resp.write_eof()
    except ConnectionResetError:
        pass


async def _stream(
    resp: web.StreamResponse,
    s: Settings,
    source: Source,
    shape: Shape,
    offset: LogOffset,
    gone: asyncio.Future[None] | None,
    first: tuple[list[bytes], LogOffset],
) -> None:
    deadline = time.monotonic() + s.sse_timeout
    entries, end = first
    if entries:
        # Behind the tip: the first chunk, then on from its end (the loop drains the rest at
        # once, then waits at the tip). Ended here, a client chunks behind got one stream of
        # a few ms per chunk, and client 1.5.28 takes three short streams in a row for a
        # buffering proxy and falls back to long polling for good.
        await _write_batch(resp, entries, end.tx)
        offset = end

    def over() -> bool:
        return shape.rotated or source.closing is not None

    def fresh() -> bool:
        nonlocal entries, end
        if over():
            return True
        entries, end = shape.log.read_after(offset, whole_transactions=True)
        return bool(entries)

    while not over():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if not await shape.wait_until(fresh, min(remaining, s.sse_keepalive), gone=gone):
            if gone is not None and gone.done():
                return  # the client has gone: nobody to write to
            if deadline - time.monotonic() > 0:
                await resp.write(KEEPALIVE)
        elif not over():
            await _write_batch(resp, entries, end.tx)
            offset = end
    await resp.write_eof()


async def _write_batch(resp: web.StreamResponse, entries: list[bytes], lsn: int) -> None:
    data = b"".join(sse_frame(e) for e in entries) + sse_frame(up_to_date_message(lsn))
    try:
        async with asyncio.timeout(SEND_TIMEOUT):
            await resp.write(data)
    except TimeoutError:
        # A client that stopped reading held its stream, and the batch waiting to be
        # written (tens of MB for a big transaction), for as long as its connection
        # lived. Cut as the proxy cuts one (its SEND_TIMEOUT): the client resumes from
        # its last up-to-date.
        raise _NotReading(f"its client read nothing in {SEND_TIMEOUT:g} s") from None
