"""Postgres text values as comparable Python values.

Replication rows and snapshot rows arrive as Postgres text output (produced under the
engine's session settings: DateStyle='ISO, DMY', TimeZone='UTC', IntervalStyle='iso_8601',
bytea_output='hex', extra_float_digits=1). The where-clause evaluator has to compare them
the way Postgres would, so each type gets a parser into a Python value whose `==`, `<` and
`hash` agree with Postgres's operators. The same parsers, in their lenient "input" flavour,
turn string literals and `params` of a where clause into values of a target type, with
Postgres-like error messages for bad input.

Two flavours per type (a `PgType`, see `types.py`):
- `output_parser(pg_type)`: fast, for text Postgres itself produced (trusted format);
- `input_parser(pg_type)`: Postgres input-function rules for the common forms,
  raising `ValueError('invalid input syntax for type integer: "abc"')` on bad input.
"""

from __future__ import annotations

import calendar
import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import total_ordering
from typing import Any

from .types import (
    BOOL,
    BPCHAR,
    BYTEA,
    CHAR,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    INTERVAL,
    JSON,
    JSONB,
    NAME,
    NUMERIC,
    OID,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UUID,
    VARCHAR,
    PgType,
)

Parser = Callable[[str], object]

Value = Any
"""A SQL value as the where evaluator holds it: int, float, Decimal, bool, str, bytes,
uuid.UUID, date / datetime / time (or `PgInfinity`, `EndOfDay`), `Interval`, a tuple for an
array (`Array`); None is SQL NULL. `Any` on purpose: the compiler picks every operation by
its operands' `PgType`, which a static union could not follow without a cast per operator."""

Array = tuple[Value, ...]
"""An array value: nested tuples, one level per dimension; None elements are NULL."""

USECS_PER_SEC = 1_000_000
USECS_PER_DAY = 86_400 * USECS_PER_SEC
DAYS_PER_MONTH = 30

INT_RANGES: dict[PgType, tuple[int, int]] = {
    INT2: (-(2**15), 2**15 - 1),
    INT4: (-(2**31), 2**31 - 1),
    INT8: (-(2**63), 2**63 - 1),
}


def input_name(pg_type: PgType) -> str:
    """The type as its input function names it in "invalid input syntax for type ...":
    timestamp_in says "timestamp" and time_in "time" (not "... without time zone")."""
    return {TIMESTAMP: "timestamp", TIME: "time"}.get(pg_type, pg_type.sql_name)


def invalid(pg_type: PgType, text: str) -> ValueError:
    """The ValueError Postgres's input functions raise, with Postgres's wording."""
    return ValueError(f'invalid input syntax for type {input_name(pg_type)}: "{text}"')


class UnrepresentableValue(ValueError):
    """A valid Postgres value Python's date/datetime cannot hold (BC, or past year 9999).

    Not a data error: Postgres accepts the value, so an evaluator meeting it cannot say
    what Postgres would answer. `Where.matches` lets it through instead of reading it as
    "no match", and the replicator asks Postgres about that row (`pg/row_where.py`).
    """


def unrepresentable(pg_type: PgType, text: str) -> UnrepresentableValue:
    return UnrepresentableValue(
        f'{pg_type.sql_name} value outside years 1-9999 is not supported: "{text}"'
    )


@total_ordering
class PgInfinity:
    """`infinity` / `-infinity` of date and timestamp types: beyond every finite value.

    Python's date/datetime cannot represent them; these sentinels compare correctly
    against any finite value (date/datetime defer to us via NotImplemented).
    """

    __slots__ = ("sign",)

    def __init__(self, sign: int) -> None:
        self.sign = sign

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PgInfinity) and other.sign == self.sign

    def __lt__(self, other: object) -> bool:
        if isinstance(other, PgInfinity):
            return self.sign < other.sign
        return self.sign < 0

    def __hash__(self) -> int:
        return hash(("pg-infinity", self.sign))

    def __repr__(self) -> str:
        return "PgInfinity(+1)" if self.sign > 0 else "PgInfinity(-1)"


INFINITY = PgInfinity(1)
NEG_INFINITY = PgInfinity(-1)


class EndOfDay(time):
    """The time `24:00:00`: valid in Postgres, beyond Python's `time`; sorts after every
    other time and equals only itself (as a `time`, it reads 23:59:59.999999)."""

    __slots__ = ()

    def __new__(cls) -> EndOfDay:
        return super().__new__(cls, 23, 59, 59, 999_999)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EndOfDay)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, EndOfDay)

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return isinstance(other, EndOfDay)

    def __gt__(self, other: object) -> bool:
        return not isinstance(other, EndOfDay)

    def __ge__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("24:00:00")

    def __repr__(self) -> str:
        return "EndOfDay()"


END_OF_DAY = EndOfDay()


@dataclass(frozen=True, slots=True, eq=False)
class Interval:
    """A Postgres interval: months, days and microseconds kept apart, as Postgres does.

    Equality, ordering and hashing go through the same "span" Postgres's interval_cmp
    uses (a month is 30 days, a day 24 hours), so '1 mon' = '30 days' like in SQL, while
    arithmetic with timestamps still sees the separate fields.
    """

    months: int
    days: int
    micros: int

    @property
    def span(self) -> int:
        return (self.months * DAYS_PER_MONTH + self.days) * USECS_PER_DAY + self.micros

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and self.span == other.span

    def __lt__(self, other: Interval) -> bool:
        return self.span < other.span

    def __le__(self, other: Interval) -> bool:
        return self.span <= other.span

    def __gt__(self, other: Interval) -> bool:
        return self.span > other.span

    def __ge__(self, other: Interval) -> bool:
        return self.span >= other.span

    def __hash__(self) -> int:
        return hash(self.span)


