"""Type output functions (what `::text`, `||` and `concat` produce) and LIKE matching.

Output follows the engine's snapshot session settings (DateStyle ISO, IntervalStyle
iso_8601, extra_float_digits=1, TimeZone UTC).
"""

from __future__ import annotations

import decimal
import functools
import math
import re
import string
import struct
from collections.abc import Callable
from datetime import time
from decimal import Decimal

from sync_engine.pg import values as pgv
from sync_engine.pg.types import (
    BOOL,
    BYTEA,
    DATE,
    FLOAT4,
    FLOAT8,
    INTERVAL,
    JSON,
    JSONB,
    NUMERIC,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
    UUID,
    PgType,
)
from sync_engine.pg.values import UnrepresentableValue, Value

from .datetimes import tstz_to_ts
from .resolution import INT_TYPES, STRING_TYPES
from .semantics import identity


def _trim_fraction(micros: int) -> str:
    return "" if not micros else "." + f"{micros:06d}".rstrip("0")


def float_text(value: float) -> str:
    """float8 output with extra_float_digits=1: shortest digits, %g-like layout."""
    return _shortest_text(value, _float8_digits, 15)


#: Enough digits for a double's exact value and the midpoints beside it (767 at most).
_EXACT = decimal.Context(prec=1100)


def _float8_digits(value: float) -> str:
    """The shortest digits Postgres's Ryu (d2s) prints: those that read back as `value`,
    never a decimal exactly halfway to a neighbouring double. Python's repr takes such a
    halfway decimal when `value`'s mantissa is even (it reads back by ties-to-even), and
    Postgres then prints a digit more: 514820811053018368 is 5.1482081105301837e+17 in
    Postgres, 5.148208110530184e+17 by repr (2-4% of the doubles from 1e16 to 1e18)."""
    text = repr(value)
    magnitude = abs(value)
    exact = Decimal(magnitude)
    low = _EXACT.divide(_EXACT.add(exact, Decimal(math.nextafter(magnitude, 0.0))), 2)
    high = _EXACT.divide(_EXACT.add(exact, Decimal(math.nextafter(magnitude, math.inf))), 2)
    if low < abs(Decimal(text)) < high:
        return text
    digits = len(Decimal(text).as_tuple().digits)
    for precision in range(digits + 1, 18):
        candidate = f"{magnitude:.{precision - 1}e}"
        if low < Decimal(candidate) < high:
            return ("-" if value < 0 else "") + candidate
    return f"{value:.16e}"


def float4_text(value: float) -> str:
    """float4 output: the shortest digits that read back as the same float4 (Ryu, as
    Postgres 12+), in exponent form from 10^6 on (float8 switches at 10^15)."""
    return _shortest_text(value, _float4_digits, 6)


def _float4_digits(value: float) -> str:
    """The shortest digits Postgres's Ryu (f2s) prints for a float4: strictly between the
    midpoints to its neighbouring float4s (never on one: 103528336 is 1.03528336e+08, not
    1.0352834e+08, which is halfway and reads back as it only by ties-to-even)."""
    magnitude = abs(value)
    bits = struct.unpack("<I", struct.pack("<f", magnitude))[0]
    exact = Decimal(magnitude)
    below = struct.unpack("<f", struct.pack("<I", bits - 1))[0] if bits else 0.0
    above = struct.unpack("<f", struct.pack("<I", bits + 1))[0]
    if math.isinf(above):
        # After the largest float4 comes infinity; Ryu bounds it by the midpoint to 2^128,
        # where the next value would be (else 3.4028235e+38 printed as 3.403e+38).
        above = 2.0**128
    low = _EXACT.divide(_EXACT.add(exact, Decimal(below)), 2)
    high = _EXACT.divide(_EXACT.add(exact, Decimal(above)), 2)
    for precision in range(1, 10):
        text = f"{magnitude:.{precision - 1}e}"
        if low < Decimal(text) < high:
            return ("-" if value < 0 else "") + text
    return repr(value)


