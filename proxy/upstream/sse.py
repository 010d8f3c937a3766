"""SSE collapsing: one engine stream per shape, fanned out to every SSE client of it.

Without it the engine writes every change once per SSE client (98 ms of engine CPU per write
at 2,000 clients). A `SharedStream` is one engine SSE request shared by every client whose
request the engine would answer identically but for its `offset` and `cursor` (same URL as
the policy rewrote it, so the same shape, handle, filter, columns, secret: never shared across
definitions, nor across principals whose rewritten requests differ; see `StreamSpec`).

Each client keeps its own position (`upstream.sse_events`): the stream remembers its recent
events with their keys, and a client joining at position `p` first gets the remembered events
after `p`, then every event as it arrives, so it neither misses nor repeats a change:

- a client at the stream's start or anywhere within what it remembers joins at once (one
  write of what it missed, then the live events);
- a client ahead of the stream (its offset came from a write the stream has yet to
  deliver: say the stream is a late client's catch-up, opened behind changes the others
  already had from the stream before) joins too and gets only what follows its offset, as
  from the engine: until the stream passes its offset, each read is filtered for it;
- a client behind what the stream remembers is not joined: it gets a stream of its own
  from its offset (shared with any client behind at that same offset), which the engine
  answers with the catch-up, then live; as soon as that stream has delivered a whole batch
  that the shape's stream can take on from (an up-to-date within or ahead of what it
  remembers), it ends (its engine request too) and its clients' responses go on, on the
  shape's stream, from that up-to-date (as below). Else the engine would hold one more
  stream for the whole SSE timeout (it no longer ends a stream after the catch-up);
- an engine answer the fan-out cannot read as events (not `text/event-stream`, or with a
  `content-encoding`) is shared only by requests identical to the first, offset included,
  each getting every byte of it from the start; any other goes to the engine on its own;
- a client that reads more slowly than the stream comes (more than `LAG_LIMIT` unsent
  bytes besides the latest write, and besides its catch-up until it has read that) leaves
  it, without a break in its response: it goes on, on a stream of its own (`paced`), read
  from the engine only as fast as the client takes it, from its last up-to-date, each event
  up to the last one it was written held back. It was cut off, and resumed from its last
  up-to-date: a reader slower than loopback, behind a transaction of more than ~0.5 MB,
  was cut inside it every time and never got past it. Once its own stream has delivered
  an up-to-date that the shape's stream can take on from, it ends (as a catch-up stream
  does) and the client goes on there, or reconnects. A client that takes nothing for
  `SEND_TIMEOUT` is dropped, as the engine drops it.

The stream lives as long as the engine's (the engine ends it after its SSE timeout, or when
the shape rotates); then every client's stream ends cleanly and each reconnects, usually all
to the next shared stream; but a client whose response began less than `MIN_CLIENT_STREAM`
ago (it joined just before the end, or came through a catch-up stream) is not ended: its
response goes on, on the shape's next stream, from the last event it had (`Continue`),
opening that stream if nobody has. Electric's client takes three streams shorter than 1 s in
a row for a buffering proxy and falls back to long-polling for good; the engine's own
streams each last its SSE timeout. If the next stream cannot take it (the engine answers a
409 after a rotation, or the stream starts past it), the response ends cleanly there and
the client reconnects and gets that answer.

An engine answer other than a 200 event stream (409 must-refetch, 400, 503...) is given
only to the clients whose request was identical, offset included; the others are retried.
Events are written straight to each client's transport in one loop (no task wakes per
client), framed once per read for every client.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from yarl import URL

from proxy.errors import ProxyError
from proxy.http.wire import Request, StreamResponse, Writer
from proxy.upstream.broadcast import Broadcast
from proxy.upstream.client import (
    BodyError,
    UpstreamOptions,
    UpstreamResponse,
    connection_failed,
    read_error_body,
)
from proxy.upstream.headers import Head
from proxy.upstream.held import Deadlines
from proxy.upstream.respond import Outcome, complete
from proxy.upstream.sse_events import INF_OP, Event, EventParser, Key, Positions, offset_key

logger = logging.getLogger(__name__)


#: Recent events a stream keeps for clients joining behind it (bytes, and count).
HISTORY_BYTES = 2 * 1024 * 1024
HISTORY_EVENTS = 20_000
#: A client with more than this many bytes not yet sent (besides the latest write) is cut off.
LAG_LIMIT = 256 * 1024
#: The kernel send buffer of a client's socket (else autotuned up to megabytes, which a
#: client that stops reading would fill before `LAG_LIMIT` could tell it is behind).
SEND_BUFFER = 256 * 1024
#: A non-200 engine answer is read whole to be shared; a larger one fails the stream.
ERROR_BODY_LIMIT = 1024 * 1024
#: Seconds a non-200 engine answer's body may take in all, unless told.
ERROR_BODY_SECONDS = 30.0
#: Seconds a client's stream lasts at least: when the engine stream it reads ends sooner
#: after the client joined (it joined just before the engine's SSE timeout, or read a
#: catch-up stream that handed it over), the client's response goes on, on the next stream
#: of its shape from its position. Electric's client (1.5.28: 1 s, measured from its
#: request) counts shorter streams and after three in a row falls back to long-polling for
#: good, taking them for a buffering proxy.
MIN_CLIENT_STREAM = 2.0
#: Seconds a client's response lasts at most on streams shared by clients (the shape's, a
#: catch-up; and a stream passed straight through, `Forwarder._relay_held`), as the engine
#: ends each of its streams after its SSE timeout (60 s by default):
#: then it ends cleanly, between two reads, and the client reconnects from its last
#: up-to-date. A healthy response never gets there (it ends with the engine stream it reads,
#: or goes on past one only within `MIN_CLIENT_STREAM`): the ceiling is for a response that
#: would otherwise stay open with nothing sent, whatever held it (an engine stream that went
#: silent, a wait that missed its wake-up). On a client's own paced stream, which is read
#: only as fast as its client takes it, at its next up-to-date: ended inside a transaction, a
#: slow reader inside one bigger than it reads in this time never got past it (a client that
#: stops reading there is dropped after `SEND_TIMEOUT`).
MAX_CLIENT_RESPONSE = 300.0
#: The ceiling is rounded up to a multiple of this (s): clients share a `Deadlines` timer.
CEILING_GRAIN = 10.0
#: Query parameters that place a request in the log (per client), or that the engine ignores
#: (`cache-buster`, `expired_handle`: Electric drops unknown parameters, so they never change
#: its answer). Every other parameter is part of what clients must share to share a stream.
_PER_CLIENT = frozenset(
    {
        "offset",
        "cursor",
        "live",
        "live_sse",
        "experimental_live_sse",
        "cache-buster",
        "expired_handle",
    }
)


class Result(Enum):
    """Why `serve` did not answer the client: `forward` tries again, or goes direct."""

    RETRY = "retry"  # the stream ended before this client joined: join the next one
    DIRECT = "direct"  # this client cannot share this stream: one engine stream of its own
    BEHIND = "behind"  # behind what the stream remembers: a catch-up stream (`behind`)


@dataclass(slots=True)
class Started:
    """A client's response whose headers went out: it goes on over the next stream."""

    response: StreamResponse
    outcome: Outcome
    chunked: bool
    since: float  # (monotonic) when its headers went out

    def past(self, deadline: float | None) -> bool:
        """Whether the response is past its token's `deadline` (wall clock) as `_read`
        counts it: never before `MIN_CLIENT_STREAM` after its headers went out."""
        if deadline is None:
            return False
        lasted = time.monotonic() - self.since
        return lasted >= MIN_CLIENT_STREAM and deadline <= time.time()


