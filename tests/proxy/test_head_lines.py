"""`HeadLines`: a request head measured line by line as Electric's server (Bandit) measures
it, whatever pieces its bytes arrive in, with the engine's verdict (`HeadScan`) on the same
bytes (the proxy's side of the engine's head limits; the real path is
test_transparency_cases_real.py's `test_request_head_limits_are_the_engines`)."""

from __future__ import annotations

import random

import pytest

from proxy.http.head_lines import HeadLines
from sync_engine.http.parser_refusals import (
    HEADER_LINE_TOO_LONG,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    REQUEST_LINE_TOO_LONG,
    TOO_MANY_HEADERS,
    HeadScan,
    Refusal,
)


def _line(length: int, start: bytes = b"GET /") -> bytes:
    return start + b"x" * (length - len(start) - len(b" HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"


def _header(length: int) -> bytes:
    return b"X-Big: " + b"v" * (length - 9) + b"\r\n"


HOST = b"Host: x\r\n"
CASES: list[tuple[bytes, Refusal | None]] = [
    (_line(100) + HOST + b"\r\n", None),
    (_line(MAX_REQUEST_LINE) + HOST + b"\r\n", None),
    (_line(MAX_REQUEST_LINE + 1) + HOST + b"\r\n", REQUEST_LINE_TOO_LONG),
    (_line(MAX_REQUEST_LINE * 2)[:MAX_REQUEST_LINE], REQUEST_LINE_TOO_LONG),  # no LF yet
    (_line(100) + _header(MAX_HEADER_LINE) + b"\r\n", None),
    (_line(100) + _header(MAX_HEADER_LINE + 1) + b"\r\n", HEADER_LINE_TOO_LONG),
    (_line(100) + _header(MAX_HEADER_LINE * 2)[:MAX_HEADER_LINE], HEADER_LINE_TOO_LONG),
    (_line(100) + HOST * MAX_HEADERS + b"\r\n", None),
    (_line(100) + HOST * (MAX_HEADERS + 1), TOO_MANY_HEADERS),
    (b"\r\n\n" + _line(MAX_REQUEST_LINE - 3) + HOST + b"\r\n", None),  # (empty lines count)
    (b"\r\n\n" + _line(MAX_REQUEST_LINE - 2) + HOST + b"\r\n", REQUEST_LINE_TOO_LONG),
    (_line(100).replace(b"\r\n", b"\n") + b"Host: x\n\n", None),  # (LF line ends)
]


def _scan(pieces: list[bytes]) -> tuple[int, Refusal | None]:
    """Scan `pieces` as a connection gets them: (bytes up to the head's end, None) or (bytes
    up to the offending line's start, its refusal); (-1, None) if the head goes on."""
    lines = HeadLines()
    seen = 0
    for piece in pieces:
        end, refused = lines.scan(piece, 0)
        if refused is not None or end >= 0:
            return seen + end, refused
        seen += len(piece)
    return -1, None


@pytest.mark.parametrize("head,expected", CASES)
def test_each_line_is_measured_whole_in_any_pieces(head: bytes, expected: Refusal | None) -> None:
    rng = random.Random(len(head))
    whole = _scan([head])
    assert whole[1] is expected
    if expected is None:
        assert whole[0] == len(head)  # (its end: the next request starts there)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(head)), min(len(head) - 1, rng.randint(1, 8))))
        pieces = [head[a:b] for a, b in zip([0, *cuts], [*cuts, len(head)], strict=True)]
        assert _scan(pieces) == whole or (expected is not None and _scan(pieces)[1] is expected)


def test_pipelined_heads_each_start_where_the_last_ended() -> None:
    first = _line(100) + HOST + b"\r\n"
    second = _line(MAX_REQUEST_LINE + 1) + HOST + b"\r\n"
    lines = HeadLines()
    data = first + second
    assert lines.scan(data, 0) == (len(first), None)
    assert lines.scan(data, len(first)) == (len(first), REQUEST_LINE_TOO_LONG)


def _random_head(rng: random.Random) -> bytes:
    """A head near the limits: empty lines first or not, CRLF or LF, lines about as long
    as the limits, about as many headers."""
    end = rng.choice([b"\r\n", b"\n"])
    lead = rng.choice([b"", b"\r\n", b"\n" * rng.randint(1, 3), b"\r\n" * 4000])
    lines = [_line(rng.choice([50, MAX_REQUEST_LINE - 1, MAX_REQUEST_LINE, MAX_REQUEST_LINE + 1]))]
    for _ in range(rng.choice([1, 5, MAX_HEADERS - 1, MAX_HEADERS, MAX_HEADERS + 1])):
        size = rng.choice([12, 12, 12, MAX_HEADER_LINE - 1, MAX_HEADER_LINE, MAX_HEADER_LINE + 1])
        lines.append(_header(size))
    head = lead + b"".join(lines) + b"\r\n"
    return head.replace(b"\r\n", end) if end == b"\n" and rng.random() < 0.5 else head


def test_the_verdict_is_the_engines_on_any_head_in_any_pieces() -> None:
    """Differential: fed the same pieces, `HeadLines` refuses at the same piece with the
    same answer as the engine's `HeadScan`, and ends the head where it does."""
    rng = random.Random(7)
    for _ in range(150):
        head = _random_head(rng)
        cuts = sorted(rng.sample(range(1, len(head)), min(len(head) - 1, rng.randint(0, 6))))
        pieces = [head[a:b] for a, b in zip([0, *cuts], [*cuts, len(head)], strict=True)]
        mine, engine = HeadLines(), HeadScan()
        for piece in pieces:
            end, refused = mine.scan(piece, 0)
            expected = engine.feed(piece)
            assert refused is expected, (len(head), [len(p) for p in pieces])
            if refused is not None:
                break
            assert (end >= 0) == engine.done
            if end >= 0:
                assert end == len(piece)  # (nothing after the head here)
                break


def test_a_whole_head_in_one_read_ends_where_it_does_read_in_pieces() -> None:
    """The shortcut for a whole head in one read (`HeadLines._short_head`) against the same
    bytes read a byte at a time (measured line by line): the same end, or the same refusal,
    on heads with stray CRs, LF line ends, empty lines and a next request after them."""
    rng = random.Random(11)
    parts = [b"a", b"\r", b"\n", b": ", b"\r\n", b"\n\n", b"\r\n\r\n"]
    for _ in range(3000):
        body = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.2:
            body += HOST * rng.randint(MAX_HEADERS - 2, MAX_HEADERS + 2)
        start = rng.choice([b"GET / HTTP/1.1\r\n", b"G", b"\r", b""])
        head = start + body + rng.choice([b"\r\n\r\n", b"\n\n", b"\r\n", b"\r\n\r\nGET /"])
        end, refused = HeadLines().scan(head, 0)
        by_byte, refused_by_byte = _scan([head[i : i + 1] for i in range(len(head))])
        assert refused is refused_by_byte, head
        if refused is None:  # (a refusal's offset is where its line began in the last piece)
            assert end == by_byte, head
