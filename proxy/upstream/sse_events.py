"""Positions in a shape log and the SSE events that carry them, as the fan-out compares them.

Pure: no I/O, no asyncio. `upstream.sse` shares one engine SSE stream among many clients,
each at its own position; these are the rules that keep every client's position exact.

A **position** is what a client's `offset` names, read the way the engine reads it
(`sync_engine/log/files.py`, `_after_key`): the client wants every entry after it.

- `<lsn>_0` and `<lsn>_inf` name the end of transaction `<lsn>` (the SSE client resumes from
  `<global_last_seen_lsn>_0`);
- `<lsn>_<op>` names the entries of `<lsn>` up to op `<op>`; when `<op>` is the
  transaction's last op (the `electric-offset` of a response that reached the tip), it is
  the same position as `<lsn>_0`: `Positions.canonical` knows that for the transactions
  it has seen end;
- `0_<k>` and `0_inf` (snapshot offsets) come before every transaction of the shape's log.

Every **event** of an engine stream gets a `Key` that orders it in the log: a change
message its own (`headers.lsn`, `headers.op_position`), an up-to-date the end of its
transaction (`global_last_seen_lsn`), anything else just after the event before it. A client
at position `p` must get exactly the events whose key is greater than `p`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

#: An op number greater than any real one: `(lsn, INF_OP, 0)` is the end of transaction lsn.
INF_OP = 1 << 62
#: (lsn, op, n): n counts events without a position of their own after the one before.
Key = tuple[int, int, int]
#: Before every transaction (snapshot offsets).
BEFORE_TRANSACTIONS: Key = (0, -1, 0)
#: Transactions whose last op is remembered (see `Positions`).
_REMEMBERED = 256


def offset_key(text: str) -> Key | None:
    """The position an `offset` names, or None when it names none (`-1`, `now`, bad text).

    A live request needs a position: the engine answers `-1`/`now` with live=true with a
    400, so those go straight to it.
    """
    tx_text, sep, op_text = text.partition("_")
    if not sep or not tx_text.isdigit() or not (op_text.isdigit() or op_text == "inf"):
        return None
    tx = int(tx_text)
    op = INF_OP if op_text == "inf" else int(op_text)
    if tx >= 1 << 64 or op > INF_OP:
        return None
    if tx == 0:
        return BEFORE_TRANSACTIONS
    if op == 0:
        op = INF_OP
    return (tx, op, 0)


class Positions:
    """What one stream has learnt about where transactions end (bounded).

    `<lsn>_<op>` and `<lsn>_0` are the same position once the proxy knows `<op>` is the last
    op of `<lsn>`: from a transaction it streamed whole, or from the engine's
    `electric-offset` header, which names the log's last entry (a transaction's end).
    """

    __slots__ = ("_last_ops",)

    def __init__(self) -> None:
        self._last_ops: dict[int, int] = {}

    def transaction_ends(self, lsn: int, op: int) -> None:
        last_ops = self._last_ops
        last_ops[lsn] = op
        if len(last_ops) > _REMEMBERED:
            del last_ops[next(iter(last_ops))]

    def canonical(self, key: Key) -> Key:
        """`key`, with `<lsn>_<last op>` read as the end of the transaction."""
        tx, op, n = key
        if n == 0 and op < INF_OP:
            last = self._last_ops.get(tx)
            if last is not None and op >= last:
                return (tx, INF_OP, 0)
        return key


@dataclass(slots=True)
class Event:
    """One SSE event (its bytes, blank line included) and where it sits in the log."""

    key: Key
    data: bytes


class EventParser:
    """Splits an engine SSE byte stream into events and keys them (one per stream).

    Comments (`: keep-alive`) come back separately: they are passed on but never replayed.
    Keys never go backwards: an event whose own position is behind the previous event's is
    keyed as following it.
    """

    __slots__ = ("_buffer", "_last", "_open", "positions")

    def __init__(self, start: Key, positions: Positions) -> None:
        self._buffer = b""
        self._last = start
        self.positions = positions
        #: The last op of each transaction seen in the batch in progress (whole once its
        #: up-to-date arrives).
        self._open: dict[int, int] = {}

    def feed(self, piece: bytes) -> tuple[list[Event], bytes]:
        """The complete events in `piece` (after what came before) and its comments."""
        data = self._buffer + piece if self._buffer else piece
        blocks = data.split(b"\n\n")
        self._buffer = blocks.pop()
        events: list[Event] = []
        comments: list[bytes] = []
        for block in blocks:
            if not block:
                continue
            if block.startswith(b":"):
                comments.append(block + b"\n\n")
                continue
            events.append(Event(self._key(_data_of(block)), block + b"\n\n"))
        return events, b"".join(comments)

    def _key(self, payload: bytes | None) -> Key:
        key = _own_key(payload, self._open)
        last = self._last
        if key is None or key <= last:
            key = (last[0], last[1], last[2] + 1)
        elif key[1] == INF_OP:  # an up-to-date: the transactions before it are whole
            for lsn, op in self._open.items():
                self.positions.transaction_ends(lsn, op)
            self._open.clear()
        self._last = key
        return key


def _data_of(block: bytes) -> bytes | None:
    """The `data` of an event block (its `data:` lines joined), None if it has none."""
    lines = [line for line in block.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    parts = [line[6:] if line.startswith(b"data: ") else line[5:] for line in lines]
    return parts[0] if len(parts) == 1 else b"\n".join(parts)


def _own_key(payload: bytes | None, open_ops: dict[int, int]) -> Key | None:
    """The key an event's message names for itself (a change or an up-to-date), else None."""
    if payload is None:
        return None
    try:
        message = orjson.loads(payload)
        headers = message.get("headers") if isinstance(message, dict) else None
        if not isinstance(headers, dict):
            return None
        if headers.get("control") == "up-to-date":
            lsn = int(headers["global_last_seen_lsn"])
            return (lsn, INF_OP, 0) if lsn > 0 else None
        lsn_text, op = headers.get("lsn"), headers.get("op_position")
        if lsn_text is None or not isinstance(op, int) or isinstance(op, bool):
            return None
        lsn = int(lsn_text)
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        return None
    if lsn <= 0 or not 0 <= op < INF_OP:
        return None
    if op > open_ops.get(lsn, -1):
        open_ops[lsn] = op
    return (lsn, op, 0)