@dataclass(frozen=True, slots=True)
class Continue:
    """The stream a client read ended too soon after it joined (`MIN_CLIENT_STREAM`): its
    response goes on, on the stream of `spec` (its shape's, from where the client is)."""

    spec: StreamSpec
    started: Started


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One client's SSE request: what it shares with others (`key`) and what is its own."""

    #: Engine URL without the per-client parameters, plus the request headers and cache
    #: settings that change the answer the client gets.
    key: tuple[object, ...]
    offset: str
    position: Key
    cursor: int
    #: A catch-up stream's: the key of the stream its clients go on to once caught up.
    handover: tuple[object, ...] | None = None
    #: Where the engine request starts (`offset`'s position) when the client is past it,
    #: inside a transaction (it had part of it): the events up to `position` are held back.
    start: Key | None = None
    #: One client's own stream, read as fast as it takes it (it fell behind the shared one).
    paced: bool = False

    @property
    def start_key(self) -> Key:
        return self.start if self.start is not None else self.position


def behind(spec: StreamSpec) -> StreamSpec:
    """The spec of the catch-up stream for a client behind the stream of `spec.key`: shared
    only by clients at the same offset, ended once they can join that stream."""
    key = (*spec.key, "from", spec.offset)
    return StreamSpec(key, spec.offset, spec.position, spec.cursor, spec.key)


def stream_spec(
    url: URL, headers: Mapping[str, str], shared: bool, options: UpstreamOptions
) -> StreamSpec | None:
    """The spec of a live SSE request, or None when it has no position (offset -1, now)."""
    query = url.query
    offset = query.get("offset", "")
    position = offset_key(offset)
    if position is None:
        return None
    try:
        cursor = int(query.get("cursor", "") or 0)
    except ValueError:
        cursor = 0
    definition = tuple((k, v) for k, v in query.items() if k not in _PER_CLIENT)
    key = (
        str(url.with_query(None)),
        definition,
        headers.get("Accept", ""),
        headers.get("Accept-Encoding", ""),
        shared,
        options.max_age_cap,
        options.live_max_age,
    )
    return StreamSpec(key, offset, position, cursor)


