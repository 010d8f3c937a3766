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

A stream costs bounded memory whatever its reader does: it reads the log a chunk at a time
(never a whole transaction, which may be gigabytes) and writes it in pieces of `PIECE` bytes,
each one waiting for the transport to drain, dropping what it has written as it goes. A reader
that takes nothing for `SEND_TIMEOUT` is cut (`LiveConnection`): it
resumes from its last up-to-date, which only ever follows a whole transaction. It wrote a
whole transaction, read whole and joined into one more copy, per batch: ~50-75 MB a client
that stopped reading, held as long as its connection (aiohttp has no write timeout).
"""

from __future__ import annotations

import asyncio
import logging
import socket
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
#: Seconds before a stream's end within which no keep-alive is written (at most half the
#: keep-alive interval): the end itself follows (`_stream`).
KEEPALIVE_MARGIN = 1.0
#: Bytes of events written at once: each write waits for the transport to drain, so a reader
#: that stops holds about this much in the engine's buffer (more only for a bigger event).
PIECE = 64 * 1024
#: Bytes of the log an SSE stream reads at once (`ShapeLog.read_after`'s `max_bytes`): what
#: a reader that stops holds besides its piece, where a whole log chunk (10 MB) it was.
READ_BYTES = 256 * 1024
#: The kernel send buffer of an SSE stream's socket (else autotuned up to megabytes of
#: kernel memory per reader that stops), as the proxy bounds its own clients'.
SEND_BUFFER = 256 * 1024


#: Seconds a client may leave the engine's writes to it paused (the transport's buffer above
#: its high-water mark: it took less than ~48 KB meanwhile) before its connection is cut:
#: the proxy's `SEND_TIMEOUT`; nginx's send_timeout is 60 s.
SEND_TIMEOUT = 60.0


class LiveConnection(EngineRequestHandler):
    """The engine's connection, which tells the requests held on it when its client has gone
    (`client_gone`): aiohttp, without `handler_cancellation`, lets a handler run on.

    It also cuts a client that stops reading: once the transport has paused writing, the
    client must take enough to resume it within `SEND_TIMEOUT`, or the connection is
    aborted (its unsent bytes dropped; a handler waiting to write gets a `ConnectionError`,
    as for a client gone). aiohttp has no write timeout: a handler waiting to drain waited
    as long as the connection stayed open, holding its answer all along (an SSE stream, a
    long-poll's chunk). A client cut so resumes as after any broken connection, from its
    last offset, losing nothing.
    """

    __slots__ = ("_gone", "_stall")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gone: asyncio.Future[None] | None = None
        self._stall: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._unstall()
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

    def waits_on_client(self) -> bool:
        # (a request on it asked whether its client goes: it waits on it, and one that has
        # waited before on the same connection counts too: let go at a FIN, as always)
        return self._gone is not None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self._loop.call_later(SEND_TIMEOUT, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unstall()

    def _unstall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        transport = self.transport
        if transport is not None and self.writing_paused:
            logger.info("cut a client that read nothing for %g s", SEND_TIMEOUT)
            transport.abort()


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
    first = await _read(shape, offset)
    await resp.prepare(request)
    if request.method == "HEAD":  # (its head is all of it: held, it sent nothing for
        await resp.write_eof()  # `sse_timeout`, and a request after it waited as long)
        return resp
    _bound_send_buffer(request.transport)
    # From here on an error cannot be answered (the 200 is sent): the stream ends, whole.
    # Answered by the middleware, it was a second response written into this one's body.
    shape.sending += 1  # (in use while it streams: `ShapeRegistry.evict` keeps it)
    try:
        await _stream(resp, s, source, shape, offset, client_gone(request), first)
    except ConnectionError as exc:  # the client went away (or was cut): normal, no error
        # (aiohttp raises `ConnectionError("Connection lost")` for a client gone while the
        # stream waited to write, a sibling of the `ConnectionResetError` of a write after)
        logger.debug("SSE client of shape %s went away: %r", shape.handle, exc)
    except EngineError as exc:  # its log found damaged (the shape is retired): a 409 next
        logger.info("SSE stream of shape %s ended: %s", shape.handle, exc)
        await _end(resp)
    except Exception:
        logger.exception("SSE stream of shape %s failed", shape.handle)
        if request.transport is not None:
            request.transport.close()  # (no well-formed end to give it)
    finally:
        shape.sent()
    return resp


async def _end(resp: web.StreamResponse) -> None:
    try:
        await resp.write_eof()
    except ConnectionError:
        pass


def _bound_send_buffer(transport: asyncio.BaseTransport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:  # (best effort: the engine's own buffer is bounded anyway)
            pass


#: A read of the log: its entries, the offset it ends at, and whether that is the end of a
#: transaction (an up-to-date may follow it).
_Read = tuple[list[bytes], "LogOffset", bool]


async def _read(shape: Shape, offset: LogOffset) -> _Read:
    """The entries after `offset`, about `READ_BYTES` of them (to the end of their log chunk
    at most; a huge record read in a worker thread), the offset they end at, and whether it
    ends a transaction: its last entry says so (`"last": true`), or it is the log's end as
    the read was planned (published transactions are whole)."""
    latest = shape.log.latest_offset  # (the read's plan is taken now, before it awaits)
    entries, end = await shape.log.read_after_async(offset, max_bytes=READ_BYTES)
    if not entries or end == latest:
        return entries, end, True
    return entries, end, ends_transaction(entries[-1])


def ends_transaction(entry: bytes) -> bool:
    """Whether a log entry is its transaction's last: `"last":true` in its headers, looked
    for in its bytes rather than parsed (a 200 MB value was parsed whole on the loop for
    it). Exact: only the headers hold a JSON `true` (row values are strings or null), and
    a quote inside a string is escaped, so no string holds those bytes."""
    return entry.find(b'"last":true', max(0, entry.rfind(b'"headers":{'))) >= 0


async def _stream(
    resp: web.StreamResponse,
    s: Settings,
    source: Source,
    shape: Shape,
    offset: LogOffset,
    gone: asyncio.Future[None] | None,
    first: _Read,
) -> None:
    deadline = time.monotonic() + s.sse_timeout
    entries, end, whole = first
    if entries:
        # Behind the tip: the first chunk, then on from its end (the loop drains the rest at
        # once, then waits at the tip). Ended here, a client chunks behind got one stream of
        # a few ms per chunk, and client 1.5.28 takes three short streams in a row for a
        # buffering proxy and falls back to long polling for good.
        await _write_entries(resp, entries, end.tx if whole else None)
        offset = end
    mid_transaction = not whole

    def over() -> bool:  # (a revoked secret: the stream ends, whole, `Source.revoked`)
        return shape.rotated or source.closing is not None or source.revoked()

    def fresh() -> bool:
        return over() or shape.log.has_after(offset)

    margin = min(KEEPALIVE_MARGIN, s.sse_keepalive / 2)
    while not over():
        remaining = deadline - time.monotonic()
        if remaining <= 0 and not mid_transaction:  # (a transaction is never cut by time:
            break  # one longer than a stream would be sent again by every stream)
        # The last wait runs to the stream's end, and a silence that reaches it ends the
        # stream, never a keep-alive: one written at (or just before) the end told a client
        # "still open" as it closed. A keep-alive due within `margin` of the end is so left
        # out, the silence before the end then up to `sse_keepalive + margin` long.
        last = remaining <= s.sse_keepalive + margin
        wait = max(0.0, remaining) if last else s.sse_keepalive
        if not await shape.wait_until(fresh, wait, gone=gone):
            if gone is not None and gone.done():
                return  # the client has gone: nobody to write to
            if last:
                break  # (its time is up: mid-transaction too, if nothing more came)
            await resp.write(KEEPALIVE)
        elif not over():
            entries, end, whole = await _read(shape, offset)
            if over():  # (while it read)
                break
            await _write_entries(resp, entries, end.tx if whole else None)
            offset = end
            mid_transaction = not whole
        entries = []  # (written: not kept while the stream waits)
    await resp.write_eof()


async def _write_entries(resp: web.StreamResponse, entries: list[bytes], lsn: int | None) -> None:
    """Write `entries` as events in pieces of about `PIECE` bytes, each waiting for the
    transport to drain, emptying `entries` as it goes (a reader that stops holds about a
    piece, not the chunk read); then an up-to-date naming `lsn` when it ends a transaction."""
    entries.reverse()
    parts: list[bytes] = []
    size = 0
    while entries:
        entry = entries.pop()
        if len(entry) >= PIECE:  # (a huge value: its frame in slices of it, not a copy)
            parts.append(b"data: ")
            await resp.write(b"".join(parts))
            parts.clear()
            view = memoryview(entry)
            del entry
            for start in range(0, len(view), PIECE):
                await resp.write(view[start : start + PIECE])
            del view
            parts.append(b"\n\n")
            size = 2
            continue
        frame = sse_frame(entry)
        parts.append(frame)
        size += len(frame)
        if size >= PIECE:
            piece = b"".join(parts)
            parts.clear()
            size = 0
            await resp.write(piece)
            del piece
    if lsn is not None:
        parts.append(sse_frame(up_to_date_message(lsn)))
    if parts:
        await resp.write(b"".join(parts))