# --- integers, numbers, booleans ---------------------------------------------------------

#: The whitespace C's isspace() knows, which Postgres's input functions skip (boolin, ...):
#: ASCII only, unlike str.strip()'s (NBSP, U+2003, U+0085, \x1c-\x1f): '1\u00a0'::bool
#: fails in Postgres.
_C_SPACE = " \t\n\v\f\r"
_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_NUMERIC_RE = re.compile(
    r"\s*(?:[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:infinity|inf)|nan)\s*",
    re.ASCII | re.IGNORECASE,
)


def int_range_check(pg_type: PgType) -> Callable[[int], int]:
    """A function raising like Postgres when an integer does not fit `pg_type` (the range is
    looked up once, not per value: the checks run per replicated row)."""
    lo, hi = INT_RANGES[pg_type]
    message = f"{pg_type.sql_name} out of range"

    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(message)
        return value

    return check


def _int_input(pg_type: PgType) -> Parser:
    lo, hi = INT_RANGES[pg_type]

    def parse(text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise invalid(pg_type, text)
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f'value "{text}" is out of range for type {pg_type.sql_name}')
        return value

    return parse


#: numeric's exponent, read by strtol: C spaces and a sign may come before its digits
#: ('1e 5' and '1e\t-2' are numerics; floats read by strtod refuse them).
_NUMERIC_SPACED_EXPONENT = re.compile(r"([0-9.][eE])\s+(?=[+-]?[0-9])", re.ASCII)


def parse_numeric(text: str) -> Decimal:
    """numeric input: Decimal, with Postgres's NaN / Infinity spellings."""
    if not _NUMERIC_RE.fullmatch(text):
        spaced = _NUMERIC_SPACED_EXPONENT.sub(r"\1", text, count=1)
        if spaced == text or not _NUMERIC_RE.fullmatch(spaced):
            raise invalid(NUMERIC, text)
        text = spaced
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        raise invalid(NUMERIC, text) from None


def _float_input(pg_type: PgType, text: str) -> float:
    if not _NUMERIC_RE.fullmatch(text):
        raise invalid(pg_type, text)
    value = float(text)
    if (math.isinf(value) and "inf" not in text.lower()) or (
        value == 0.0 and Decimal(text.strip()) != 0
    ):
        raise ValueError(f'"{text}" is out of range for type {pg_type.sql_name}')
    return value


def parse_float8(text: str) -> float:
    """float8 input: like strtod, with Postgres's out-of-range errors (1e400, 1e-400)."""
    return _float_input(FLOAT8, text)


def round_float4(value: float, *, check: bool = True) -> float:
    """Round a double to the nearest float4, so float4 values compare like in Postgres.

    With `check`, a finite value beyond float4's range is an overflow error; without it,
    it becomes an infinity (the caller applies Postgres's own overflow rule)."""
    try:
        narrowed = float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        narrowed = math.copysign(math.inf, value)
    if check and math.isinf(narrowed) and not math.isinf(value):
        raise ValueError("value out of range: overflow")
    return narrowed


_F4_BITS = struct.Struct("<I")
_F4 = struct.Struct("<f")
_F4_LIMIT = 2.0**128  # (where float4's next value after its largest would be: infinity)


def _float4_at(bits: int) -> float:
    value = float(_F4.unpack(_F4_BITS.pack(bits))[0])
    return _F4_LIMIT if math.isinf(value) else value


def narrow_exactly(value: float, exact: Decimal | int) -> float:
    """`exact` (a finite number; `value` the double nearest it) rounded once to the nearest
    float4, as strtof and C's (float) of an int64 round it: an infinity beyond float4's
    range. Rounding the double instead rounds twice, which is wrong where the double falls
    on a midpoint between two float4s that `exact` is not: '1.000000059604644775390625001'
    ::float4 is 1.0000001 in Postgres, 1 by way of the double (so is 2^60 + 2^36 + 1 as
    int8::float4)."""
    narrowed = round_float4(value, check=False)
    if narrowed == value or math.isnan(value) or math.isinf(value):
        return narrowed
    size = abs(value)
    near = abs(narrowed)
    bits = _F4_BITS.unpack(_F4.pack(near))[0] if not math.isinf(near) else 0x7F800000
    lo, hi = (bits, bits + 1) if near < size else (bits - 1, bits)
    low, high = _float4_at(lo), _float4_at(hi)
    middle = (low + high) / 2  # (exact: both have 24 significant bits)
    if size != middle:
        return narrowed  # (the double rounds to float4 as `exact` does)
    exact_size = Decimal(exact).copy_abs()  # (abs() rounds to the context's 28 digits)
    if exact_size == Decimal(middle):
        return narrowed  # (a true tie: to even, as the double's rounding did)
    result = high if exact_size > Decimal(middle) else low
    result = math.inf if result == _F4_LIMIT else result
    return math.copysign(result, value)


def parse_float4(text: str) -> float:
    """float4 input (strtof): out of range when it rounds to 0 or beyond float4's range."""
    value = _float_input(FLOAT4, text)
    narrowed = (
        narrow_exactly(value, Decimal(text.strip(_C_SPACE))) if math.isfinite(value) else value
    )
    if (math.isinf(narrowed) and not math.isinf(value)) or (narrowed == 0.0 and value != 0.0):
        raise ValueError(f'"{text}" is out of range for type real')
    return narrowed


def _float4_output(text: str) -> float:
    return round_float4(float(text))


_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def parse_bool(text: str) -> bool:
    """bool input: t/true/y/yes/on/1 and f/false/n/no/off/0, any case, unique prefixes."""
    word = text.strip(_C_SPACE).lower()
    if word:
        if word == "o":  # ambiguous between on and off
            raise invalid(BOOL, text)
        if any(w.startswith(word) for w in _TRUE_WORDS):
            return True
        if any(w.startswith(word) for w in _FALSE_WORDS):
            return False
    raise invalid(BOOL, text)