class _Subscriber:
    """One client attached to a stream: its transport, and how its time there ended."""

    __slots__ = (
        "boundary",
        "chunked",
        "done",
        "grace",
        "offset",
        "position",
        "transport",
        "writer",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        chunked: bool,
        grace: int,
        position: Key,
        resume: tuple[Key, str],
        writer: Writer,
    ) -> None:
        self.transport = transport
        self.writer = writer
        self.chunked = chunked
        #: The catch-up it was written on joining: it may still be unsent, on top of the lag
        #: limit, until the client has once read down to the limit.
        self.grace = grace
        #: Its offset; it matters only while the client is ahead of the stream, and once it
        #: leaves it (`SharedStream.settle`): the last event it was written.
        self.position = position
        #: Its last up-to-date (position, offset) at or before `position`, once it leaves:
        #: an offset the engine serves, from which a stream of its own starts.
        self.boundary, self.offset = resume
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def end(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)

    def expire(self) -> None:
        """Its token expired (`held.Deadlines`): its stream ends cleanly."""
        self.end("expired")


class _Ceiling:
    """A paced client's ceiling, kept by `Deadlines` (`SharedStream.overdue`)."""

    __slots__ = ("stream", "sub")

    def __init__(self, stream: SharedStream, sub: _Subscriber) -> None:
        self.stream = stream
        self.sub = sub

    def expire(self) -> None:
        self.stream.overdue(self.sub)


def _chunk(frame: bytes) -> bytes:
    """`frame` as one HTTP/1.1 chunk (the framing `StreamResponse.write` uses)."""
    return b"%x\r\n" % len(frame) + frame + b"\r\n"


