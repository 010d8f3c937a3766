"""GET/POST/DELETE /v1/shape: request -> shape -> log read -> response.

Which part of the log a request gets (protocol sheet 3.9):
- `offset=-1`: snapshot chunk 0, answered as `0_0`, never up-to-date (so it caches long);
- `0_k` while snapshot chunks remain: chunk k+1 as `0_(k+1)`;
- past the snapshot or a real offset: the transactions after it up to the end of its log
  chunk; up-to-date when that reaches the shape's latest offset; a live request at the tip
  waits for the next append (or answers up-to-date with `electric-has-data: false`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from ..errors import BadBody, EngineError, InvalidRequest, ServiceUnavailable, ShapeGone
from ..log.entries import up_to_date_message
from ..log.offsets import BEFORE_ALL, LogOffset, snapshot_chunk_offset
from ..shapes.registry import SHAPE_LIMIT_REACHED
from ..single_flight import single_flight
from ..snapshot.subset import parse_subset
from ..tables import StaleDescription, not_answering
from . import check_ahead
from . import headers as h
from .errors import json_response
from .live import client_gone, serve_sse
from .params import (
    MAX_BODY,
    ShapeRequest,
    check_query_utf8,
    parse_delete_request,
    parse_json_body,
    parse_shape_request,
)
from .parser_refusals import announced_length, room_for_send
from .sendfile import ChunkFileResponse, Ident, close_chunk, ident, open_chunk
from .subset import serve_subset

if TYPE_CHECKING:
    from ..log.files import ShapeLog
    from ..settings import Settings
    from ..shapes.shape import Shape
    from ..source import Source

#: Seconds a request waits for a snapshot chunk before a 503 asks it to come back.
SNAPSHOT_WAIT = 60.0
#: Seconds a request waits for a snapshot chunk before it asks whether Postgres answers at
#: all (and then again every as many): a silent one (stopped, behind a partition) gets the
#: request a 503 within this and `Settings.probe_timeout`, a slow one keeps it waiting. The
#: default of `Settings.snapshot_quiet`.
SNAPSHOT_QUIET = 2.0

#: An answer this big or bigger is written in pieces (`_pieces`), not joined into one body.
STREAM_BYTES = 1 << 20
#: About the size of each piece written of such an answer.
WRITE_BYTES = 256 << 10

#: The 503 of a chunk that would be sent from its file when the file limit has no room for
#: the two descriptors that takes (`parser_refusals.room_for_send`).
TOO_MANY_SENDS = "Too many answers being sent: try again in a moment, please."

#: Parsed query strings of body-less requests kept (`ShapeView._parse`), and the longest kept.
PARSED_MAX = 1024
PARSED_KEY_MAX = 2048

#: A DELETE naming a definition and another shape's handle (Electric's words).
_DEFINITION_MISMATCH = (
    "The specified shape definition and handle do not match. Please ensure the shape"
    " definition is correct or omit the shape handle from the request to obtain a new one."
)

FindSource = Callable[[web.Request], Awaitable["Source"]]

logger = logging.getLogger(__name__)


class ShapeView:
    """Holds what every shape request needs: settings and the way to find a source."""

    def __init__(self, settings: Settings, find_source: FindSource) -> None:
        self.settings = settings
        self.find_source = find_source
        # `cache-control` by (method, before all, live): a function of the settings only.
        self._cache_control: dict[tuple[str, bool, bool], str] = {}
        # Requests parsed, by raw query string (body-less requests: `_parse`).
        self._parsed: dict[str, ShapeRequest] = {}
        # Snapshot chunk files being checked before a send, by (device, inode).
        self._file_checks: dict[tuple[int, ...], asyncio.Future[None]] = {}

    def _cache_control_of(self, method: str, before_all: bool, live: bool) -> str:
        key = (method, before_all, live)
        value = self._cache_control.get(key)
        if value is None:
            s = self.settings
            value = h.cache_control(
                method=method,
                before_all=before_all,
                live=live,
                sse=False,
                sse_timeout=s.sse_timeout,
                max_age=s.max_age,
                stale_age=s.stale_age,
            )
            if len(self._cache_control) < 64:  # (methods are few; any text is a method)
                self._cache_control[key] = value
        return value

    # -- entry points ---------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, await self.find_source(request), None)

    async def post(self, request: web.Request) -> web.StreamResponse:
        # Credentials first, as for every other request: a caller without them gets the same
        # 401 whatever its body holds, and never makes the engine read and parse a body.
        source = await self.find_source(request)
        return await self._serve(request, source, await _json_body(request))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        if not self.settings.allow_delete:
            return json_response(405, {"message": "DELETE not allowed"})
        source = await self.find_source(request)
        check_query_utf8(request.rel_url.raw_query_string)
        asked = parse_delete_request(request.query)
        handle = asked.handle
        if asked.shape is not None:
            described = await source.describe(asked.shape)
            shape = source.current(described.definition)
            if shape is None:
                return json_response(404, {"message": "No existing shape found"})
            if handle is not None and handle != shape.handle:
                # (Electric's `Response.shape_definition_mismatch`: a message, no `errors`)
                return json_response(400, {"message": _DEFINITION_MISMATCH})
        else:
            assert handle is not None  # (`parse_delete_request` refused neither)
            found = source.shape(handle)
            if found is None:
                return json_response(404, {"message": "No existing shape found"})
            shape = found
        source.delete(shape, "deleted through the API")
        return web.Response(status=202, headers={"cache-control": "no-cache"})

    # -- the common path ------------------------------------------------------------------

    async def _serve(
        self, request: web.Request, source: Source, body: dict[str, Any] | None
    ) -> web.StreamResponse:
        req = self._parse(request, body)
        if req.subset is not None:
            # Check the subset before anything is created, as a bad one must change nothing.
            # Its where and order_by may name any column of the table, as Electric's
            # (`Shape.Subset.new` checks them against the root table's columns), not only the
            # shape's `columns`; the rows still carry only those. With `queryable_columns`,
            # only those (Electric's allow-list: a subset filtering or ordering on a hidden
            # column tells its values by which rows come, and in what order).
            described = await source.describe(req.shape)
            subset = await parse_subset(described.queryable, req.subset)
            shape = await _resolve(source, req)
            return await serve_subset(source, shape, req, subset, request)
        shape = await _resolve_moving(source, req)
        if req.handle is not None and req.handle != shape.handle:
            _left(source, req.handle)
            raise ShapeGone(shape.handle)
        try:
            # (an SSE stream is held for its whole life; a long-poll only while it waits at
            # the tip, `_serve_log`)
            with source.holding_live() if req.live and req.live_sse else nullcontext():
                if req.live and req.live_sse:
                    if req.offset is not None:  # (an offset past the log: the long-poll's 400)
                        await self._check_bounds(request, source, shape, req.offset)
                        _check_issued(shape, req.offset)
                    # (its up-to-dates would claim a currency the engine does not have)
                    await source.require_following()
                    return await serve_sse(request, self.settings, source, shape, req)
                return await self._serve_log(request, source, shape, req)
        except ShapeGone as gone:
            if gone.current_handle is not None:
                raise
            raise ShapeGone(await _successor(source, req)) from None

    def _parse(self, request: web.Request, body: dict[str, Any] | None) -> ShapeRequest:
        """The request's parameters, checked (`check_query_utf8`, `parse_shape_request`).

        A body-less request's are a function of its raw query string alone, and clients
        send the same ones again and again (a herd catching up to the same offset, every
        client's `offset=-1`, a revalidation): the query strings that parsed are kept
        (`PARSED_MAX`, the oldest dropped first) and a repeat is not parsed again. One that
        failed is not kept: it is checked again, and refused the same way."""
        raw = request.rel_url.raw_query_string
        if body is None:
            req = self._parsed.get(raw)
            if req is not None:
                return req
        check_query_utf8(raw)
        req = parse_shape_request(request.query, body)
        if body is None and len(raw) <= PARSED_KEY_MAX:
            parsed = self._parsed
            if len(parsed) >= PARSED_MAX:
                del parsed[next(iter(parsed))]
            parsed[raw] = req
        return req

    async def _serve_log(
        self, request: web.Request, source: Source, shape: Shape, req: ShapeRequest
    ) -> web.StreamResponse:
        if req.offset is None:  # offset=now
            # Electric's `now` answer: an up-to-date at the shape's last offset that "has
            # data" (its `no_changes` is only set by a long-poll's timeout), so its ETag is
            # the plain `H:now:<offset>` and a repeat with If-None-Match is a 304.
            await source.require_following()  # (an up-to-date: current only if it follows)
            latest = shape.log.latest_offset
            return self._respond(
                request,
                shape,
                req,
                [],
                latest,
                up_to_date=True,
                has_data=True,
                gls=_watermark(source, shape, latest),
            )
        offset = req.offset
        if offset.is_before_all or (offset.is_virtual and not offset.is_snapshot_end):
            index = 0 if offset.is_before_all else offset.op + 1
            chunk = await self._snapshot_chunk(request, source, shape, req, index)
            if chunk is not None:  # (b"" for a chunk the client has: a 304, see there)
                return self._respond(
                    request,
                    shape,
                    req,
                    [chunk] if isinstance(chunk, bytes) and chunk else [],
                    snapshot_chunk_offset(index),
                    up_to_date=False,
                    has_data=True,
                    gls=0,
                    file=chunk if isinstance(chunk, tuple) else None,
                )
        await self._check_bounds(request, source, shape, offset)
        _check_issued(shape, offset)

        def grew() -> bool:
            if shape.rotated or source.closing:  # (a rotated shape's files are being deleted)
                return True
            return not req.live or shape.log.has_after(offset) or source.revoked()

        if req.live and source.stream_down is not None and not shape.log.has_after(offset):
            # At the tip while the replication stream is not following (reconnecting, its
            # slot held by another walsender): nothing can come, and the up-to-date of a
            # timeout would tell the client it is current. It waits a little for the stream,
            # then gets a 503 (and retries with backoff).
            await source.require_following()
        gone = client_gone(request) if req.live else None
        came, cut = grew(), False
        if not came:
            # Counted as held (`holding_live`: a source's share of the connection cap) only
            # now that it waits: counted from its start, a long-poll answered at once (the
            # log already past its offset) was refused 503 `source_live_share` too, ~22% of
            # the live requests of a loaded source.
            with source.holding_live():
                came = await shape.wait_until(grew, self.settings.long_poll_timeout, gone=gone)
                # Its secret revoked while it was held: answered as at its timeout
                # (`revoke`; asked before `holding_live` forgets it).
                cut = source.revoked() and not shape.rotated and source.closing is None
        if cut:
            came = False
        if not came:
            if gone is not None and gone.done():
                raise ConnectionResetError("the client went away")  # nobody to answer
            if source.stream_down is not None:  # lost while it waited: back soon, or a 503
                await source.require_following()
                came = grew() and not cut  # (read below if the log grew meanwhile)
        if not came:
            # A live request at the tip, and nothing came: up to date, no data. (Cut, its
            # offset stays where it was if the log grew: nothing is skipped.)
            grown = cut and shape.log.has_after(offset)
            end = offset if grown else max(offset, shape.log.latest_offset)
            return self._respond(
                request,
                shape,
                req,
                [],
                end,
                up_to_date=True,
                has_data=False,
                gls=_watermark(source, shape, end),
            )
        if shape.rotated:
            raise ShapeGone(source.current_handle(shape))
        source.check_open()  # paused while it waited: the reason, at once
        entries, end, up_to_date = await _read(source, shape, offset)
        if up_to_date and source.stream_down is not None:
            # The log's end, but not the database's while the stream does not follow. Not
            # served cut short of its up-to-date: the same URL would later answer other
            # bytes, and a cache keeps the first (responses are immutable). The request
            # waits a little for the stream (or gets its 503) and is read again, whole.
            await source.require_following()
            entries, end, up_to_date = await _read(source, shape, offset)
            if up_to_date and source.stream_down is not None:
                raise source.not_following()  # (lost again at once: a 503, as after a wait)
        gls = end.tx if entries and req.live else _watermark(source, shape, end)
        return self._respond(
            request, shape, req, entries, end, up_to_date=up_to_date, has_data=True, gls=gls
        )

    async def _snapshot_chunk(
        self, request: web.Request, source: Source, shape: Shape, req: ShapeRequest, index: int
    ) -> bytes | tuple[int, int, int, Ident] | None:
        """Chunk `index` of the snapshot, waiting for it; None when the snapshot has fewer.

        A chunk this process checked before, but a small one just written (in memory), comes
        as its place: an open descriptor of its file (or of its pack, for a last chunk kept
        there), the offset and the size, checked again and sent as it is. While
        the chunk does not come, the request asks every `snapshot_quiet` seconds whether
        Postgres answers: a snapshot query sent into a silent database (its table lookup
        was cached, so nothing asked Postgres before) would otherwise hold the request for
        all of `SNAPSHOT_WAIT`, past every client's patience. A slow query on a live
        database (a big table, a lock in the way) is waited for, while its client is there.

        A written chunk the client already has (its If-None-Match names the answer's ETag,
        which depends only on the handle and the offsets) is not read nor checked: b"", and
        `_respond` answers 304 as it would have after reading it. No byte of the chunk is
        sent, so there is nothing to check; opening and checking it (a worker-thread hop and
        a crc32 of up to 10 MiB) was most of such a revalidation's cost.
        """
        shape_log = shape.log

        def written() -> bool:
            return shape_log.snapshot_chunks > index or shape_log.snapshot_complete

        def ready() -> bool:
            return written() or shape.rotated or source.closing is not None

        gone = None if ready() else client_gone(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SNAPSHOT_WAIT
        shape.snapshot_asked_at = time.monotonic()
        try:
            while not await shape.wait_until(
                ready, min(self.settings.snapshot_quiet, deadline - loop.time()), gone=gone
            ):
                if gone is not None and gone.done():
                    raise ConnectionResetError("the client went away")
                if loop.time() >= deadline:
                    logger.info(
                        "shape %s: a request gave up on chunk %d of its snapshot after %g s"
                        " (%d chunks written); the snapshot: %s",
                        shape.handle,
                        index,
                        SNAPSHOT_WAIT,
                        shape_log.snapshot_chunks,
                        source.snapshots.where_waiting(shape),
                    )
                    raise ServiceUnavailable("Snapshot is taking too long, please retry", 5)
                if not await source.database_answers() and not ready():
                    raise not_answering()
        finally:
            shape.snapshot_asked_at = time.monotonic()
        if not written() and shape.rotated:
            raise shape.snapshot_error or ShapeGone(None)
        source.check_open()  # paused while it waited
        if index >= shape_log.snapshot_chunks:
            return None
        if (
            not shape.rotated
            and request.headers.get("if-none-match")  # (else no tag to make: not a revalidation)
            and _client_has(
                request, _etag(shape, req, str(snapshot_chunk_offset(index)), has_data=True)
            )
        ):
            return b""  # (`_respond` makes the same test, and answers 304)
        fresh = shape_log.fresh_snapshot_chunk(index)
        if fresh is not None:
            check_ahead.start(self._file_checks, shape_log, index + 1)  # while this is sent
            return fresh
        file = shape_log.snapshot_chunk_file(index)
        if file is not None and not room_for_send():
            # Sent from its file it would hold two more descriptors (the file, a duplicate
            # of the socket) where the limit has no room for them: the client retries.
            raise ServiceUnavailable(TOO_MANY_SENDS, 1, code="too_many_sends")
        if file is not None and (fd := open_chunk(file[0])) is not None:
            try:  # checked at every send: see `ShapeLog.check_snapshot_file`
                checked = await self._check_file(shape_log, index, fd, file[1])
            except BaseException:
                close_chunk(fd)
                raise
            check_ahead.start(self._file_checks, shape_log, index + 1)  # while this is sent
            return fd, file[1], file[2], checked
        # (not checked by this process yet, or gone: read the checked way; gone is a 409)
        return await asyncio.to_thread(shape_log.read_snapshot_chunk, index)

    async def _check_file(self, shape_log: ShapeLog, index: int, fd: int, offset: int) -> Ident:
        """`shape_log.check_snapshot_file` in a worker thread; requests for the same chunk
        (device, inode and, in a pack, which holds many shapes' chunks, its offset) at the
        same time share one check (a herd of clients syncing the same table read it once,
        not once each). A check of this file that started when the chunk before it was
        sent, and passed, is used instead (`check_ahead`: chunk files only).

        Returns what `fstat` said of the file before the check, for the send to compare
        with after it (`ChunkFileResponse`); requests share a check only when they saw the
        file the same (one written to since is checked again)."""
        st = os.fstat(fd)
        checked = ident(st)
        if (not offset and check_ahead.take(st)) or shape_log.snapshot_check_kept(index, st):
            return checked  # (checked ahead, or a kept check stands: no thread hop for it)
        await single_flight(
            self._file_checks,
            (*checked, offset),
            lambda: asyncio.to_thread(shape_log.check_snapshot_file, index, fd),
        )
        return checked

    async def _check_bounds(
        self, request: web.Request, source: Source, shape: Shape, offset: LogOffset
    ) -> None:
        """An offset beyond anything seen (e.g. from another engine) waits, then is a 400;
        the wait ends when its client goes away (nobody to answer). An offset past the
        WAL's end as Postgres says it after the request arrived (`Tables.wal_end_since`)
        can never come (another database's, or made up) and is the 400 at once: it waited
        the whole `out_of_bounds_wait` (10 s) first (attack, LOW)."""

        def in_bounds() -> bool:
            return offset.is_virtual or offset.tx <= max(shape.log.last_lsn, source.global_lsn)

        def answered() -> bool:
            return in_bounds() or source.closing is not None

        if in_bounds():
            return
        asked = time.monotonic()
        try:
            never = offset.tx > await source.tables.wal_end_since(asked)
        except ServiceUnavailable:
            never = False  # (not known now: waited for, as before)
        if never:
            raise InvalidRequest({"offset": ["out of bounds for this shape"]})
        gone = client_gone(request)
        # The stream's position is not announced on the shape: polled.
        if not await shape.wait_until(
            answered, self.settings.out_of_bounds_wait, poll=0.5, gone=gone
        ):
            if gone is not None and gone.done():
                raise ConnectionResetError("the client went away")  # nobody to answer
            raise InvalidRequest({"offset": ["out of bounds for this shape"]})
        source.check_open()

    def _respond(
        self,
        request: web.Request,
        shape: Shape,
        req: ShapeRequest,
        items: list[bytes],
        end: LogOffset,
        *,
        up_to_date: bool,
        has_data: bool,
        gls: int,
        file: tuple[int, int, int, Ident] | None = None,
    ) -> web.StreamResponse:
        offset_text = str(end)
        method = request.method
        hdrs = {
            "electric-handle": shape.handle,
            "electric-offset": offset_text,
            "electric-has-data": "true" if has_data else "false",
            "cache-control": self._cache_control_of(method, req.offset == BEFORE_ALL, req.live),
        }
        if not req.live:
            hdrs["electric-schema"] = shape.schema_json
        else:
            timeout = self.settings.long_poll_timeout
            hdrs["electric-cursor"] = str(h.next_cursor(req.cursor, timeout))
        if up_to_date:
            hdrs["electric-up-to-date"] = ""
            items = [*items, up_to_date_message(gls)]
            shape.caught_up_at = time.monotonic()
        else:  # (a client is paging through it: `ShapeRegistry.left` keeps it a while)
            shape.paged_at = time.monotonic()
        tag = hdrs["etag"] = _etag(shape, req, offset_text, has_data=has_data)
        if _client_has(request, tag):
            if file is not None:
                close_chunk(file[0])
            return web.Response(status=304, headers=hdrs)
        if file is not None:
            fd, at, size, checked = file  # `[` + the file (from `at`) + `]`
            return ChunkFileResponse(fd, size, hdrs, shape, at, checked)
        hdrs["content-type"] = "application/json; charset=utf-8"  # (as content_type, charset)
        size = sum(map(len, items)) + len(items) + 1  # (`[`, `]` and the commas between)
        if size < STREAM_BYTES and (len(items) != 1 or size < WRITE_BYTES):
            body = b"".join((b"[", b",".join(items), b"]"))
            return _ShapeResponse(shape, body=body, headers=hdrs)
        # Written in pieces, not joined first: the join was a copy of the whole answer
        # (+200 MB for a 200 MB value) and held the loop while it was made. So is one big
        # item (a fresh snapshot chunk, ~1 MiB, from memory): `[`, it, `]` (`_pieces`).
        return _ShapeResponse(shape, headers=hdrs, pieces=items, size=size)


def _check_issued(shape: Shape, offset: LogOffset) -> None:
    """A real offset this shape never handed out (`Shape.issued`: below its log's first
    transaction) is a 409 must-refetch naming the shape, as Electric answers a client whose
    offset went backwards (api.ex, "offset regression during shape invalidation"): its
    client drops what it holds and starts the shape again. Electric itself serves such an
    offset, and a client that took a 409's handle without refetching (client 1.5.28's
    `requestSnapshot`) then applies the new log over rows of the old one, for good."""
    if offset.tx > 0 and not shape.issued(offset):
        raise ShapeGone(shape.handle)


async def _resolve(source: Source, req: ShapeRequest) -> Shape:
    """The request's shape (`Source.resolve`), described again once if its table changed
    while it was being made (`StaleDescription`: the first description was cached).

    After each such change the table is read afresh (`describe_fresh`): a table dropped is
    then the 400 "does not exist", as a request after the DROP gets. The retry alone could
    meet the dropped table's description again (a lookup begun before the DROP and ended
    after, cached or joined), and a request racing a DROP TABLE got the 503 table_changed:
    a server error to an operator's alerts, for an application's schema change."""
    try:
        return await source.resolve(req.shape, from_start=req.from_start)
    except StaleDescription:
        await source.describe_fresh(req.shape)  # (gone: its 400)
    try:
        return await source.resolve(req.shape, from_start=req.from_start)
    except StaleDescription:
        await source.describe_fresh(req.shape)
        raise  # (there again, changed again: the client retries after Retry-After)


def _left(source: Source, handle: str) -> bool:
    """The client of `handle` asks for another definition now: the shape it left no longer
    counts as used for it (`ShapeRegistry.left`). Returns whether it may go now."""
    shape = source.shape(handle)
    return shape is not None and source.registry.left(shape)


async def _resolve_moving(source: Source, req: ShapeRequest) -> Shape:
    """`_resolve`, for a request whose handle may be of another definition.

    A client whose definition changed (a policy narrowed at the proxy, its where changed)
    asks with its old handle. When there is no room for the new shape (`max_shapes`), it
    still gets its 409 must-refetch, so it drops the rows it holds (delivered under the old
    definition: rows the new policy may forbid) at once; its refetch (no handle) gets the
    503 and its Retry-After. It got that 503 instead, and went on showing the old rows, as
    up to date, until there was room (up to `min_idle`, 60 s: chaos seed 3102). The shape
    it left may go first (`_left`): when it can, the new shape is made in its place and
    the 409 names it, as Electric's does; when it cannot (another client pages through it
    or is held on it), the 409 has no handle (Electric's after a shape went during a
    request; its client then starts without one, with a cache buster).
    """
    try:
        return await _resolve(source, req)
    except ServiceUnavailable as exc:
        if req.handle is None or exc.code != SHAPE_LIMIT_REACHED:
            raise
    if _left(source, req.handle):
        try:
            return await _resolve(source, req)
        except ServiceUnavailable as exc:
            if exc.code != SHAPE_LIMIT_REACHED:
                raise
    raise ShapeGone(None)


class _ShapeResponse(web.Response):
    """A shape's answer whose shape counts as in use (`Shape.sending`) while its body is
    written (aiohttp writes it in `write_eof`, waiting for the client to take it).

    Its body is `body`, or `[`, the `pieces` joined by `,` and `]` (`_pieces`, `size`
    bytes), written a piece at a time."""

    def __init__(
        self,
        shape: Shape,
        *,
        headers: dict[str, str],
        body: bytes | None = None,
        pieces: list[bytes] | None = None,
        size: int = 0,
    ) -> None:
        super().__init__(body=body, headers=headers)
        self._shape = shape
        self._pieces = pieces
        self._size = size

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._pieces is not None and not self.prepared:
            # (set here, after the middlewares' headers, where aiohttp sets a body's: the
            # same head, byte for byte; a HEAD's too)
            self.headers[hdrs.CONTENT_LENGTH] = str(self._size)
            if request.method == "HEAD":
                self._pieces = None
        return await super().prepare(request)

    async def write_eof(self, data: bytes = b"") -> None:
        self._shape.sending += 1
        try:
            if self._pieces is not None:
                pieces, self._pieces = self._pieces, None
                for piece in _pieces(pieces):
                    await self.write(piece)  # (waits while the client's buffer is full)
            await super().write_eof(data)
        finally:
            self._shape.sent()


def _pieces(items: list[bytes]) -> Iterator[bytes | memoryview]:
    """`[`, the items joined by `,`, and `]`, in pieces of about `WRITE_BYTES`: small items
    joined, a big one in slices of itself (views, not copies). A single item below
    `STREAM_BYTES` goes whole, as the joined body it would otherwise be part of did (one
    write; the transport keeps what the socket does not take yet, without a copy)."""
    if len(items) == 1 and len(items[0]) < STREAM_BYTES:
        yield b"["
        yield items[0]
        yield b"]"
        return
    out: list[bytes] = [b"["]
    held = 1
    for i, item in enumerate(items):
        if i:
            out.append(b",")
            held += 1
        if len(item) < WRITE_BYTES:
            out.append(item)
            held += len(item)
            if held >= WRITE_BYTES:
                yield b"".join(out)
                out, held = [], 0
            continue
        if out:
            yield b"".join(out)
            out, held = [], 0
        view = memoryview(item)
        for start in range(0, len(item), WRITE_BYTES):
            yield view[start : start + WRITE_BYTES]
    out.append(b"]")
    yield b"".join(out)


async def _successor(source: Source, req: ShapeRequest) -> str | None:
    """The handle a client told to refetch should go to, for a 409 that has none yet (its
    shape was rotated, by a TRUNCATE say, while the request waited). Electric names the new
    handle on every 409, and its client warns of a proxy stripping headers when it is
    missing, so the shape now serving the definition is created here: the client's refetch
    would create it a moment later anyway. None when that fails (the table was dropped,
    say): the refetch then gets the reason."""
    try:
        return (await source.resolve(req.shape, from_start=True)).handle
    except EngineError:
        return None


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    """The whole body, up to `MAX_BODY`: read until its end, as its bytes come (in as many
    reads as the network and the chunked framing cut it into; one `read(n)` returns what
    has arrived so far, and parsing that alone read a long body's first segment)."""
    if not request.can_read_body:
        return None
    length = announced_length(request.headers.get("Content-Length"))  # (not int(): 0000..)
    if length is not None and length > MAX_BODY:
        raise BadBody("Request body too large", 413)
    pieces = []
    size = 0
    async for piece in request.content.iter_any():
        size += len(piece)
        if size > MAX_BODY:  # (chunked: no length said so before)
            raise BadBody("Request body too large", 413)
        pieces.append(piece)
    return parse_json_body(b"".join(pieces), exact=True)


def _etag(shape: Shape, req: ShapeRequest, end: str, *, has_data: bool) -> str:
    """The ETag of the answer to `req` that ends at `end`: a function of the handle and the
    offsets alone, so a revalidation can be told before the answer is read."""
    request_offset = "now" if req.offset is None else str(req.offset)
    return h.etag(shape.handle, request_offset, end, no_change=not has_data)


def _client_has(request: web.Request, tag: str) -> bool:
    """Whether the request revalidates the answer tagged `tag` (a 304 for it)."""
    return request.method in ("GET", "HEAD") and h.if_none_match_hits(
        request.headers.get("if-none-match"), tag
    )


async def _read(
    source: Source, shape: Shape, offset: LogOffset
) -> tuple[list[bytes], LogOffset, bool]:
    """The shape's log after `offset`, as of now: (entries, end offset, whether that is the
    log's end). A big range is read in a worker thread, its entries joined there (one
    item): a 10 MB transaction read, split and joined on the loop stalled every client."""
    if shape.rotated:  # (its files are being deleted)
        raise ShapeGone(source.current_handle(shape))
    entries, end = await shape.log.read_after_async(offset, joined=True)
    if shape.rotated:  # (while it read: its files are going)
        raise ShapeGone(source.current_handle(shape))
    end = max(end, offset) if not entries else end
    return entries, end, end >= max(shape.log.latest_offset, offset)


def _watermark(source: Source, shape: Shape, end: LogOffset) -> int:
    """The up-to-date's `global_last_seen_lsn` for a response read up to `end`.

    It promises that every change of the shape committed at or before it has been delivered
    (pglite-sync drops later changes at or below it), so it may run past `end` only as far as
    the commits readable in every log, and not at all while this shape has appends to publish.
    """
    if shape.log.has_unpublished or shape.held:
        # (held: transactions wait for Postgres's answer on a row, to come after `end`)
        return end.tx
    return max(source.readable_lsn, end.tx)