def _bool_output(text: str) -> bool:
    # pgoutput and concat() give 't'; a `::text` cast gives 'true'.
    return text == "t" or text == "true"


# --- strings, uuid, bytea -----------------------------------------------------------------


def _identity(text: str) -> str:
    return text


identity = _identity
"""The parser of types whose text is their value (callers may skip calling it)."""


def _bpchar(text: str) -> str:
    """char(n) compares ignoring trailing spaces, and casts to text without them."""
    return text.rstrip(" ")


_UUID_RE = re.compile(r"\{?(?:[0-9a-fA-F]{4}-?){7}[0-9a-fA-F]{4}\}?", re.ASCII)


def parse_uuid(text: str) -> uuid.UUID:
    """uuid input: canonical form, upper case, braces, or hyphens between 4-digit groups."""
    if not _UUID_RE.fullmatch(text) or text.startswith("{") != text.endswith("}"):
        raise invalid(UUID, text)
    return uuid.UUID(text.strip("{}").replace("-", ""))


def _uuid_output(text: str) -> uuid.UUID:
    return uuid.UUID(text)


#: What byteain's hex format skips between digit pairs (hex_decode): not \v or \f, which
#: Python's bytes.fromhex skips too ('\\x01\\v02'::bytea is an error in Postgres).
_HEX_SPACE = frozenset(" \n\t\r")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _hex_decode(digits: str) -> bytes:
    """byteain's hex format, with hex_decode's errors in Postgres's words."""
    out = bytearray()
    i, n = 0, len(digits)
    while i < n:
        ch = digits[i]
        if ch in _HEX_SPACE:
            i += 1
            continue
        if ch not in _HEX_DIGITS:
            raise ValueError(f'invalid hexadecimal digit: "{ch}"')
        if i + 1 >= n:
            raise ValueError("invalid hexadecimal data: odd number of digits")
        low = digits[i + 1]
        if low not in _HEX_DIGITS:
            raise ValueError(f'invalid hexadecimal digit: "{low}"')
        out.append(int(ch + low, 16))
        i += 2
    return bytes(out)


def parse_bytea(text: str) -> bytes:
    """bytea input: hex (`\\x0102`) or escape format (`ab\\000\\\\`), failing as byteain
    does ("invalid hexadecimal data: odd number of digits", "invalid hexadecimal digit: "g"",
    and for the escape format "invalid input syntax for type bytea", without the value)."""
    if text.startswith("\\x"):
        return _hex_decode(text[2:])
    out = bytearray()
    i = 0
    raw = text.encode()
    while i < len(raw):
        ch = raw[i]
        if ch != 0x5C:
            out.append(ch)
            i += 1
        elif raw[i + 1 : i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        elif re.fullmatch(rb"[0-3][0-7][0-7]", raw[i + 1 : i + 4]):
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            raise ValueError("invalid input syntax for type bytea")
    return bytes(out)


def _bytea_output(text: str) -> bytes:
    return bytes.fromhex(text[2:])


# --- dates and times ----------------------------------------------------------------------

_SPECIAL_TIMES = {"infinity": INFINITY, "+infinity": INFINITY, "-infinity": NEG_INFINITY}
_DATE_ISO_RE = re.compile(r"(\d{4,})-(\d{1,2})-(\d{1,2})", re.ASCII)
_DATE_DMY_RE = re.compile(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4,})", re.ASCII)
_DATE_COMPACT_RE = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?", re.ASCII)
# A trailing zone offset, as Postgres's DecodeTimezone reads it: a sign, digits, then
# `:minutes` and `:seconds` each of any number of digits; digits run together (`+0530`) are
# hours and minutes (never seconds). One regex finds and reads it (two had disagreed: an
# offset found but not read, `+155959`, failed an assert, a 500).
# The zone words in any case ('utc', 'z'): Postgres's ParseDateTime lowers a literal's
# words before reading them.
_TZ_RE = re.compile(r"\s*(([+-])(\d+)(?::(\d+)(?::(\d+))?)?|(?i:Z|UTC|GMT))$", re.ASCII)
_ISO_T = re.compile(r"(?<=\d)[Tt](?=\d)", re.ASCII)
_MAX_TZ_DIGITS = 9
"""More digits than this overflow Postgres's strtoint (ERANGE: out of range there too)."""


def _date_from_parts(pg_type: PgType, text: str, y: str, m: str, d: str) -> date:
    if len(y.lstrip("0")) > 4:  # (past C long, or 4,300 digits: int() and date() raise)
        raise unrepresentable(pg_type, text)
    try:
        return date(int(y), int(m), int(d))
    except ValueError:
        if int(y) > 9999:
            raise unrepresentable(pg_type, text) from None
        raise ValueError(f'date/time field value out of range: "{text}"') from None


def _parse_date_part(pg_type: PgType, text: str, part: str) -> date:
    for regex, order in ((_DATE_ISO_RE, (1, 2, 3)), (_DATE_DMY_RE, (3, 2, 1))):
        m = regex.fullmatch(part)
        if m:
            return _date_from_parts(pg_type, text, *(m.group(i) for i in order))
    m = _DATE_COMPACT_RE.fullmatch(part)
    if m:
        return _date_from_parts(pg_type, text, m.group(1), m.group(2), m.group(3))
    raise invalid(pg_type, text)


def _micros_from_fraction(frac: str | None) -> int:
    if not frac:
        return 0
    # Postgres rounds to microseconds; half-up on the 7th digit is close enough here.
    return round(int(frac[:7].ljust(7, "0")) / 10)