class SharedStream:
    """One engine SSE stream and the clients reading it. Event loop thread only."""

    __slots__ = (
        "_ahead",
        "_changed",
        "_datas",
        "_first",
        "_first_change",
        "_history_bytes",
        "_keys",
        "_last_utd",
        "_log_end",
        "_overdue",
        "_parser",
        "body",
        "failure",
        "finished",
        "floor",
        "handed_over",
        "handover",
        "head",
        "key",
        "members",
        "offset",
        "paced",
        "positions",
        "raw",
        "revoked",
        "start_tx",
        "subscribers",
        "task",
    )

    def __init__(self, spec: StreamSpec) -> None:
        self.key = spec.key
        self.offset = spec.offset  # the engine request's own offset
        self.positions = Positions()
        start = spec.start_key
        #: Every event after `floor` is remembered.
        self.floor: Key = start
        #: The transaction of the engine request's own offset (0: `0_inf`, before any).
        self.start_tx = start[0]
        #: One client's stream, read as it takes it: no lag limit, no history to join.
        self.paced = spec.paced
        #: The key of the last up-to-date it delivered.
        self._last_utd: Key | None = None
        #: (A paced stream) its client's response is past its ceiling: it ends at the next
        #: up-to-date (`overdue`).
        self._overdue = False
        #: Opened before any transaction: the LSN of the first change it delivered, the log's
        #: first transaction (see `can_join`).
        self._first_change: int | None = None
        #: The log's last entry when the engine opened it, if the log had any (`learn_head`).
        self._log_end: Key | None = None
        self.handover = spec.handover
        #: It ended where its clients can join the stream it hands over to (`_caught_up`):
        #: their responses go on there (`_read`).
        self.handed_over = False
        self.head: Head | None = None
        self.body: bytes | None = None  # a non-200 answer, whole
        self.raw = False  # a 200 that is not an event stream: only identical requests share
        self.failure: ProxyError | None = None
        self.finished = False
        self.revoked = False  # ended by `SharedStreams.end_all`
        #: Clients reading every event as it comes (all of it is after their position).
        self.subscribers: set[_Subscriber] = set()
        #: Clients ahead of the stream: events up to their position are not theirs.
        self._ahead: set[_Subscriber] = set()
        self.members = 0  # clients waiting for it or reading it
        self.task: asyncio.Task[None] | None = None
        self._keys: list[Key] = []
        self._datas: list[bytes] = []
        self._first = 0  # events before this index were dropped from the history
        self._history_bytes = 0
        self._parser = EventParser(start, self.positions)
        self._changed = Broadcast()

    def notify(self) -> None:
        self._changed.notify()

    def changed(self) -> asyncio.Future[None]:
        """Done at the next change (headers, the end): await it."""
        return self._changed.wait()

    # --- positions ---------------------------------------------------------------------

    def learn_head(self, head: Head) -> None:
        """The engine's SSE ETag names the log's last entry when the stream opened, a
        transaction's end (`log_end`): no op of its transaction comes after it."""
        latest = offset_key(log_end(head) or "")
        if latest is None:
            return
        tx, op, _ = latest
        if tx > 0 and op < INF_OP:
            self.positions.transaction_ends(tx, op)
        if tx > 0:
            self._log_end = latest

    def can_join(self, position: Key) -> bool:
        """Whether every event after `position` is remembered or still to come, and
        `position` is one the engine serves for this shape.

        The engine answers a real offset below the shape's first transaction (one it never
        handed out for this shape: an older generation's, after a rotation or a wiped data
        dir) with a 409 must-refetch, never the log from there. A stream opened at a real
        offset the engine accepted vouches for every position from there on; one opened
        before any transaction (`0_inf`) only for positions from the first change it
        delivered (the log's first transaction) on, or from the log's end when it opened
        (the engine serves its tip and beyond). Any other goes to the engine (its own
        catch-up stream, which hands over to this one if the engine serves it)."""
        canonical = self.positions.canonical
        key = canonical(position)
        if key < canonical(self.floor):
            return False
        if self.paced:  # (its client's position came from a stream of this shape)
            return True
        tx = position[0]
        if tx > 0 and self.start_tx == 0:
            first, end = self._first_change, self._log_end
            return (first is not None and tx >= first) or (
                end is not None and key >= canonical(end)
            )
        return True

    def _last_key(self) -> Key:
        return self._keys[-1] if len(self._keys) > self._first else self.floor

    def events_after(self, position: Key) -> bytes:
        """The remembered events a client at `position` has not had, as one frame."""
        start = bisect.bisect_right(self._keys, self.positions.canonical(position), self._first)
        return b"".join(self._datas[start:])

    # --- clients -----------------------------------------------------------------------

    def attach(
        self, transport: asyncio.Transport, chunked: bool, spec: StreamSpec, writer: Writer
    ) -> _Subscriber:
        """Write a client that may join (`can_join`) what it missed, then subscribe it to
        what follows; already ended ("ended") when the stream is over (what it missed was
        all there was)."""
        position = spec.position
        missed = self.events_after(position)
        if missed:
            transport.write(_chunk(missed) if chunked else missed)
        resume = (spec.start_key, spec.offset)
        sub = _Subscriber(transport, chunked, len(missed), position, resume, writer)
        if self.finished:
            self.settle(sub)
            sub.end("ended")
        else:
            self.add(sub)
        return sub

    def settle(self, sub: _Subscriber) -> None:
        """A client leaves the stream: its position becomes the last event it was written
        (every event so far, or none past its own position if it was ahead), its boundary
        the last up-to-date at or before that."""
        canonical = self.positions.canonical
        last = self._last_key()
        if canonical(sub.position) < last:
            sub.position = last
        utd = self._last_utd
        if utd is not None and canonical(sub.boundary) < utd <= canonical(sub.position):
            sub.boundary, sub.offset = utd, f"{utd[0]}_0"

    async def drained(self) -> None:
        """(A paced stream, before each read it feeds) until its client is attached and has
        taken what it was written, but for its transport's buffer (the connection's
        backpressure, up to `SEND_TIMEOUT`). Its first read often comes with the engine's
        headers, before the client attached: fed then, it was trimmed to its last event (a
        paced stream keeps only that), the client could no longer join, and its response
        ended where it was (the slow reader's cut-and-retry again). A client that never
        attaches leaves the stream, which cancels this wait (`SharedStreams.leave`)."""
        while not (self.subscribers or self._ahead):
            await self.changed()  # (`add` notifies a paced stream)
        for sub in [*self.subscribers, *self._ahead]:
            try:
                await sub.writer.drain()
            except ConnectionError:
                self.remove(sub)
                sub.end("gone")

    def overdue(self, sub: _Subscriber) -> None:
        """(A paced stream) its client's response is past its ceiling (`MAX_CLIENT_RESPONSE`):
        it ends cleanly at once if what it was written ends with an up-to-date (its batches
        are whole), else at the next up-to-date this stream delivers (`feed`). Ended inside a
        transaction, a slow reader resumed before it, and one bigger than it reads within the
        ceiling it never got past."""
        if sub in self.subscribers and self._last_key() in (self._last_utd, sub.boundary):
            self.subscribers.discard(sub)
            sub.end("expired")
        else:
            self._overdue = True

    def add(self, sub: _Subscriber) -> None:
        """Attach a client that has had every remembered event after its position.

        The next events have keys after the last one: all of them are the client's unless it
        is ahead of the stream, in which case the events up to its position are not (it had
        them from an earlier stream) and are held back from it until the stream passes it.
        """
        if self.positions.canonical(sub.position) > self._last_key():
            self._ahead.add(sub)
        else:
            self.subscribers.add(sub)
        if self.paced:
            self.notify()  # (its reads wait for it: `drained`)

    def remove(self, sub: _Subscriber) -> None:
        self.subscribers.discard(sub)
        self._ahead.discard(sub)

    # --- events ------------------------------------------------------------------------

    def feed(self, piece: bytes) -> None:
        """An upstream read: remember its events and write them to every client."""
        if self.raw:
            events, comments = [Event(self._next_raw_key(), piece)], b""
        else:
            events, comments = self._parser.feed(piece)
        if not events and not comments:
            return
        if self._first_change is None and self.start_tx == 0:
            for event in events:
                tx, op, n = event.key
                if tx > 0 and op < INF_OP and n == 0:  # (a change: up-to-dates are INF_OP)
                    self._first_change = tx
                    break
        for event in events:
            key = event.key
            if key[1] == INF_OP and key[2] == 0 and key[0] > 0:
                self._last_utd = key
            self._keys.append(key)
            self._datas.append(event.data)
            self._history_bytes += len(event.data)
        self._trim()
        frame = b"".join(event.data for event in events) + comments
        self._fan_out(frame)
        if self._ahead:
            self._fan_out_ahead(events, comments)
        if self._overdue and self._last_utd is not None and self._last_key() == self._last_utd:
            for sub in self.subscribers:  # (its batches are whole: `overdue`)
                sub.end("expired")
            self.subscribers.clear()

    def _next_raw_key(self) -> Key:
        tx, op, n = self._last_key()
        return (tx, op, n + 1)

    def _trim(self) -> None:
        limit = 0 if self.paced else HISTORY_BYTES  # (a paced stream: only its last key)
        while (self._history_bytes > limit and len(self._keys) - self._first > 1) or len(
            self._keys
        ) - self._first > HISTORY_EVENTS:
            self._history_bytes -= len(self._datas[self._first])
            self.floor = self._keys[self._first]
            self._datas[self._first] = b""
            self._first += 1
        if self._first > 1024 and self._first * 2 > len(self._keys):
            del self._keys[: self._first], self._datas[: self._first]
            self._first = 0

    def _fan_out(self, frame: bytes) -> None:
        chunked = _chunk(frame)
        # (a paced stream is read only as fast as its client takes it: `drained`)
        limit = LAG_LIMIT + len(frame) if not self.paced else 1 << 62
        dropped: list[tuple[_Subscriber, str]] = []
        for sub in self.subscribers:
            transport = sub.transport
            if transport.is_closing():
                dropped.append((sub, "gone"))
                continue
            transport.write(chunked if sub.chunked else frame)
            unsent = transport.get_write_buffer_size()
            if unsent > limit + sub.grace:
                dropped.append((sub, "lagged"))
            elif sub.grace and unsent <= LAG_LIMIT:
                sub.grace = 0
        for sub, reason in dropped:
            self.subscribers.discard(sub)
            self.settle(sub)
            sub.end(reason)

    def _fan_out_ahead(self, events: list[Event], comments: bytes) -> None:
        """Give each client ahead of the stream the events of this read after its position;
        one that the stream has now passed reads every event from here on."""
        keys = [event.key for event in events]
        canonical = self.positions.canonical
        passed: list[_Subscriber] = []
        for sub in list(self._ahead):
            start = bisect.bisect_right(keys, canonical(sub.position))
            frame = b"".join(event.data for event in events[start:]) + comments
            if start < len(events):
                passed.append(sub)
            if not frame:
                continue
            transport = sub.transport
            if transport.is_closing():
                self._ahead.discard(sub)
                sub.end("gone")
                continue
            transport.write(_chunk(frame) if sub.chunked else frame)
            if not self.paced and transport.get_write_buffer_size() > LAG_LIMIT + len(frame):
                self._ahead.discard(sub)
                self.settle(sub)
                sub.end("lagged")
        for sub in passed:
            if sub in self._ahead:
                self._ahead.discard(sub)
                self.subscribers.add(sub)

    def end(self, reason: str) -> None:
        """The engine stream is over: every client's ends too (its position: where it is)."""
        self.finished = True
        for sub in self.subscribers:
            self.settle(sub)
            sub.end(reason)
        for sub in self._ahead:
            sub.end(reason)
        self.subscribers.clear()
        self._ahead.clear()
        self.notify()


