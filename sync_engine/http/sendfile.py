"""A big snapshot chunk's response, `[` + the chunk file + `]`, its file sent by the kernel.

Snapshot chunk files are immutable and their bytes are checked before each send (see
`ShapeLog.check_snapshot_file` and `log/verdicts.py`), so a response need not pass through
Python: reading a 10 MB chunk, joining it into a body and writing that to the socket was
most of a warm sync's engine CPU and a good share of a cold one's. `os.sendfile` hands the
file's cached pages to the socket instead. aiohttp's `FileResponse` does that too, but not
on uvloop (whose loop has no `sendfile`: it falls back to reading chunks), and it cannot
frame the file with `[` and `]`.

A chunk region that passed a check is sent checking the bytes it sends, whatever its file
is now (a pack may grow between the two looks: review 11:52) (`_checked_send`: each piece
read into one buffer, added to a crc32 and written from that buffer; the body's `]` only
when the crc32 of all of it is what was written, else the connection is cut and the shape
retired: `log/verdicts.py` says what that covers). A kept verdict vouches for cached pages
only: a page dropped after the check was read again from the disk by `sendfile` itself,
damaged or not, and went out whole (chaos 10:57). Big chunk files are not checked before
the send at all (`ShapeLog.snapshot_check_kept`); smaller chunks and pack regions still are
when no verdict stands (a 409 first). `sendfile` remains for a region with no passed check
(`_unchanged` then cuts a body whose file changed since the check before it), and for a
send that finds none of the `PIECE_BUFFERS` piece buffers free (slow clients hold them):
it is checked before it goes out (`_check_before`), so memory does not grow with readers.

The file is sent on the event loop, non-blocking, from a duplicate of the connection's
socket descriptor: should the transport close the socket meanwhile (the client went
away), its descriptor number may be reused at once, but the duplicate still names this
connection, and sending to it fails instead of writing into another one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..log.checksum import crc32
from ..log.files import LogDamaged, transient_read_error
from . import live
from .parser_refusals import note_send_descriptors

if TYPE_CHECKING:
    from ..shapes.shape import Shape

logger = logging.getLogger(__name__)

#: What `fstat` says of a file: (device, inode, size, mtime ns, ctime ns, links).
Ident = tuple[int, int, int, int, int, int]


def ident(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)


#: Descriptors a chunk sent from its file holds besides its connection's: the file and the
#: duplicate of the socket `ChunkFileResponse` sends it to (counted from the file's opening).
SEND_DESCRIPTORS = 2


def open_chunk(path: str, counted: int = SEND_DESCRIPTORS) -> int | None:
    """A descriptor of the chunk file, or None (gone: the caller reads it the checked way).
    `counted` descriptors count against the file limit (`note_send_descriptors`) until
    `close_chunk`: by default the file and its send's socket duplicate, made later (so that
    requests let in together do not all pass `room_for_send` before any holds both)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    note_send_descriptors(counted)
    return fd


def close_chunk(fd: int, counted: int = SEND_DESCRIPTORS) -> None:
    """Close a descriptor `open_chunk` gave (with the same `counted`)."""
    note_send_descriptors(-counted)
    os.close(fd)


def dup_socket(fd: int) -> int:
    """A duplicate of the connection's socket for `_sendfile` (see the module's docstring),
    counted against the file limit until `close_dup` (a subset's answer: its spooled file
    is counted by the spool)."""
    out = os.dup(fd)
    note_send_descriptors(1)
    return out


def close_dup(out: int) -> None:
    note_send_descriptors(-1)
    os.close(out)