def _parse_time_part(pg_type: PgType, text: str, part: str) -> time:
    m = _TIME_RE.fullmatch(part)
    if not m:
        raise invalid(pg_type, text)
    hh, mm, ss = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    micros = _micros_from_fraction(m.group(4))
    if pg_type == TIME and (hh, mm, ss, micros) == (24, 0, 0, 0):
        return END_OF_DAY
    if micros == USECS_PER_SEC:
        ss, micros = ss + 1, 0
    try:
        return time(hh, mm, ss, micros)
    except ValueError:
        raise ValueError(f'date/time field value out of range: "{text}"') from None


def _split_tz(part: str) -> tuple[str, timezone | None]:
    """Split a trailing zone offset (`+02`, `-05:30`, `+0530`, `Z`, `UTC`) off a time
    string, read as Postgres's DecodeTimezone reads it. An offset past its bounds (hours
    past 15, minutes or seconds past 59: `+16`, `+15:60`, `+155959`, which is 1559 hours
    and 59 minutes) is refused as Postgres refuses it when it reads the literal."""
    m = _TZ_RE.search(part)
    if not m or m.start(1) == 0:
        return part, None
    rest = part[: m.start()].rstrip()
    if m.group(2) is None:
        return rest, UTC
    digits, minutes_text, seconds_text = m.group(3), m.group(4), m.group(5)
    out_of_range = ValueError(f'time zone displacement out of range: "{part.strip()}"')
    parts = (digits, minutes_text, seconds_text)
    if any(len((x or "").lstrip("0")) > _MAX_TZ_DIGITS for x in parts):
        raise out_of_range
    hours, minutes, seconds = int(digits), int(minutes_text or 0), int(seconds_text or 0)
    if minutes_text is None and len(digits) > 2:
        hours, minutes = divmod(hours, 100)  # (run together: `+0530`, `+123` is 1:23)
    if hours > 15 or minutes > 59 or seconds > 59:
        # (DecodeTimezone's bounds, MAX_TZDISP_HOUR: Postgres refuses `+16` when it reads
        # the literal; read here, the snapshot's failure blamed the table's rows)
        raise out_of_range
    offset = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    return rest, timezone((-1 if m.group(2) == "-" else 1) * offset)


def parse_date(text: str) -> date | PgInfinity:
    """date input: ISO `2024-01-31`, DMY `31/01/2024`, `20240131`, +/-infinity."""
    s = text.strip().lower()
    if s in _SPECIAL_TIMES:
        return _SPECIAL_TIMES[s]
    if s.endswith(" bc"):
        raise unrepresentable(DATE, text)
    if " " in s or "t" in s:
        # A time and a zone may follow (`2024-01-01 12:00`, `2024-01-01 +0530`,
        # `2024-01-01T23:00-05`): Postgres's date_in reads them as a timestamp's and keeps
        # the date as written (no zone conversion); a bad time or zone fails it alike.
        value, _tz = _parse_timestamp(DATE, text)
        return value.date() if isinstance(value, datetime) else value
    return _parse_date_part(DATE, text, s)


def _parse_timestamp(pg_type: PgType, text: str) -> tuple[datetime | PgInfinity, timezone | None]:
    s = text.strip()
    low = s.lower()
    if low in _SPECIAL_TIMES:
        return _SPECIAL_TIMES[low], None
    if low.endswith(" bc"):
        raise unrepresentable(pg_type, text)
    # (the 'T' of ISO 8601 between the date and the time: not the T of a 'UTC' after them)
    date_part, sep, time_part = _ISO_T.sub(" ", s, count=1).partition(" ")
    d = _parse_date_part(pg_type, text, date_part)
    tz: timezone | None = None
    t = time(0)
    if sep:
        # (a zone alone after the date, `2024-01-01 +0530`, is a zone: the space keeps
        # `_split_tz` from reading a leading sign as the time's own)
        time_part, tz = _split_tz(" " + time_part.strip())
        time_part = time_part.strip()
        if time_part:
            t = _parse_time_part(pg_type, text, time_part)
    return datetime.combine(d, t), tz


def parse_timestamp(text: str) -> datetime | PgInfinity:
    """timestamp input: a zone offset, if given, is ignored (as Postgres does)."""
    value, _tz = _parse_timestamp(TIMESTAMP, text)
    return value


def parse_timestamptz(text: str) -> datetime | PgInfinity:
    """timestamptz input: no offset means the session zone, which is UTC for the engine."""
    value, tz = _parse_timestamp(TIMESTAMPTZ, text)
    if isinstance(value, PgInfinity):
        return value
    return value.replace(tzinfo=tz or UTC)


def parse_time(text: str) -> time:
    """time input: `HH:MM[:SS[.ffffff]]`; a zone offset is ignored like Postgres does."""
    part, _tz = _split_tz(text.strip())
    return _parse_time_part(TIME, text, part)


def _timestamp_output(text: str) -> datetime | PgInfinity:
    if text[0] in "i-":
        return _SPECIAL_TIMES[text]
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # Postgres's own output: only BC or a year past 9999 fails here
        raise unrepresentable(TIMESTAMP, text) from None


def _timestamptz_output(text: str) -> datetime | PgInfinity:
    if text[0] in "i-":
        return _SPECIAL_TIMES[text]
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise unrepresentable(TIMESTAMPTZ, text) from None


def _date_output(text: str) -> date | PgInfinity:
    if text[0] in "i-":
        return _SPECIAL_TIMES[text]
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise unrepresentable(DATE, text) from None


def _time_output(text: str) -> time:
    if text.startswith("24:"):
        return END_OF_DAY
    return time.fromisoformat(text)


# --- intervals ----------------------------------------------------------------------------