#: Sends the stream's engine request (raises `ProxyError` before any headers).
Opener = Callable[[], Awaitable[UpstreamResponse]]
#: Turns the engine response's headers into the `Head` clients get.
HeadMaker = Callable[[UpstreamResponse], Head]


class SharedStreams:
    """The shared SSE streams in progress, by key. Owned by one forwarder."""

    def __init__(self) -> None:
        self._streams: dict[tuple[object, ...], SharedStream] = {}
        #: Every stream's task until it is done, forgotten ones included (a stream whose last
        #: client left, one ended by `end_all`): `close` waits for all of them. It waited only
        #: for those in `_streams`, and the loop closed under a forgotten one still unwinding
        #: ("Task was destroyed but it is pending!" at error level on a clean stop, chaos).
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, key: tuple[object, ...]) -> bool:
        return key in self._streams

    def join(
        self,
        spec: StreamSpec,
        open_: Opener,
        make_head: HeadMaker,
        error_timeout: float = ERROR_BODY_SECONDS,
    ) -> tuple[SharedStream, bool]:
        """The stream for `spec`, started at its offset if there is none; True if it existed.
        `error_timeout`: the seconds an error answer's body may take in all.

        Every `join` is followed by one `leave` when that client is done with the stream.
        """
        stream = self._streams.get(spec.key)
        joined = stream is not None
        if stream is None:
            stream = SharedStream(spec)
            self._streams[spec.key] = stream
            task = asyncio.get_running_loop().create_task(
                self._run(stream, open_, make_head, error_timeout)
            )
            stream.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        stream.members += 1
        return stream, joined

    def leave(self, stream: SharedStream) -> None:
        """A client is done; the last one to leave ends an engine stream nobody reads (as
        the engine's would end with its last direct client)."""
        stream.members -= 1
        if stream.members == 0 and not stream.finished:
            self._forget(stream)
            if stream.task is not None:
                stream.task.cancel()

    def _forget(self, stream: SharedStream) -> None:
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]

    def end_all(self) -> None:
        """End every stream now: each client's response cleanly (not carried on to a next
        stream), each engine request closed; a client arriving later starts a new one."""
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.revoked = True
            stream.end("revoked")
            if stream.task is not None:
                stream.task.cancel()

    async def close(self) -> None:
        """Cancel the streams still running, forgotten ones too, and wait until each has
        ended (app shutdown)."""
        self._streams.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _caught_up(self, stream: SharedStream) -> bool:
        """Whether a catch-up stream's clients, having just had an up-to-date (its last
        event), can join the stream it hands over to."""
        last = stream._last_key()
        if last[1] != INF_OP or last[2] != 0 or last == stream.floor or stream._ahead:
            return False
        assert stream.handover is not None
        target = self._streams.get(stream.handover)
        if target is None or target.finished or target.raw or target.head is None:
            return False
        return target.head.status == 200 and target.can_join(last)

    async def _run(
        self, stream: SharedStream, open_: Opener, make_head: HeadMaker, error_timeout: float
    ) -> None:
        """The engine request: headers, then every read fanned out, until it ends."""
        upstream: UpstreamResponse | None = None
        reason = "broken"
        try:
            try:
                upstream = await open_()
            except ProxyError as exc:
                stream.failure = exc
                return
            try:
                head = make_head(upstream)
            except Exception:
                # A bug of ours, not the engine's failure: each client's 500, as on the
                # direct path, logged now (see `collapsing.Flights._fly`).
                logger.exception("unexpected error on a shared engine stream")
                stream.failure = ProxyError("internal_error", "internal error")
                return
            event_stream = (head.get("content-type") or "").startswith("text/event-stream")
            if head.status != 200:
                self._forget(stream)  # nobody else joins an error
                # (whole, bounded in size and time, to be scrubbed; else each identical
                # waiter gets a 502)
                stream.body = await read_error_body(upstream, error_timeout, ERROR_BODY_LIMIT)
                stream.head = head
                reason = "ended"
                return
            # Bytes the fan-out cannot read as events (not an event stream, or compressed: a
            # client reading from the middle of a gzip stream gets nothing it can decode):
            # shared only by identical requests, each given every byte from the start.
            encoding = (head.get("content-encoding") or "identity").strip().lower()
            stream.raw = not event_stream or encoding != "identity"
            if not stream.raw:  # (raw keys follow the start: they must stay as they are)
                stream.learn_head(head)
            stream.head = head
            stream.notify()
            try:
                async for piece in upstream.content.iter_any():
                    if stream.paced:  # (before each write: not one piece on top of another)
                        await stream.drained()
                    stream.feed(piece)
                    if stream.handover is not None and self._caught_up(stream):
                        reason = "ended"  # (its clients go on on that stream: `_read`)
                        stream.handed_over = True
                        return
            except BodyError as exc:
                logger.warning("shared SSE stream broke (%s)", type(exc).__name__)
                return
            reason = "ended"
            upstream.release()
            upstream = None
        finally:
            if upstream is not None:
                upstream.close()
            self._forget(stream)
            # (a cancelled task keeps its CancelledError, whose traceback keeps this frame
            # and `stream`: with `stream.task` a cycle only the rare cyclic collector frees)
            stream.task = None
            stream.end(reason)