def _shortest_text(value: float, digits_of: Callable[[float], str], sci_from: int) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    d = Decimal(digits_of(value))
    exp = d.adjusted()
    sign = "-" if value < 0 else ""
    ds = "".join(map(str, d.as_tuple().digits)).rstrip("0") or "0"
    if -4 <= exp < sci_from:
        plain = format(abs(d).normalize(), "f")
        return sign + (plain.removesuffix(".0") if "." in plain else plain)
    body = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    return f"{sign}{body}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def interval_text(iv: pgv.Interval) -> str:
    """interval output under IntervalStyle='iso_8601'."""
    if not (iv.months or iv.days or iv.micros):
        return "PT0S"
    years, months = int(iv.months / 12), iv.months - 12 * int(iv.months / 12)
    out = "P"
    for amount, unit in ((years, "Y"), (months, "M"), (iv.days, "D")):
        if amount:
            out += f"{amount}{unit}"
    if iv.micros:
        sign = -1 if iv.micros < 0 else 1
        rest = abs(iv.micros)
        hours, rest = divmod(rest, 3600 * pgv.USECS_PER_SEC)
        minutes, rest = divmod(rest, 60 * pgv.USECS_PER_SEC)
        secs, frac = divmod(rest, pgv.USECS_PER_SEC)
        out += "T"
        neg = "-" if sign < 0 else ""
        if hours:
            out += f"{neg}{hours}H"
        if minutes:
            out += f"{neg}{minutes}M"
        if secs or frac:
            out += f"{neg}{secs}{_trim_fraction(frac)}S"
    return out


def time_text(t: time) -> str:
    if isinstance(t, pgv.EndOfDay):
        return "24:00:00"
    return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}{_trim_fraction(t.microsecond)}"


def _special_text(value: Value) -> str | None:
    if isinstance(value, pgv.PgInfinity):
        return "infinity" if value.sign > 0 else "-infinity"
    return None


def date_text(value: Value) -> str:
    return _special_text(value) or value.isoformat()


def timestamp_text(value: Value) -> str:
    return _special_text(value) or f"{value.date().isoformat()} {time_text(value.time())}"


def timestamptz_text(value: Value) -> str:
    return _special_text(value) or timestamp_text(tstz_to_ts(value)) + "+00"


def numeric_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value.copy_abs() if value.is_zero() else value, "f")  # no "-0" in numeric


_ARRAY_QUOTE_RE = re.compile(r'[{},"\\ \t\n\r\v\f]')


def array_text(elem_out: Callable[[Value], str]) -> Callable[[Value], str]:
    def out(value: Value) -> str:
        parts = []
        for item in value:
            if item is None:
                parts.append("NULL")
            elif isinstance(item, tuple):
                parts.append(out(item))
            else:
                s = elem_out(item)
                if not s or _ARRAY_QUOTE_RE.search(s) or s.upper() == "NULL":
                    s = '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                parts.append(s)
        return "{" + ",".join(parts) + "}"

    return out


TEXT_OUT: dict[PgType, Callable[[Value], str]] = {
    **{t: str for t in INT_TYPES},
    **{t: identity for t in (*STRING_TYPES, JSON, JSONB, UNKNOWN)},
    NUMERIC: numeric_text,
    FLOAT8: float_text,
    FLOAT4: float4_text,
    BOOL: lambda b: "t" if b else "f",
    UUID: str,
    DATE: date_text,
    TIMESTAMP: timestamp_text,
    TIMESTAMPTZ: timestamptz_text,
    TIME: time_text,
    INTERVAL: interval_text,
    BYTEA: lambda b: "\\x" + b.hex(),
}


def text_output(pg_type: PgType) -> Callable[[Value], str] | None:
    """The type's output function (what concat() uses), or None when unsupported. An array
    of an enum is an array first (`ARRAY[e]::text` was its tuple of labels, equal to no
    text). An array of char(n) values built in the clause loses their padding: the engine
    keeps char(n) values trimmed, Postgres's array output keeps each element's padding
    (`ARRAY[ch]::text` is `{"ab  "}`): the compiler refuses those (`padding_lost`)."""
    if pg_type.array:
        elem = text_output(pg_type.element)
        return None if elem is None else array_text(elem)
    if pg_type.enum:
        return identity
    return TEXT_OUT.get(pg_type)


def bool_text(value: bool) -> str:
    return "true" if value else "false"


def bool_text_from_raw(text: str) -> str:
    return "true" if text in ("t", "true") else "false"


INET = PgType("inet")


def inet_text(text: str) -> str:
    """text(inet) of an inet's output: with its netmask length always ('10.0.0.1/32'), where
    the output leaves out a full one ('10.0.0.1')."""
    if "/" in text:
        return text
    return text + ("/128" if ":" in text else "/32")