_ISO_INTERVAL_RE = re.compile(
    r"(-)?P(?:([+-]?\d+(?:\.\d+)?)Y)?(?:([+-]?\d+(?:\.\d+)?)M)?(?:([+-]?\d+(?:\.\d+)?)W)?"
    r"(?:([+-]?\d+(?:\.\d+)?)D)?(?:T(?:([+-]?\d+(?:\.\d+)?)H)?(?:([+-]?\d+(?:\.\d+)?)M)?"
    r"(?:([+-]?\d+(?:\.\d+)?)S)?)?",
    re.ASCII,
)

_UNIT_MICROS: dict[str, tuple[str, float]] = {}
for _names, _field, _factor in (
    (("microsecond", "microseconds", "us", "usec", "usecs"), "micros", 1),
    (("millisecond", "milliseconds", "ms", "msec", "msecs"), "micros", 1000),
    (("second", "seconds", "s", "sec", "secs"), "micros", USECS_PER_SEC),
    (("minute", "minutes", "m", "min", "mins"), "micros", 60 * USECS_PER_SEC),
    (("hour", "hours", "h", "hr", "hrs"), "micros", 3600 * USECS_PER_SEC),
    (("day", "days", "d"), "days", 1),
    (("week", "weeks", "w"), "days", 7),
    (("month", "months", "mon", "mons"), "months", 1),
    (("year", "years", "y", "yr", "yrs"), "months", 12),
    (("decade", "decades"), "months", 120),
    (("century", "centuries"), "months", 1200),
    (("millennium", "millennia"), "months", 12000),
):
    for _n in _names:
        _UNIT_MICROS[_n] = (_field, _factor)

#: The fields each unit sets, as DecodeInterval's masks: a field given twice ('1 day 1
#: day', '1 hour 02:00:00') is "invalid input syntax". Seconds with a fraction, and a time
#: `hh:mm[:ss]`, count as milli- and microseconds too (DTK_ALL_SECS_M, DTK_TIME_M).
_UNIT_FIELD = {
    n: n2
    for names, n2 in (
        (("microsecond", "microseconds", "us", "usec", "usecs"), "microsecond"),
        (("millisecond", "milliseconds", "ms", "msec", "msecs"), "millisecond"),
        (("second", "seconds", "s", "sec", "secs"), "second"),
        (("minute", "minutes", "m", "min", "mins"), "minute"),
        (("hour", "hours", "h", "hr", "hrs"), "hour"),
        (("day", "days", "d"), "day"),
        (("week", "weeks", "w"), "week"),
        (("month", "months", "mon", "mons"), "month"),
        (("year", "years", "y", "yr", "yrs"), "year"),
        (("decade", "decades"), "decade"),
        (("century", "centuries"), "century"),
        (("millennium", "millennia"), "millennium"),
    )
    for n in names
}
_ALL_SECONDS = frozenset({"second", "millisecond", "microsecond"})
_TIME_FIELDS = frozenset({"hour", "minute"}) | _ALL_SECONDS


def _interval_fields(unit: str, number: str) -> frozenset[str]:
    field = _UNIT_FIELD[unit]
    if field == "second" and "." in number and float(number) != int(float(number)):
        return _ALL_SECONDS
    return frozenset({field})


_VERBOSE_TOKEN_RE = re.compile(
    r"([+-]?\d+(?:\.\d+)?)\s*([a-z]+)|([+-])?(\d+):(\d{1,2})(?::(\d{1,2})(?:\.(\d+))?)?|(\S+)",
    re.ASCII,
)


def _add_fraction(acc: list[float], field: str, amount: float) -> None:
    """Spill fractional months into days and fractional days into time, like Postgres."""
    if field == "months":
        whole = int(amount)
        acc[0] += whole
        amount = (amount - whole) * DAYS_PER_MONTH
        field = "days"
    if field == "days":
        whole = int(amount)
        acc[1] += whole
        acc[2] += round((amount - whole) * USECS_PER_DAY)
        return
    acc[2] += round(amount)


def _iso_interval(text: str, m: re.Match[str]) -> Interval:
    acc: list[float] = [0, 0, 0]
    units = (
        ("months", 12), ("months", 1), ("days", 7), ("days", 1),
        ("micros", 3600 * USECS_PER_SEC), ("micros", 60 * USECS_PER_SEC),
        ("micros", USECS_PER_SEC),
    )  # fmt: skip
    sign = -1 if m.group(1) else 1
    for group, (field, factor) in enumerate(units, start=2):
        if m.group(group) is not None:
            _add_fraction(acc, field, sign * float(m.group(group)) * factor)
    return Interval(int(acc[0]), int(acc[1]), int(acc[2]))