def _client_headers(head: Head, spec: StreamSpec) -> StreamResponse:
    """The stream's headers, with the ones the engine computes per request made this
    client's: its own offset (its position until its first up-to-date), a cursor past its
    own, an ETag naming both."""
    response = StreamResponse(status=head.status, reason=head.reason)
    headers = response.headers
    headers.extend(head.response_headers)
    if "electric-offset" in headers:
        headers["electric-offset"] = spec.offset
    if "electric-cursor" in headers:
        headers["electric-cursor"] = str(_next_cursor(headers["electric-cursor"], spec.cursor))
    if "etag" in headers:
        # The engine's: `handle:offset:log end at open:time`.
        handle = head.get("electric-handle") or ""
        end = log_end(head) or spec.offset
        headers["etag"] = f'"{handle}:{spec.offset}:{end}:{time.monotonic_ns()}"'
    return response


def log_end(head: Head) -> str | None:
    """Where the log ended when the engine's SSE stream opened: the third field of its ETag,
    `"handle:offset:log end:time"` (sync_engine/http/live.py); None if it has none."""
    parts = (head.get("etag") or "").removeprefix("W/").strip('"').split(":")
    return parts[2] if len(parts) == 4 else None


def _next_cursor(engine_cursor: str, request_cursor: int) -> int:
    """The engine's cursor when it is past the client's, else the client's plus 1..3600 (the
    engine's own rule: a live answer's cursor always increases past the request's)."""
    try:
        value = int(engine_cursor)
    except ValueError:
        value = 0
    if value <= request_cursor:
        return request_cursor + random.randint(1, 3600)
    return value