class LikePattern:
    """A LIKE pattern, matched in time linear in the pattern times the text, as Postgres's
    MatchText does, never exponential.

    The obvious translation (`%` to `.*`) makes Python's backtracking regex engine try every
    way of placing each `%`: `'%a%a%a%b'` against 400 `a`s took a second, and longer
    patterns or texts never end, on the replication loop. Instead the pattern is cut at its
    `%`s into pieces of fixed length (literal characters and `_`): the first must start the
    text, the last end it, and each middle one is found at its leftmost place after the one
    before. The leftmost place is always right: a piece of fixed length that starts first
    also ends first, and leaves the most text for the pieces after it.
    """

    __slots__ = ("_first", "_first_len", "_last", "_last_len", "_middle", "_whole")

    def __init__(self, pieces: list[list[str]], flags: int) -> None:
        """`pieces`: the pattern cut at its `%`s, each a list of one-character regexes."""
        compiled = [re.compile("".join(p), re.DOTALL | flags) for p in pieces]
        self._whole = compiled[0] if len(pieces) == 1 else None
        self._first = compiled[0] if pieces[0] else None
        self._first_len = len(pieces[0])
        self._last = compiled[-1] if pieces[-1] else None
        self._last_len = len(pieces[-1])
        self._middle = tuple(c for c, p in zip(compiled[1:-1], pieces[1:-1], strict=True) if p)

    def matches(self, text: str) -> bool:
        if self._whole is not None:
            return self._whole.fullmatch(text) is not None
        end = len(text) - self._last_len
        if end < self._first_len:
            return False
        if self._first is not None and self._first.match(text) is None:
            return False
        if self._last is not None and self._last.fullmatch(text, end) is None:
            return False
        pos = self._first_len
        for piece in self._middle:
            found = piece.search(text, pos, end)
            if found is None:
                return False
            pos = found.end()
        return True


def like_pattern(
    pattern: str,
    escape: str | None = "\\",
    *,
    fold: Callable[[str], str] | None = None,
    flags: int = 0,
) -> LikePattern:
    """Compile a LIKE pattern (`%`, `_`, escape character); `flags` are the pieces' regex
    flags (`re.IGNORECASE | re.ASCII` for the ILIKE fast path on ASCII text).

    For ILIKE, `fold` is the collation's `lower`: Postgres lowers the pattern (after
    resolving ESCAPE) and the text, then matches case-sensitively; so do we."""
    pieces: list[list[str]] = [[]]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if escape and ch == escape:
            i += 1
            if i >= len(pattern):
                raise ValueError("LIKE pattern must not end with escape character")
            pieces[-1].append(re.escape(fold(pattern[i]) if fold else pattern[i]))
        elif ch == "%":
            pieces.append([])
        elif ch == "_":
            pieces[-1].append(".")
        else:
            pieces[-1].append(re.escape(fold(ch) if fold else ch))
        i += 1
    return LikePattern(pieces, flags)


def like_function(
    fold: Callable[[str], str] | None, negate: bool, escape: str | None = "\\"
) -> Callable[[str, str], bool]:
    """LIKE / ILIKE (with `fold`) for a pattern known only per row."""

    def like(text: str, pattern: str) -> bool:
        if fold is not None:
            text = fold(text)
        try:
            compiled = like_pattern(pattern, escape, fold=fold)
        except ValueError:
            # A pattern ending in its escape character fails only where matching reaches
            # that end with text left: `'b' LIKE 'a\'` is false, `'ab' LIKE 'a\'` fails.
            tokens = _like_tokens(pattern, escape, fold)
            return (_match_text(text, tokens, 0, 0, 0) == _LIKE_TRUE) != negate
        return compiled.matches(text) != negate

    return like


_PERCENT, _UNDERSCORE, _LONE_ESCAPE = object(), object(), object()
_LIKE_TRUE, _LIKE_FALSE, _LIKE_ABORT = 1, 0, -1
#: Levels of `%` the emulation follows (Python's stack); deeper, the answer is Postgres's.
_MAX_LIKE_DEPTH = 200


def _like_tokens(
    pattern: str, escape: str | None, fold: Callable[[str], str] | None
) -> list[object]:
    """The pattern as MatchText reads it: literal characters (ILIKE: lowered), `%`, `_`,
    and an escape character with nothing after it."""
    tokens: list[object] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if escape and ch == escape:
            i += 1
            if i >= len(pattern):
                tokens.append(_LONE_ESCAPE)
                break
            tokens.append(fold(pattern[i]) if fold else pattern[i])
        elif ch == "%":
            tokens.append(_PERCENT)
        elif ch == "_":
            tokens.append(_UNDERSCORE)
        else:
            tokens.append(fold(ch) if fold else ch)
        i += 1
    return tokens