def parse_interval(text: str) -> Interval:
    """interval input: ISO 8601 (`P1DT2H`, Postgres's output here) or `1 day 02:00:00`,
    `-2 hours 30 minutes`, `3 mons ago`, `@ 1 day`."""
    s = text.strip()
    m = _ISO_INTERVAL_RE.fullmatch(s)
    if m and s not in ("P", "-P") and not s.endswith("T"):
        if s != text:
            # (DecodeISO8601Interval reads the text as given: a space before or after is
            # "invalid input syntax", where the engine read it; wherefuzz 11:00)
            raise invalid(INTERVAL, text)
        return _iso_interval(text, m)
    s = s.lower().removeprefix("@").strip()
    ago = s.endswith(" ago") or s == "ago"
    if ago:
        s = s[:-3].strip()
    if not s:
        raise invalid(INTERVAL, text)
    acc: list[float] = [0, 0, 0]
    given: set[str] = set()  # (the fields given so far: `_UNIT_FIELD`)

    def once(fields: frozenset[str]) -> None:
        if given & fields:
            raise invalid(INTERVAL, text)
        given.update(fields)

    tokens = list(_VERBOSE_TOKEN_RE.finditer(s))
    spills = timed = False
    for tok in tokens:
        if tok.group(1) is not None:
            unit = _UNIT_MICROS.get(tok.group(2))
            if unit is None:
                raise invalid(INTERVAL, text)
            once(_interval_fields(tok.group(2), tok.group(1)))
            spills = spills or (unit[0] != "micros" and "." in tok.group(1))
            _add_fraction(acc, unit[0], float(tok.group(1)) * unit[1])
        elif tok.group(5) is not None:
            once(_TIME_FIELDS)
            timed = True
            sign = -1 if tok.group(3) == "-" else 1
            micros = (
                int(tok.group(4)) * 3600 + int(tok.group(5)) * 60 + int(tok.group(6) or 0)
            ) * USECS_PER_SEC + _micros_from_fraction(tok.group(7))
            acc[2] += sign * micros
        else:
            word = tok.group(8)
            if re.fullmatch(r"[+-]?\d+(?:\.\d+)?", word):
                if len(tokens) > 1:
                    # (DecodeInterval gives a number without a unit the unit of what
                    # follows it, or days before a time: '8 3 hours' is 8 days 3 hours,
                    # '8 1 day' an error; alone, it is seconds)
                    raise ValueError(
                        f'interval literal "{text}" is not supported here: give each number'
                        " its unit"
                    )
                once(_interval_fields("second", word))
                _add_fraction(acc, "micros", float(word) * USECS_PER_SEC)
            else:
                raise invalid(INTERVAL, text)
    if spills and timed:
        # (a time field sets the time where a fraction of a day, week, month or year went
        # before it: '02:00:00 1.5 days' is 1 day 02:00 in Postgres)
        raise ValueError(
            f'interval literal "{text}" is not supported here: a fraction of a day or more'
            " beside a time of day"
        )
    factor = -1 if ago else 1
    return Interval(factor * int(acc[0]), factor * int(acc[1]), factor * int(acc[2]))


# --- arrays -------------------------------------------------------------------------------


#: The whitespace array_in skips and trims (scanner_isspace): ASCII only. An element
#: holding another space (NBSP, say) is printed unquoted and read with it.
_ARRAY_SPACE = " \t\n\r\v\f"


def parse_array(text: str, element: Parser, pg_type: PgType | None = None) -> tuple[object, ...]:
    """Array literal (`{1,2,NULL}`, `{"a b","c\\"d"}`, `{{1,2},{3,4}}`) to nested tuples, as
    Postgres 15's array_in reads it (ArrayCount, then ReadArrayStr: `_array_count`,
    `_read_array_items`), quirks included: `{a"b"}` and `{"a"b}` are malformed, an escaped
    space is kept (`{a\\ }` is 'a '), an item with any quoting or escape is never NULL
    (`{NU\\LL}` is 'NULL'), and sub-arrays of unequal depth are placed as Postgres places
    them (`{{a},{{b}}}` is `{{{a}},{{b}}}`; `{{{a}},{b}}` is empty).

    Elements are parsed with `element`; a NULL item is None. A leading dimension
    decoration (`[0:1]={...}`) is accepted and dropped. `pg_type` names the array type in
    the message for a malformed decoration.
    """
    s = text.strip(_ARRAY_SPACE)
    if s.startswith("["):
        eq = s.find("=")
        if eq < 0:
            name = pg_type.sql_name if pg_type is not None else "array"
            raise ValueError(f'invalid input syntax for type {name}: "{text}"')
        s = s[eq + 1 :].strip(_ARRAY_SPACE)
    if not s.startswith("{"):
        raise ValueError(f'malformed array literal: "{text}"')
    if s == "{}":
        return ()
    flat = _simple_items(s)
    if flat is not None:  # (a one-dimensional array of plain items: the common case)
        return tuple(None if item is None else element(item) for item in flat)
    dims = _array_count(s, text)
    if not dims or 0 in dims:
        return ()
    nitems = 1
    for d in dims:
        nitems *= d
    flat = _read_array_items(s, dims, nitems, text)
    values = [None if item is None else element(item) for item in flat]
    return _nest(values, dims)


_ITEM_SPACE = "[ \t\n\r\v\f]"
_QUOTED = rf'{_ITEM_SPACE}*"((?:[^"\\]|\\.)*)"{_ITEM_SPACE}*'
#: A one-dimensional literal of quoted items and unquoted ones with no quote or backslash
#: (`{1,2}`, `{"a b",NULL}`): what array_out prints for a one-dimensional array.
_SIMPLE = re.compile(
    rf'\{{(?:(?:{_QUOTED}|[^"\\{{}},]+),)*(?:{_QUOTED}|[^"\\{{}},]+)\}}', re.DOTALL
)
_SIMPLE_ITEM = re.compile(rf'(?:{_QUOTED}|([^"\\{{}},]+))[,}}]', re.DOTALL)
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def _simple_items(s: str) -> list[str | None] | None:
    """The items of `s` when it is a one-dimensional literal of plain items (as
    `_read_array_items` would give them), else None (`_array_count` must tell)."""
    if _SIMPLE.fullmatch(s) is None:
        return None
    items: list[str | None] = []
    for m in _SIMPLE_ITEM.finditer(s, 1):
        quoted, plain = m.group(1), m.group(2)
        if quoted is not None:
            items.append(_ESCAPED.sub(r"\1", quoted) if "\\" in quoted else quoted)
            continue
        word = plain.strip(_ARRAY_SPACE)
        if not word:  # `{a,,b}`, `{ }`: for the full reader
            return None
        items.append(None if word.upper() == "NULL" else word)
    return items


#: Array nesting Postgres allows (MAXDIM).
_MAXDIM = 6