async def serve(
    stream: SharedStream,
    request: Request,
    spec: StreamSpec,
    options: UpstreamOptions,
    *,
    joined: bool,
    started: Started | None = None,
    deadline: float | None = None,
    deadlines: Deadlines | None = None,
) -> Outcome | Result | Continue:
    """One client's side of a shared stream, or why it cannot have one; `started`: the
    client's response goes on from an earlier stream (`Continue`); `deadline` (wall clock):
    its token's expiry, where its stream ends cleanly (never before `MIN_CLIENT_STREAM`),
    kept by `deadlines` (the forwarder's: one timer per tick, not one per client)."""
    while stream.head is None and not stream.finished:
        await stream.changed()
    head = stream.head
    if started is not None:
        return await _go_on(stream, request, spec, started, deadline, deadlines)
    identical = spec.offset == stream.offset
    if head is None:  # the engine request failed before any headers (or was ended)
        if not identical or stream.revoked:
            return Result.RETRY
        raise (stream.failure or connection_failed(options)).copy()
    if head.status != 200:
        if not identical:
            return Result.RETRY
        if stream.body is None:
            raise (stream.failure or connection_failed(options)).copy()
        return Outcome(complete(head, stream.body), head.status, "collapsed" if joined else "-")
    if stream.raw and not identical:
        return Result.DIRECT
    if not stream.can_join(spec.position):
        return Result.BEHIND if stream.handover is None else Result.DIRECT
    missed = stream.events_after(spec.position)
    if stream.finished and not missed:
        return Result.RETRY  # nothing for it in an ended stream: the next one
    response = _client_headers(head, spec)
    outcome = Outcome(response, head.status, "collapsed" if joined else "-")
    try:
        writer = await response.prepare(request)
    except ConnectionError:
        writer = None
    transport = request.transport
    if writer is None or transport is None or transport.is_closing():
        outcome.failure = ("client_gone", "client_disconnected")
        return outcome
    chunked = bool(getattr(writer, "chunked", False))
    _bound_send_buffer(transport)
    # From here to `subscribers.add` nothing awaits: no event can slip between the two.
    if not stream.can_join(spec.position):  # the history moved past it meanwhile
        transport.close()  # it reconnects from its offset and catches up
        outcome.failure = ("error", "shared_stream_moved_on")
        return outcome
    started = Started(response, outcome, chunked, time.monotonic())
    return await _read(stream, request, spec, started, deadline, deadlines)


async def _go_on(
    stream: SharedStream,
    request: Request,
    spec: StreamSpec,
    started: Started,
    deadline: float | None,
    deadlines: Deadlines | None,
) -> Outcome | Result | Continue:
    """A client's response, begun on an earlier stream, goes on on this one; where it cannot
    (the engine answered otherwise: a 409 after a rotation, say), it ends cleanly there and
    the client reconnects to get that answer."""
    head = stream.head
    transport = request.transport
    if transport is None or transport.is_closing():
        started.outcome.failure = ("client_gone", "client_disconnected")
        return started.outcome
    if head is None or head.status != 200 or stream.raw or not stream.can_join(spec.position):
        return await _finish(started.response, request, started.outcome, "ended")
    if stream.finished and not stream.events_after(spec.position):
        return Result.RETRY
    return await _read(stream, request, spec, started, deadline, deadlines)