def _match_text(t: str, p: list[object], ti: int, pi: int, depth: int) -> int:
    """Postgres's MatchText (like_match.c), step for step, for the patterns whose failure
    depends on the text: the same order of search, the same early ABORT, so it fails
    ("LIKE pattern must not end with escape character", a ValueError) exactly where
    Postgres does, and otherwise answers as it does."""
    if depth > _MAX_LIKE_DEPTH:
        raise UnrepresentableValue("a LIKE pattern nested beyond what the engine follows")
    tlen, plen = len(t), len(p)
    while ti < tlen and pi < plen:
        tok = p[pi]
        if tok is _LONE_ESCAPE:
            raise ValueError("LIKE pattern must not end with escape character")
        if tok is _PERCENT:
            pi += 1
            while pi < plen:
                if p[pi] is _PERCENT:
                    pi += 1
                elif p[pi] is _UNDERSCORE:
                    if ti >= tlen:
                        return _LIKE_ABORT
                    ti += 1
                    pi += 1
                else:
                    break
            if pi >= plen:
                return _LIKE_TRUE
            first = p[pi]
            if first is _LONE_ESCAPE:
                raise ValueError("LIKE pattern must not end with escape character")
            while ti < tlen:
                if t[ti] == first:
                    matched = _match_text(t, p, ti, pi, depth + 1)
                    if matched != _LIKE_FALSE:
                        return matched
                ti += 1
            return _LIKE_ABORT
        if tok is not _UNDERSCORE and tok != t[ti]:
            return _LIKE_FALSE
        ti += 1
        pi += 1
    if ti < tlen:
        return _LIKE_FALSE
    while pi < plen and p[pi] is _PERCENT:
        pi += 1
    return _LIKE_TRUE if pi >= plen else _LIKE_ABORT


# --- case mapping ---------------------------------------------------------------------------

_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

# Simple (1:1) mappings that differ from "the full mapping when it is one character, else
# the character itself": Greek with ypogegrammeni uppercases to its titlecase form, and
# U+0130 (İ) lowercases to "i". Everything else follows Python's unicodedata.
_SIMPLE_UPPER_EXTRA = {
    **{0x1F80 + i: 0x1F88 + i for i in range(8)},
    **{0x1F90 + i: 0x1F98 + i for i in range(8)},
    **{0x1FA0 + i: 0x1FA8 + i for i in range(8)},
    0x1FB3: 0x1FBC,
    0x1FC3: 0x1FCC,
    0x1FF3: 0x1FFC,
}
_SIMPLE_LOWER_EXTRA = {0x130: 0x69}
_LAST_CASED = 0x20000  # no code point above has a case mapping (Unicode 15)


@functools.cache
def _unicode_tables() -> tuple[str, str]:
    """Upper and lower tables as strings indexed by code point (str.translate's fastest
    form: a C-level index; code points past the end are left as they are)."""
    upper, lower = [], []
    for cp in range(_LAST_CASED):
        ch = chr(cp)
        up, low = ch.upper(), ch.lower()
        upper.append(chr(_SIMPLE_UPPER_EXTRA.get(cp, ord(up) if len(up) == 1 else cp)))
        lower.append(chr(_SIMPLE_LOWER_EXTRA.get(cp, ord(low) if len(low) == 1 else cp)))
    return "".join(upper), "".join(lower)


def case_mapping(kind: str, which: str) -> Callable[[str], str]:
    """`upper` / `lower` per character, as Postgres's libc path does (towupper/towlower):
    `kind` "ascii" (C/POSIX ctype) or "unicode" (glibc C.UTF-8: Unicode simple mappings).
    ASCII text takes Python's own str.upper/lower, which map ASCII exactly so."""
    ascii_case = str.upper if which == "upper" else str.lower
    if kind == "ascii":
        table: Value = _ASCII_UPPER if which == "upper" else _ASCII_LOWER
    else:
        upper, lower = _unicode_tables()
        table = upper if which == "upper" else lower

    def mapped(text: str) -> str:
        return ascii_case(text) if text.isascii() else text.translate(table)

    return mapped