class ChunkFileResponse(web.StreamResponse):
    """200 with body `[` + `size` bytes of the open file `fd` from `offset` + `]` (a chunk
    file, or a last chunk's region of its pack); closes `fd`. Its shape counts as in use
    (`Shape.sending`) while the body is sent."""

    # The head waits for the body's first write (`[`) and goes out with it, in one `write`
    # (as `web.Response`'s does): a StreamResponse sends its head at `prepare`, a small
    # segment of its own on the wire before `[`'s, each a system call and a wakeup of the
    # client. (A HEAD's head is sent at `write_eof`, as a Response's.)
    _send_headers_immediately = False

    def __init__(
        self,
        fd: int,
        size: int,
        headers: Mapping[str, str],
        shape: Shape,
        offset: int = 0,
        checked: Ident | None = None,
    ) -> None:
        """`checked`: what `fstat` said of the file before its bytes were checked; a file
        written to since (through the filesystem) is not answered whole (`_unchanged`)."""
        super().__init__(status=200, headers=headers)
        self._shape = shape
        self.content_type = "application/json"
        self.charset = "utf-8"
        self.content_length = size + 2
        self._size = size
        self._offset = offset
        self._checked = checked
        self._close_fd = weakref.finalize(self, close_chunk, fd)  # also if never prepared
        self._fd = fd

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            if writer is None or request.method == "HEAD":
                return writer
            self._shape.sending += 1
            try:
                await self._send_body(request, writer)
            finally:
                self._shape.sent()
            return writer
        finally:
            self._close_fd()

    async def _send_body(self, request: web.BaseRequest, writer: AbstractStreamWriter) -> None:
        """`[`, the file, `]`. A big chunk file that passed a check as it is now was not
        checked again before this send (`ShapeLog.send_check`): its bytes are checked as they
        are sent, and the body is cut before its `]` when they do not match (`_checked_send`)."""
        await self.write(b"[")
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        check: tuple[int, int] | None = None
        if self._checked is not None:  # (a chunk of a shape log: see `ShapeLog.send_check`)
            st = os.fstat(self._fd)
            check = self._shape.log.send_check(st, self._offset, self._size)
        if transport is None or sock is None or transport.get_extra_info("sslcontext"):
            # (read and written by the transport: no duplicate of the socket, whose
            # descriptor `open_chunk` counted too; the file's is counted until closed)
            if self._close_fd.detach() is not None:
                note_send_descriptors(1 - SEND_DESCRIPTORS)
                self._close_fd = weakref.finalize(self, close_chunk, self._fd, 1)
            data = await asyncio.to_thread(_read, self._fd, self._size, self._offset)
            if check is not None and crc32(data) != check[1]:
                self._refuse(transport, check[0], st)
            await self.write(data)
        else:
            await _flushed(transport, writer)
            out = os.dup(sock.fileno())  # (counted with the file: `open_chunk`)
            try:
                sent = None  # (whether the bytes sent were checked and matched; None: not sent)
                if check is not None:
                    sent = await _checked_send(out, self._fd, self._size, check[1], self._offset)
                    if sent is False:
                        self._refuse(transport, check[0], st)
                    if sent is None:  # (no piece buffer free: the way before, bounded memory)
                        await self._check_before(transport, check[0])
                        check = None
                if sent is None:
                    await _sendfile(out, self._fd, self._size, self._offset)
            except BaseException:
                transport.abort()  # the body is short of its length: end the connection
                raise
            finally:
                os.close(out)
        if check is not None:
            await self.write(b"]")  # (the bytes sent were checked: whatever the file is now)
            return
        if not self._unchanged():
            if transport is not None:
                transport.abort()  # the body is short of its length: the client retries
            raise ConnectionResetError("the chunk's file was written to while it was sent")
        await self.write(b"]")

    async def _check_before(self, transport: asyncio.Transport, index: int) -> None:
        """Check the chunk's region of the file before it is sent by `sendfile` (a send that
        found no piece buffer free: `_PiecePool`), whatever verdict was kept (it vouches for
        cached pages only). Damaged: the body is cut before its end and the shape retired
        (the check's `on_damage`), as a send that checks its bytes would do."""
        try:
            await asyncio.to_thread(self._shape.log.check_snapshot_file, index, self._fd, True)
        except LogDamaged as exc:
            transport.abort()
            raise ConnectionResetError(f"chunk {index} of {self._shape.handle}: {exc}") from None

    def _refuse(
        self, transport: asyncio.Transport | None, index: int, st: os.stat_result
    ) -> NoReturn:
        """The bytes sent do not match the chunk's checksum: cut the body before its end
        (the client sees a broken response, never a complete one) and retire the shape (its
        next request is a 409)."""
        if transport is not None:
            transport.abort()
        reason = "does not match its checksum (found while it was sent)"
        self._shape.log.send_check_failed(index, st, self._offset, reason)
        raise ConnectionResetError(f"chunk {index} of {self._shape.handle} {reason}")

    def _unchanged(self) -> bool:
        """Whether the file's bytes are as they were when they were checked. The check reads
        the file and the send reads it again: bytes written in place between the two
        (through the filesystem: the change time moves, whatever is done to the others)
        would go out unchecked. Not a change: a pack grown meanwhile (another shape's record
        appended; its regions are never written again), and a file unlinked meanwhile (its
        shape retired: the change time moves with the link count, the bytes do not). Damage
        below the filesystem changes no time: see `check_ahead`."""
        if self._checked is None:
            return True
        was, now = self._checked, ident(os.fstat(self._fd))
        if now == was:
            return True
        size, mtime, ctime, links = now[2:]
        if self._offset and size > was[2]:
            return True
        return size == was[2] and mtime == was[3] and (ctime == was[4] or links < was[5])