async def _read(
    stream: SharedStream,
    request: Request,
    spec: StreamSpec,
    started: Started,
    deadline: float | None,
    deadlines: Deadlines | None,
) -> Outcome | Continue:
    """A client's time on `stream`: what it missed, then every event until one of them
    ends; a clean end too soon after the client's response began goes on (`Continue`).
    At `deadline` (its token's expiry), or at the ceiling of its response's life on a
    shared stream (`MAX_CLIENT_RESPONSE`), it ends cleanly between two reads of the stream,
    each written whole: the client buffers a batch until its up-to-date, so a batch cut
    there is one it has not applied, and it reconnects from its last up-to-date."""
    transport = request.transport
    assert transport is not None
    if started.past(deadline):
        # Its token expired while it was on no stream (taking what it was written after it
        # fell behind, or waiting for this stream's headers): attached, it would be written
        # this stream's events (changes after its `exp`) before the expiry could end it
        # (attack r8 follow-up). Its response ends cleanly where it is; its reconnect is
        # authorised again.
        return await _finish(started.response, request, started.outcome, "expired")
    sub = stream.attach(transport, started.chunked, spec, request.writer)
    if sub.done.done():  # (the stream is over: it got what it missed, if anything)
        reason = sub.done.result()
    else:
        try:
            lasted = time.monotonic() - started.since
            if deadline is not None:
                # (a token that expired within its issuer's leeway still gets a stream that
                # is not short: else its client reconnects at once, again and again)
                deadline = max(deadline, time.time() + MIN_CLIENT_STREAM - lasted)
            # The ceiling (`MAX_CLIENT_RESPONSE`): on a paced stream at its next up-to-date.
            ceiling = response_ceiling(lasted)
            paced = _Ceiling(stream, sub) if stream.paced else None
            if paced is None:
                deadline = ceiling if deadline is None else min(deadline, ceiling)
            registry = deadlines if deadlines is not None else Deadlines()
            # (`sub.expire` ends it, "expired"; `paced.expire` when its batches are whole)
            expiry = registry.add(deadline, sub) if deadline is not None else None
            overdue = registry.add(ceiling, paced) if paced is not None else None
            try:
                reason = await sub.done
            finally:
                if expiry is not None:
                    registry.discard(expiry, sub)
                if overdue is not None:
                    assert paced is not None
                    registry.discard(overdue, paced)
        finally:
            stream.remove(sub)
    key = spec.handover if spec.handover is not None else spec.key
    if reason == "lagged" and not stream.raw and not transport.is_closing():
        # What it was written stays in its buffer, and its response goes on after it, once
        # it has taken that: a client that reads nothing costs no engine stream of its own,
        # only its buffer, until `SEND_TIMEOUT` drops it.
        try:
            await request.writer.drain()
        except ConnectionError:
            started.outcome.failure = ("client_gone", "client_too_slow")
            return started.outcome
        return Continue(_resumed(key, sub, spec.cursor, paced=True), started)
    if reason == "ended" and stream.handed_over and not transport.is_closing():
        # A client's own stream (it fell behind) caught up with its shape's shared stream:
        # its response goes on there, as README promises, not ended at that up-to-date (its
        # client then reconnected once per fall-behind: twin 08:16).
        return Continue(_resumed(key, sub, spec.cursor), started)
    if reason == "ended" and time.monotonic() - started.since < MIN_CLIENT_STREAM:
        # Only from a position an offset names (or its own): after an event with no position
        # of its own (raw bytes, a control message) a next stream cannot tell which of its
        # events the client had, and the client reconnects from its last up-to-date instead.
        tx, _, n = sub.position
        nameable = sub.position == spec.position or (n == 0 and tx > 0)
        if nameable and not transport.is_closing():
            return Continue(_resumed(key, sub, spec.cursor), started)
    if reason in ("expired", "revoked") and stream.raw:
        # Bytes the proxy cannot cut cleanly (a compressed stream: a clean end mid-way is a
        # truncated body its client cannot decode): the connection is closed instead, which
        # the client retries from its last up-to-date, as after any broken stream.
        started.outcome.failure = ("ok", "hold_ended")
        transport.close()
        return started.outcome
    return await _finish(started.response, request, started.outcome, reason)


def response_ceiling(lasted: float = 0.0) -> float:
    """When (wall clock) an SSE response that began `lasted` seconds ago reaches its
    ceiling (`MAX_CLIENT_RESPONSE`), rounded up to `CEILING_GRAIN` (clients share a timer).
    Also the bound of a stream passed straight through (`Forwarder._relay_held`)."""
    ceiling = time.time() + MAX_CLIENT_RESPONSE - lasted
    return math.ceil(ceiling / CEILING_GRAIN) * CEILING_GRAIN


def _resumed(
    key: tuple[object, ...], sub: _Subscriber, cursor: int, *, paced: bool = False
) -> StreamSpec:
    """Where a client that left a stream goes on: the stream of `key` (the shape's), or a
    stream of its own (`paced`, which hands over to the shape's once caught up), at its
    position, opened at its last up-to-date if it is inside a transaction."""
    start = None if sub.position == sub.boundary else sub.boundary
    if paced:
        own = (*key, "paced", next(_PACED))
        return StreamSpec(own, sub.offset, sub.position, cursor, key, start, paced=True)
    return StreamSpec(key, sub.offset, sub.position, cursor, start=start)


#: Tells paced streams apart (each is one client's).
_PACED = itertools.count()


async def end_started(request: Request, started: Started) -> Outcome:
    """End a client's response begun on an earlier stream cleanly (it reconnects)."""
    return await _finish(started.response, request, started.outcome, "ended")


def _bound_send_buffer(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:  # (best effort: the lag limit still applies)
            pass


async def _finish(
    response: StreamResponse, request: Request, outcome: Outcome, reason: str
) -> Outcome:
    """End a client's stream the way its shared stream ended for it."""
    transport = request.transport
    if reason in ("ended", "expired", "revoked"):
        try:
            await response.write_eof()
        except ConnectionError:
            outcome.failure = ("client_gone", "client_disconnected")
    elif reason == "lagged":
        outcome.failure = ("client_gone", "client_too_slow")
        if transport is not None:
            transport.abort()  # drop what it did not read: it resumes from its last offset
    elif reason == "gone":
        outcome.failure = ("client_gone", "client_disconnected")
    else:  # the engine stream broke: a truncated response, never a clean end
        outcome.failure = ("error", "upstream_broken_stream")
        if transport is not None:
            transport.close()
    return outcome