# ArrayCount's parse states, and the states each character may follow
_NO_LEVEL, _LEVEL_STARTED, _ELEM_STARTED, _ELEM_COMPLETED = 0, 1, 2, 3
_QUOTED_ELEM_STARTED, _QUOTED_ELEM_COMPLETED, _ELEM_DELIMITED = 4, 5, 6
_LEVEL_COMPLETED, _LEVEL_DELIMITED = 7, 8
_BACKSLASH_AFTER = frozenset({_LEVEL_STARTED, _ELEM_STARTED, _QUOTED_ELEM_STARTED, _ELEM_DELIMITED})
_QUOTE_AFTER = frozenset({_LEVEL_STARTED, _QUOTED_ELEM_STARTED, _ELEM_DELIMITED})
_OPEN_AFTER = frozenset({_NO_LEVEL, _LEVEL_STARTED, _LEVEL_DELIMITED})
_CLOSE_AFTER = frozenset({_ELEM_STARTED, _ELEM_COMPLETED, _QUOTED_ELEM_COMPLETED, _LEVEL_COMPLETED})
_CHAR_AFTER = frozenset({_LEVEL_STARTED, _ELEM_STARTED, _ELEM_DELIMITED})


def _array_count(s: str, text: str) -> list[int]:
    """Postgres 15's ArrayCount: check the literal's syntax and return its dimensions
    (empty for an empty array)."""
    malformed = ValueError(f'malformed array literal: "{text}"')
    nest_level = 0
    ndim = 1
    temp = [0] * _MAXDIM
    nelems = [1] * _MAXDIM
    nelems_last = [0] * _MAXDIM
    in_quotes = False
    empty_array = True
    state = _NO_LEVEL
    n = len(s)
    i = 0
    eo_array = False
    while not eo_array:
        item_done = False
        while not item_done:
            if state in (_ELEM_STARTED, _QUOTED_ELEM_STARTED):
                empty_array = False
            if i >= n:
                raise malformed
            c = s[i]
            if c == "\\":
                if state not in _BACKSLASH_AFTER:
                    raise malformed
                if state != _QUOTED_ELEM_STARTED:
                    state = _ELEM_STARTED
                if i + 1 < n:
                    i += 1
                else:
                    raise malformed
            elif c == '"':
                if state not in _QUOTE_AFTER:
                    raise malformed
                in_quotes = not in_quotes
                state = _QUOTED_ELEM_STARTED if in_quotes else _QUOTED_ELEM_COMPLETED
            elif c == "{" and not in_quotes:
                if state not in _OPEN_AFTER:
                    raise malformed
                state = _LEVEL_STARTED
                if nest_level >= _MAXDIM:
                    raise ValueError(
                        f"number of array dimensions ({nest_level + 1}) exceeds the maximum"
                        f" allowed ({_MAXDIM})"
                    )
                temp[nest_level] = 0
                nest_level += 1
                ndim = max(ndim, nest_level)
            elif c == "}" and not in_quotes:
                if state not in _CLOSE_AFTER and not (nest_level == 1 and state == _LEVEL_STARTED):
                    raise malformed
                state = _LEVEL_COMPLETED
                if nest_level == 0:
                    raise malformed
                nest_level -= 1
                if nelems_last[nest_level] != 0 and nelems[nest_level] != nelems_last[nest_level]:
                    raise malformed
                nelems_last[nest_level] = nelems[nest_level]
                nelems[nest_level] = 1
                if nest_level == 0:
                    eo_array = item_done = True
                else:
                    temp[nest_level - 1] += 1
            elif not in_quotes and c not in "{}":
                if c == ",":
                    if state not in _CLOSE_AFTER:
                        raise malformed
                    state = _LEVEL_DELIMITED if state == _LEVEL_COMPLETED else _ELEM_DELIMITED
                    item_done = True
                    nelems[nest_level - 1] += 1
                elif c not in _ARRAY_SPACE:
                    if state not in _CHAR_AFTER:
                        raise malformed
                    state = _ELEM_STARTED
            if not item_done:
                i += 1
        temp[ndim - 1] += 1
        i += 1
    if s[i:].strip(_ARRAY_SPACE):  # junk after the closing brace
        raise malformed
    if empty_array:
        return []
    return temp[:ndim]


def _read_array_items(s: str, dims: list[int], nitems: int, text: str) -> list[str | None]:
    """Postgres 15's ReadArrayStr: each item's text in row-major order (None: NULL; an
    item the literal never fills stays NULL)."""
    malformed = ValueError(f'malformed array literal: "{text}"')
    ndim = len(dims)
    prod = [1] * ndim
    for k in range(ndim - 2, -1, -1):
        prod[k] = prod[k + 1] * dims[k + 1]
    indx = [0] * ndim
    items: list[str | None] = [None] * nitems
    in_quotes = False
    eo_array = False
    nest_level = 0
    n = len(s)
    src = 0
    while not eo_array:
        item_done = False
        leading_space = True
        has_quoting = False
        buf: list[str] = []
        end = 0
        at = -1
        while not item_done:
            if src >= n:
                raise malformed
            c = s[src]
            if c == "\\":
                src += 1
                if src >= n:
                    raise malformed
                buf.append(s[src])
                src += 1
                leading_space = False
                end = len(buf)
                has_quoting = True
            elif c == '"':
                in_quotes = not in_quotes
                if in_quotes:
                    leading_space = False
                else:
                    end = len(buf)
                has_quoting = True
                src += 1
            elif c == "{" and not in_quotes:
                if nest_level >= ndim:
                    raise malformed
                nest_level += 1
                indx[nest_level - 1] = 0
                src += 1
            elif c == "}" and not in_quotes:
                if nest_level == 0:
                    raise malformed
                if at == -1:
                    at = sum(x * p for x, p in zip(indx, prod, strict=True))
                indx[nest_level - 1] = 0
                nest_level -= 1
                if nest_level == 0:
                    eo_array = item_done = True
                else:
                    indx[nest_level - 1] += 1
                src += 1
            elif in_quotes:
                buf.append(c)
                src += 1
            elif c == ",":
                if at == -1:
                    at = sum(x * p for x, p in zip(indx, prod, strict=True))
                item_done = True
                indx[ndim - 1] += 1
                src += 1
            elif c in _ARRAY_SPACE:
                if not leading_space:
                    buf.append(c)
                src += 1
            else:
                buf.append(c)
                src += 1
                leading_space = False
                end = len(buf)
        if at < 0 or at >= nitems:
            raise malformed
        item = "".join(buf[:end])
        items[at] = None if not has_quoting and item.upper() == "NULL" else item
    return items