def _read(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ConnectionResetError(f"chunk file shorter than its {size} bytes")
    return data


#: Bytes `_checked_send` reads, checks and writes at a time (one buffer in the CPU's cache:
#: 1 MiB pieces cost the sender about what `sendfile` does, and the reader ~35% less than
#: reading the file's pages, measured on this VM; 256 KiB pieces cost the sender more).
SEND_PIECE = 1 << 20
#: Piece buffers at most, held by sends or kept for the next ones (`_PiecePool`).
PIECE_BUFFERS = 8


class _PiecePool:
    """The piece buffers of checked sends: at most `PIECE_BUFFERS`, whatever the number of
    sends. A send holds its buffer while it waits for its client to take the bytes (up to
    `live.SEND_TIMEOUT` per wait), so one buffer per send made the engine's memory grow with
    its slow readers: 200 of them took +195 MiB (review 11:36). A send that finds every
    buffer held is checked before it and sent by `sendfile` instead (`_check_before`), which
    holds no buffer. Event loop only.

    A buffer goes back to the pool only when nothing else can write into it or read from it:
    its bytes are written with `os.write` to the socket (the kernel copies them: nothing is
    left pending on the buffer when the call returns; the transport, whose `write` may keep
    a reference, never sees it), and a send cancelled during a read in a worker thread gives
    its slot back but drops its buffer (the thread still writes into it)."""

    __slots__ = ("free", "held", "made", "most_held", "refused")

    def __init__(self) -> None:
        self.free: list[bytearray] = []
        self.held = 0  # (slots taken by sends now)
        self.made = 0  # (buffers allocated so far: for tests)
        self.most_held = 0
        self.refused = 0  # (sends that found no slot: for tests)

    def take(self, size: int) -> bytearray | None:
        """A buffer of at least min(`SEND_PIECE`, `size`) bytes, or None when all are held."""
        if self.held >= PIECE_BUFFERS:
            self.refused += 1
            return None
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        need = min(SEND_PIECE, size)
        for i, buf in enumerate(self.free):
            if len(buf) >= need:
                return self.free.pop(i)
        if self.free and self.held + len(self.free) > PIECE_BUFFERS:
            self.free.remove(min(self.free, key=len))  # (too small for this send)
        self.made += 1
        return bytearray(need)

    def give(self, buf: bytearray, owned: bool) -> None:
        """The slot back, and the buffer when the send still `owned` it (see the class)."""
        self.held -= 1
        if owned and self.held + len(self.free) < PIECE_BUFFERS:
            self.free.append(buf)


_pieces = _PiecePool()


async def _checked_send(out: int, fd: int, size: int, crc: int, start: int = 0) -> bool | None:
    """Send `size` bytes of the file `fd` from `start` to the socket `out`, each piece read into
    a buffer, added to a crc32 and written from that same buffer: returns whether the file
    had `size` bytes whose crc32 is `crc` (when not, the caller cuts the body before its end:
    what went out is never a complete response); None, having sent nothing, when no piece
    buffer is free (`_PiecePool`). Reads what is cached on the event loop (`RWF_NOWAIT`),
    what is not in a worker thread (a read from the disk)."""
    buf = _pieces.take(size)
    if buf is None:
        return None
    view = memoryview(buf)
    done = got = 0
    reading = _Reading()
    writable: _Writable | None = None
    try:
        while done < size:
            want = view[: min(len(buf), size - done)]
            try:
                n = await _read_piece(fd, want, start + done, reading)
            except OSError as exc:
                if transient_read_error(exc):
                    raise  # (the body is cut: the client retries)
                return False  # (unreadable: damaged)
            if not n:
                return False  # (shorter than it was written)
            piece = view[:n]
            got = crc32(piece, got)
            sent = 0
            while sent < n:
                try:
                    sent += os.write(out, piece[sent:])  # (copied by the kernel: see the pool)
                except BlockingIOError:
                    if writable is None:
                        writable = _Writable(asyncio.get_running_loop(), out)
                    await writable.wait()
            done += n
        return got == crc
    finally:
        if writable is not None:
            writable.close()
        # (a read left running in a thread by a cancelled send still writes into it)
        _pieces.give(buf, owned=not reading.in_thread)


class _Reading:
    """Whether a send's read is running in a worker thread now."""

    __slots__ = ("in_thread",)

    def __init__(self) -> None:
        self.in_thread = False


#: `preadv` flag: read only what is cached, else fail with EAGAIN (Linux 4.14+).
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


async def _read_piece(fd: int, into: memoryview, at: int, reading: _Reading) -> int:
    """Read into `into` from offset `at` of the file: on the event loop when the bytes are
    cached (a copy, no wait), else in a worker thread (a read from the disk must not stall
    the loop; `reading.in_thread` meanwhile)."""
    if _NOWAIT:
        try:
            return os.preadv(fd, [into], at, _NOWAIT)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
    reading.in_thread = True
    n = await asyncio.to_thread(os.preadv, fd, [into], at)
    reading.in_thread = False
    return n


async def _flushed(transport: asyncio.Transport, writer: AbstractStreamWriter) -> None:
    """Wait until the transport has handed everything written so far to the kernel, so the
    file's bytes follow them on the socket (normally at once: `[` and the headers are
    small and the client has read the previous response)."""
    if not transport.get_write_buffer_size():
        return
    high, low = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(0, 0)  # the protocol pauses until the buffer is empty
    try:
        while transport.get_write_buffer_size():
            await writer.drain()
            if transport.is_closing():
                raise ConnectionResetError("connection closed")
            await asyncio.sleep(0)
    finally:
        transport.set_write_buffer_limits(high, low)


async def _sendfile(out: int, fd: int, size: int, start: int = 0) -> None:
    """Send `size` bytes of the file `fd` from `start` to the socket `out`, waiting for it to
    take more (`_Writable`: one registration with the loop for the whole send)."""
    offset = 0
    writable: _Writable | None = None
    try:
        while offset < size:
            try:
                sent = os.sendfile(out, fd, start + offset, size - offset)
            except BlockingIOError:
                if writable is None:
                    writable = _Writable(asyncio.get_running_loop(), out)
                await writable.wait()
                continue
            if sent == 0:
                raise ConnectionResetError(f"chunk file shorter than its {size} bytes")
            offset += sent
    finally:
        if writable is not None:
            writable.close()


class _Writable:
    """Waits for the socket `fd` to take more bytes, at most `live.SEND_TIMEOUT` seconds each
    time: a client that reads nothing for that long is cut, as the transport's own writes are
    (`LiveConnection`). The file's bytes bypass the transport, so its guard never sees them:
    a client that stopped reading mid-chunk held the handler, the chunk file and a socket
    descriptor for as long as it kept its connection open.

    Why one object per send: a 10 MiB chunk meets a full socket buffer ~6 times. Registering
    the descriptor with the loop for each wait and removing it after cost 6 `epoll_ctl` calls
    each time in uvloop (210 per 1M-row warm sync, against nginx's 2), plus a timer and the
    futures of `asyncio.wait_for`; here the descriptor stays registered until the send ends
    (level-triggered: its callback runs only while the socket can take bytes, and does
    nothing when no one waits), and one timer per send checks how long the current wait has
    lasted."""

    __slots__ = ("_fd", "_loop", "_ready", "_since", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._ready: asyncio.Future[None] | None = None
        self._since = 0.0  # (loop time the current wait began)
        self._timer: asyncio.TimerHandle | None = None
        loop.add_writer(fd, self._wake)

    def _wake(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.set_result(None)

    def _check(self) -> None:
        """The timer: cut the client if the current wait has lasted `SEND_TIMEOUT`, else
        look again when it would have."""
        self._timer = None
        ready = self._ready
        if ready is None or ready.done():
            return  # (no wait now: `wait` arms the timer again)
        left = self._since + live.SEND_TIMEOUT - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check)
            return
        self._ready = None
        logger.info("cut a client that read nothing for %g s", live.SEND_TIMEOUT)
        ready.set_exception(ConnectionResetError("the client read nothing"))

    async def wait(self) -> None:
        loop = self._loop
        ready = self._ready = loop.create_future()
        self._since = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(live.SEND_TIMEOUT, self._check)
        await ready

    def close(self) -> None:
        self._loop.remove_writer(self._fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ready = None
