"""A request head's lines, measured as its bytes arrive, by the rules of Electric's server.

Electric's HTTP server (Bandit, lib/bandit/http1/socket.ex) reads a request line and each
header line with `:erlang.decode_packet(packet_size: 10_000)`: a request line of more than
`MAX_REQUEST_LINE` bytes is a 414, a header line of more than `MAX_HEADER_LINE` bytes or a
header beyond the `MAX_HEADERS`th a 431, each line measured whole, its line end included
(not its target, name or value apart). The engine refuses the same way
(`sync_engine.http.parser_refusals`), and so must the proxy, or a client could tell the two
apart by a large token or cookie, and an unfinished head could hold ~1 MB of a proxy's
memory (attack 14:05: 300 of them held 300 MB).

Pure: no I/O. `Connection` (`proxy.http.protocol`) passes every byte of a head whose start it
knows through `HeadLines.scan` before llhttp parses it, so a line is refused as soon as
`MAX_REQUEST_LINE` bytes of it arrived without its line end (it can only end over the limit),
and nothing past the limit is ever buffered.
"""

from __future__ import annotations

from sync_engine.http.parser_refusals import (
    HEADER_LINE_TOO_LONG,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    REQUEST_LINE_TOO_LONG,
    TOO_MANY_HEADERS,
    Refusal,
)

#: A head no longer than this has no line over either limit.
_SHORT = min(MAX_REQUEST_LINE, MAX_HEADER_LINE)
#: A head this long at most has no line over either limit (its end's CRLF CRLF aside).
SHORT_HEAD = _SHORT + 2
_LF = 10
_CR = 13


class HeadLines:
    """One connection's head being read: the line in progress and the header lines so far.

    Empty lines before a request line (RFC 9112, 2.2: a server should ignore at least one)
    count as part of it, as the engine counts them (`parser_refusals.HeadScan`, the
    engine's own rule: tests/proxy/test_head_lines.py compares the two).
    """

    __slots__ = ("_cr", "_headers", "_lead", "_line", "_started")

    def __init__(self) -> None:
        self._lead = 0  # bytes of empty lines before the request line
        self._line = 0  # bytes of the line in progress (its LF not read yet)
        self._cr = False  # its last byte so far is a CR
        self._headers = 0  # header lines ended
        self._started = False  # its request line began

    def scan(self, data: bytes, at: int) -> tuple[int, Refusal | None]:
        """Read `data[at:]`, which continues the head (or begins one).

        Returns (offset just past the head's blank line, None) when the head ends in `data`
        (ready for the next head), (-1, None) when it goes on past `data`, or (offset where
        the offending line begins in `data`, at least `at`; the refusal) when a line is over
        its limit or one header too many has ended.
        """
        if not self._started and self._line == 0 and self._lead == 0:
            if (
                at == 0
                and len(data) <= _SHORT + 2
                and data.endswith(b"\r\n\r\n")
                and data[:1] not in (b"\r", b"\n")
            ):
                # The usual read, one whole head and nothing after it (`_short_head`'s first
                # case, inline: once per request): its lines split at each LF in one C pass;
                # it ends here if no line before its blank one is empty or a lone CR.
                lines = data.split(b"\n")
                if (
                    lines.count(b"") == 1
                    and lines.count(b"\r") == 1
                    and len(lines) - 3 <= MAX_HEADERS
                ):
                    return len(data), None
            end = self._short_head(data, at)
            if end > 0:
                return end, None
        n = len(data)
        i = at
        while True:
            j = data.find(b"\n", i)
            if j < 0:
                if i < n:
                    self._line += n - i
                    self._cr = data[n - 1] == _CR
                if self._started:  # (its LF would make it one byte over)
                    if self._line >= MAX_HEADER_LINE:
                        return i, HEADER_LINE_TOO_LONG
                elif self._lead + self._line >= MAX_REQUEST_LINE:
                    return i, REQUEST_LINE_TOO_LONG
                return -1, None
            length = self._line + j + 1 - i
            empty = length == 1 or (length == 2 and (data[j - 1] == _CR if j > i else self._cr))
            start, i = i, j + 1
            self._line = 0
            self._cr = False
            if not self._started:
                self._lead += length
                if empty:
                    if self._lead >= MAX_REQUEST_LINE:
                        return start, REQUEST_LINE_TOO_LONG
                    continue
                self._started = True
                if self._lead > MAX_REQUEST_LINE:
                    return start, REQUEST_LINE_TOO_LONG
                continue
            if empty:  # the head's end
                self._started = False
                self._headers = 0
                self._lead = 0
                return i, None
            self._headers += 1
            if length > MAX_HEADER_LINE:
                return start, HEADER_LINE_TOO_LONG
            if self._headers > MAX_HEADERS:
                return start, TOO_MANY_HEADERS

    def _short_head(self, data: bytes, at: int) -> int:
        """The end of a whole head at `at` that needs no line measured (the usual request:
        CRLF line ends, shorter than either limit, not too many headers); 0 if not that."""
        if data[at : at + 1] in (b"\r", b"\n", b""):
            return 0
        if at == 0 and len(data) <= _SHORT + 2 and data.endswith(b"\r\n\r\n"):
            # The usual read: one whole head and nothing after it. Its lines, split at each
            # LF in one C pass (the three searches below cost about twice as much on a head
            # with a token): it ends here if no line before its blank one is empty or a lone
            # CR (else it ended earlier, and the searches below, or `scan`, find where).
            lines = data.split(b"\n")
            if lines.count(b"") == 1 and lines.count(b"\r") == 1:
                return len(data) if len(lines) - 3 <= MAX_HEADERS else 0
        end = data.find(b"\r\n\r\n", at, at + _SHORT + 2)
        if end < 0 or data.find(b"\n\n", at, end + 4) >= 0:
            return 0
        if data.find(b"\n\r\n", at, end + 2) >= 0:
            return 0  # (an LF-ended line, then an empty one: the head ended before `end`)
        end += 4
        if data.count(b"\n", at, end) - 2 > MAX_HEADERS:
            return 0
        return end