def _nest(values: list[object], dims: list[int]) -> tuple[object, ...]:
    if len(dims) == 1:
        return tuple(values)
    step = len(values) // dims[0]
    return tuple(_nest(values[k * step : (k + 1) * step], dims[1:]) for k in range(dims[0]))


# --- registry -----------------------------------------------------------------------------

_OUTPUT_PARSERS: dict[PgType, Parser] = {
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    NUMERIC: Decimal,
    FLOAT4: _float4_output,
    FLOAT8: float,
    BOOL: _bool_output,
    TEXT: _identity,
    VARCHAR: _identity,
    NAME: _identity,
    BPCHAR: _bpchar,
    CHAR: _identity,
    UUID: _uuid_output,
    DATE: _date_output,
    TIMESTAMP: _timestamp_output,
    TIMESTAMPTZ: _timestamptz_output,
    TIME: _time_output,
    INTERVAL: parse_interval,
    BYTEA: _bytea_output,
    JSON: _identity,
    JSONB: _identity,
}

#: A space C's isspace() does not know (NBSP, U+2003, U+0085, \x1c-\x1f): in a date, time or
#: interval Postgres's ParseDateTime meets it as a character of no field and fails ('invalid
#: input syntax for type date: "2024-01-01\u00a0"'), where str.strip() and \s took it for a
#: space and the engine accepted the literal (its snapshot then failed: a 200 no client
#: could use).
_NON_C_SPACE = re.compile(r"[^\S \t\n\v\f\r]")


def has_non_c_space(text: str) -> bool:
    """Whether `text` holds a space C's isspace() does not know (see _NON_C_SPACE)."""
    return _NON_C_SPACE.search(text) is not None


def c_spaces_only(pg_type: PgType, parse: Parser) -> Parser:
    """`parse`, failing as Postgres's date and time input does on a non-ASCII space."""

    name = input_name(pg_type)

    def parse_strict(text: str) -> object:
        if _NON_C_SPACE.search(text):
            raise ValueError(f'invalid input syntax for type {name}: "{text}"')
        return parse(text)

    return parse_strict


_INPUT_PARSERS: dict[PgType, Parser] = {
    INT2: _int_input(INT2),
    INT4: _int_input(INT4),
    INT8: _int_input(INT8),
    NUMERIC: parse_numeric,
    FLOAT4: parse_float4,
    FLOAT8: parse_float8,
    BOOL: parse_bool,
    TEXT: _identity,
    VARCHAR: _identity,
    NAME: _identity,
    BPCHAR: _bpchar,
    CHAR: _identity,
    UUID: parse_uuid,
    DATE: c_spaces_only(DATE, parse_date),
    TIMESTAMP: c_spaces_only(TIMESTAMP, parse_timestamp),
    TIMESTAMPTZ: c_spaces_only(TIMESTAMPTZ, parse_timestamptz),
    TIME: c_spaces_only(TIME, parse_time),
    INTERVAL: c_spaces_only(INTERVAL, parse_interval),
    BYTEA: parse_bytea,
    JSON: _identity,
    JSONB: _identity,
}


def _array_of(element: Parser, pg_type: PgType) -> Parser:
    def parse(text: str) -> tuple[object, ...]:
        return parse_array(text, element, pg_type)

    return parse


def output_parser(pg_type: PgType) -> Parser:
    """Parser for Postgres's own text output of `pg_type`.

    Enums (and scalar types without a parser here: domains, composites, ...) are kept as
    their text; arrays become nested tuples of their elements' values.
    """
    scalar: Parser
    if pg_type.enum:
        scalar = _identity
    else:
        scalar = _OUTPUT_PARSERS.get(pg_type.element, _identity)
    return _array_of(scalar, pg_type) if pg_type.array else scalar


def input_parser(pg_type: PgType) -> Parser:
    """Parser applying Postgres's input rules for `pg_type`; raises ValueError."""
    if pg_type.array:
        scalar = _identity if pg_type.enum else _INPUT_PARSERS.get(pg_type.element, _identity)
        return _array_of(scalar, pg_type)
    if pg_type.enum:
        return _identity
    try:
        return _INPUT_PARSERS[pg_type]
    except KeyError:
        raise ValueError(f"unsupported type {pg_type.name}") from None


def parse_output(pg_type: PgType, text: str | None) -> object:
    """Parse one value of Postgres text output; None (SQL NULL) stays None."""
    return None if text is None else output_parser(pg_type)(text)


def parse_input(pg_type: PgType, text: str) -> object:
    """Parse a literal for `pg_type` with Postgres's input rules (ValueError if invalid)."""
    return input_parser(pg_type)(text)


def add_months(value: datetime | date, months: int) -> datetime | date:
    """Add calendar months, clamping the day to the month's end like Postgres."""
    total = value.year * 12 + value.month - 1 + months
    year, month = divmod(total, 12)
    day = min(value.day, calendar.monthrange(year, month + 1)[1])
    return value.replace(year=year, month=month + 1, day=day)
