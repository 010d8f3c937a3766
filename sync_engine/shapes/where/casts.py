"""The implicit and explicit conversions between scalar types.

`IMPLICIT_CASTS[(from, to)]` is `(function, exact)`: `exact` when the conversion keeps
equality (so an index key on the converted value is still a key on the column's value).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from sync_engine.pg import values as pgv
from sync_engine.pg.types import (
    BOOL,
    BPCHAR,
    CHAR,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    INTERVAL,
    NAME,
    NUMERIC,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    VARCHAR,
    PgType,
)
from sync_engine.pg.values import UnrepresentableValue, Value

from .datetimes import (
    date_to_ts,
    time_to_interval,
    ts_to_date,
    ts_to_time,
    ts_to_tstz,
    tstz_to_date,
    tstz_to_time,
    tstz_to_ts,
)
from .resolution import INT_TYPES, NUMERIC_ORDER
from .semantics import (
    float4_to_numeric,
    identity,
    pg_numeric,
    to_float4,
    to_float8,
    to_int,
    to_numeric,
)

# Implicit (and explicit) scalar conversions: (from, to) -> (function, index-exact).
IMPLICIT_CASTS: dict[tuple[PgType, PgType], tuple[Callable[[Value], Value], bool]] = {}
for _i, _src in enumerate(NUMERIC_ORDER):
    for _dst in NUMERIC_ORDER[_i + 1 :]:
        if _dst in INT_TYPES:
            IMPLICIT_CASTS[(_src, _dst)] = (identity, True)
        elif _dst == NUMERIC:
            IMPLICIT_CASTS[(_src, _dst)] = (Decimal, True)
        elif _dst == FLOAT4:
            IMPLICIT_CASTS[(_src, _dst)] = (to_float4, False)
        else:
            IMPLICIT_CASTS[(_src, _dst)] = (to_float8, _src == FLOAT4)
for _src in (VARCHAR, BPCHAR, NAME):
    IMPLICIT_CASTS[(_src, TEXT)] = (identity, True)


def text_to_name(value: Value) -> Value:
    """text_name (text, varchar -> name): cut to NAMEDATALEN - 1 = 63 bytes at a character
    boundary, as pg_mbcliplen does in a UTF8 database (the compiler refuses others)."""
    text = str(value)
    if len(text) <= 15 or (text.isascii() and len(text) <= 63):
        return text
    return text[:63] if text.isascii() else text.encode()[:63].decode(errors="ignore")


def bpchar_to_name(value: Value) -> Value:
    """bpchar_name: cut as text_name, then trailing blanks dropped (a char(n) value is held
    without its padding, so cutting it is cutting the padded one)."""
    name = text_to_name(value)
    assert isinstance(name, str)
    return name.rstrip(" ")


# text, varchar, char(n) -> name are implicit (a list such as COALESCE(nm, t) is name)
IMPLICIT_CASTS[(TEXT, NAME)] = (text_to_name, False)
IMPLICIT_CASTS[(VARCHAR, NAME)] = (text_to_name, False)
IMPLICIT_CASTS[(BPCHAR, NAME)] = (bpchar_to_name, False)
# "char" -> text (char_text) is implicit: `c1 = t` is text = text. A "char" value is held
# as its output text, which is char_text's too ('' for the zero byte, `\ooo` for a byte
# past ASCII, as since Postgres 15).
IMPLICIT_CASTS[(CHAR, TEXT)] = (identity, True)
IMPLICIT_CASTS[(TEXT, VARCHAR)] = (identity, True)
# text -> char(n) (a list such as COALESCE(ch, t) is char(n)): the engine keeps char(n)
# values without their trailing blanks, which char(n) comparisons ignore.
IMPLICIT_CASTS[(TEXT, BPCHAR)] = (lambda v: str(v).rstrip(" "), False)
IMPLICIT_CASTS[(DATE, TIMESTAMP)] = (date_to_ts, False)
IMPLICIT_CASTS[(DATE, TIMESTAMPTZ)] = (date_to_ts, False)  # then to tz: see Compiler.coerce
IMPLICIT_CASTS[(TIMESTAMP, TIMESTAMPTZ)] = (ts_to_tstz, False)
# time -> interval (time_interval) is implicit: `tm < iv` compares as interval.
IMPLICIT_CASTS[(TIME, INTERVAL)] = (time_to_interval, False)


EXPLICIT_CASTS: dict[tuple[PgType, PgType], Callable[[Value], Value]] = {
    **{(s, d): to_int(d) for s in NUMERIC_ORDER for d in INT_TYPES if s != d},
    **{(s, NUMERIC): to_numeric for s in NUMERIC_ORDER if s != NUMERIC},
    (FLOAT4, NUMERIC): float4_to_numeric,
    **{(s, FLOAT8): to_float8 for s in NUMERIC_ORDER if s != FLOAT8},
    **{(s, FLOAT4): to_float4 for s in NUMERIC_ORDER if s != FLOAT4},
    (INT4, BOOL): bool,
    (BOOL, INT4): int,
    (TIMESTAMP, DATE): ts_to_date,
    (TIMESTAMP, TIME): ts_to_time,
    (TIMESTAMPTZ, TIMESTAMP): tstz_to_ts,
    (TIMESTAMPTZ, DATE): tstz_to_date,
    (TIMESTAMPTZ, TIME): tstz_to_time,
    (DATE, TIMESTAMP): date_to_ts,
    (DATE, TIMESTAMPTZ): lambda v: ts_to_tstz(date_to_ts(v)),
    (TIMESTAMP, TIMESTAMPTZ): ts_to_tstz,
}


# --- text input of a value read from a row ------------------------------------------------------

#: What `text::date` (and the other date/time types, and interval) reads exactly as Postgres
#: does: the ISO forms Postgres itself prints. Postgres's date/time input takes far more
#: ('Jan 2 2024', 'epoch', 'today', '2024-01-02 24:00:00', zone names, Julian days, '.5' as
#: an interval, ...), which the engine's parsers do not follow; on any other text the answer
#: is unknown, so the cast raises UnrepresentableValue rather than guess "invalid" (or read a
#: Unicode digit Postgres refuses): the replicator then asks Postgres whether the row matches
#: (`pg/row_where.py`), and rotates the shape only where Postgres cannot be asked.
_DATE = r"\d{4}-\d{2}-\d{2}"
_CLOCK = r"(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?"
_OFFSET = r"(?:[+-](?:0\d|1[0-5])(?::[0-5]\d)?|Z)?"  # Z: UTC, as in JavaScript's toISOString()
_STRICT_TEXT_INPUT: dict[PgType, re.Pattern[str]] = {
    DATE: re.compile(rf"{_DATE}(?:[ T]{_CLOCK}{_OFFSET})?|-?infinity", re.ASCII),
    TIMESTAMP: re.compile(rf"{_DATE}(?:[ T]{_CLOCK}{_OFFSET})?|-?infinity", re.ASCII),
    TIMESTAMPTZ: re.compile(rf"{_DATE}(?:[ T]{_CLOCK}{_OFFSET})?|-?infinity", re.ASCII),
    TIME: re.compile(rf"(?:{_DATE} )?{_CLOCK}{_OFFSET}|24:00(?::00(?:\.0{{1,6}})?)?", re.ASCII),
    INTERVAL: re.compile(
        r"P(?!$)(?:-?\d{1,6}Y)?(?:-?\d{1,6}M)?(?:-?\d{1,6}D)?"
        r"(?:T(?=-?\d)(?:-?\d{1,6}H)?(?:-?\d{1,6}M)?(?:-?\d{1,6}(?:\.\d{1,6})?S)?)?",
        re.ASCII,
    ),
}
#: Interval literals the engine reads exactly as Postgres does (checked against Postgres on
#: thousands of such strings): whole numbers with units, fractional seconds of up to 6
#: digits, a clock (hours unbounded), '@' and 'ago', a lone number (seconds), or ISO 8601
#: with whole fields. Postgres
#: reads fractions of other units by cascading rules of its own ('1.5 us' is 1 microsecond,
#: '1.0000005 years' 1 year) and a bare number before a clock as days ('1 1:00'), which the
#: engine read otherwise; such literals are refused.
_IV_UNITS = (
    r"(?:microseconds?|us|usecs?|milliseconds?|ms|msecs?|seconds?|s|secs?|minutes?|m|mins?"
    r"|hours?|h|hrs?|days?|d|weeks?|w|months?|mons?|years?|y|yrs?|decades?|centuries"
    r"|century|millennium|millennia)"
)
_IV_TOKEN = (
    rf"(?:[+-]?\d{{1,10}}\s*{_IV_UNITS}|[+-]?\d{{1,9}}\.\d{{1,6}}\s*(?:seconds?|s|secs?)"
    r"|[+-]?\d{1,4}:[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?)"
)
_IV_ISO = (
    r"P(?!$)(?:-?\d{1,6}Y)?(?:-?\d{1,6}M)?(?:-?\d{1,6}D)?"
    r"(?:T(?=-?\d)(?:-?\d{1,6}H)?(?:-?\d{1,6}M)?(?:-?\d{1,6}(?:\.\d{1,6})?S)?)?"
)
_INTERVAL_LITERAL = re.compile(
    rf"\s*(?:[+-]?\d{{1,9}}(?:\.\d{{1,6}})?|(?:@\s*)?{_IV_TOKEN}(?:\s+{_IV_TOKEN})*(?:\s+ago)?|{_IV_ISO})\s*",
    re.ASCII | re.IGNORECASE,
)


#: A date with a time of day, which date input reads (the time and any offset dropped once
#: checked: '2024-01-02 25:00' fails), and a time of day after a date (with a space: not
#: 'T', which time input refuses), which time input reads (the date checked, then dropped).
_DATE_WITH_CLOCK = re.compile(rf"\s*{_DATE}[ T]{_CLOCK}{_OFFSET}\s*", re.ASCII)
_CLOCK_AFTER_DATE = re.compile(rf"\s*({_DATE}) ({_CLOCK}{_OFFSET})\s*", re.ASCII)


def _date_input(text: str) -> Value:
    if _DATE_WITH_CLOCK.fullmatch(text):
        value = pgv.parse_timestamp(text)
        assert isinstance(value, datetime)
        return value.date()
    return pgv.parse_date(text)


def _time_input(text: str) -> Value:
    m = _CLOCK_AFTER_DATE.fullmatch(text)
    if m:
        pgv.parse_date(m[1])  # ValueError where the date is none ('2024-02-30')
        return pgv.parse_time(m[2])
    return pgv.parse_time(text)


def _no_plus_infinity(parse: Callable[[str], Value], target: PgType) -> Callable[[str], Value]:
    """`parse`, refusing '+infinity' as Postgres 15 does: only Postgres 16 reads it as
    'infinity' for date and timestamps (pg/values.py reads it, as replication never sends
    it), and `ts < '+infinity'` was served where Postgres 15 said "invalid input syntax"."""

    def parse_checked(text: str) -> Value:
        if text.strip().lower() == "+infinity":
            raise ValueError(f'invalid input syntax for type {pgv.input_name(target)}: "{text}"')
        return parse(text)

    return parse_checked


def datetime_input(target: PgType) -> Callable[[str], Value]:
    """Postgres's input of `target` as far as the engine reads it: `pgv.input_parser`, and for
    date and time also a date with a time of day (see _DATE_WITH_CLOCK); numerics with a
    scale of 0 or more (`pg_numeric`); dates and timestamps without Postgres 16's
    '+infinity'; ValueError."""
    if target in (DATE, TIMESTAMP, TIMESTAMPTZ):
        return _no_plus_infinity(
            pgv.c_spaces_only(DATE, _date_input) if target == DATE else pgv.input_parser(target),
            target,
        )
    if target.array and target.element in (DATE, TIMESTAMP, TIMESTAMPTZ):
        element = _no_plus_infinity(pgv.input_parser(target.element), target.element)
        return functools.partial(pgv.parse_array, element=element, pg_type=target)
    if target == TIME:
        return pgv.c_spaces_only(TIME, _time_input)
    parser = pgv.input_parser(target)
    if target.element == NUMERIC:
        return _numeric_scaled(parser)
    if target in INT_TYPES:
        return _long_int_checked(parser, target)
    return parser


_LONG_INT = re.compile(r"\s*[+-]?0*[0-9]{20,}\s*", re.ASCII)


def _long_int_checked(parser: Callable[[str], Value], target: PgType) -> Callable[[str], Value]:
    """`parser`, but an integer of more than 19 digits is out of range before Python's int()
    sees it (which refuses over 4300 digits, in its own words)."""

    def parse(text: str) -> Value:
        m = _LONG_INT.fullmatch(text)
        if m and len(text.strip().lstrip("+-").lstrip("0")) > 19:
            raise ValueError(f'value "{text}" is out of range for type {target.sql_name}')
        return parser(text)

    return parse


def _numeric_scaled(parser: Callable[[str], Value]) -> Callable[[str], Value]:
    """`parser`'s numerics (an array's too) as Postgres holds them (`pg_numeric`)."""

    def scaled(value: Value) -> Value:
        if isinstance(value, tuple):
            return tuple(scaled(x) for x in value)
        return pg_numeric(value) if isinstance(value, Decimal) else value

    return lambda text: scaled(parser(text))


def interval_literal(text: str) -> Value:
    """An interval literal or parameter, if written in a form read exactly (ValueError)."""
    if pgv.has_non_c_space(text):  # (Postgres's answer, not "not supported")
        raise pgv.invalid(INTERVAL, text)
    if not _INTERVAL_LITERAL.fullmatch(text):
        raise ValueError(
            f'interval literal "{text[:40]}" is not supported: write whole numbers with units'
            " ('1 day 12 hours', '1.5 seconds'), a clock ('36:00:00') or ISO 8601 ('P1DT12H')"
        )
    return pgv.parse_interval(text)


#: Number input the engine's parsers refuse but some Postgres reads: a hexadecimal float
#: (strtod), 'nan(...)' (glibc's strtod), and from Postgres 16 on, integers and numerics in
#: hex, octal or binary and with underscores between digits.
_MAYBE_NUMBER = re.compile(
    r"\s*[+-]?(?:0[xXoObB]|nan\()|.*\d_\d", re.ASCII | re.DOTALL | re.IGNORECASE
)
_SIGNED_NAN = re.compile(r"\s*[+-]nan\s*", re.ASCII | re.IGNORECASE)
_NUMBER_TYPES = (INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8)


def _unknown_text_input(target: PgType, text: str) -> UnrepresentableValue:
    return UnrepresentableValue(
        f'text "{text[:40]}" cast to {target.sql_name}: a form the engine does not read '
        "exactly as Postgres does"
    )


#: An array whose lower bounds are not 1 prints them (`[0:1]={1,2}`); the engine's arrays
#: keep no bounds, and Postgres's `=`, subscripts, slices, `||` and text output depend on
#: them: `'[0:1]={1,2}'::int4[] = '{1,2}'` is false, and its [1] is 2.
ARRAY_BOUNDS_REFUSED = "arrays with explicit bounds ('[0:1]={...}') are not supported"


def has_array_bounds(text: str) -> bool:
    return text.lstrip()[:1] == "["


#: Whitespace that is not Postgres's (array_isspace, scanner_isspace: space, \t, \n, \r,
#: \v, \f): NBSP, em space, ... Postgres keeps it in an unquoted array element (and prints
#: such an element unquoted: `{ a}` for ARRAY[U&'\00A0a']), where the engine's array
#: parser (pg/values.py, str.isspace) trims it: the row's element read 'a'.
_UNICODE_SPACE = re.compile(r"[^\S\t\n\r\v\f ]")
ARRAY_SPACE_REFUSED = "arrays holding non-ASCII whitespace are not supported"


def unicode_space(text: str) -> bool:
    return not text.isascii() and _UNICODE_SPACE.search(text) is not None


def trailing_comma(text: str) -> bool:
    """`{1,2,}`: Postgres's array_in refuses a comma before a closing brace (the engine's
    parser read it as {1,2}). Outside quotes, escapes followed."""
    quoted = escaped = False
    last = ""  # the last character outside quotes that is not whitespace
    for ch in text:
        if escaped:
            escaped, last = False, "x"
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted, last = not quoted, '"'
        elif quoted or ch in " \t\n\r\v\f":
            continue
        elif ch == "}" and last == ",":
            return True
        else:
            last = ch
    return False


def bounds_refused(parse: Callable[[str], Value]) -> Callable[[str], Value]:
    """`parse` for an array's text, raising UnrepresentableValue on explicit bounds or on
    whitespace Postgres does not trim (a row's value: Postgres holds it, the engine cannot
    read it exactly; see `Where.matches`)."""

    def parse_bounded(text: str) -> Value:
        if has_array_bounds(text):
            raise UnrepresentableValue(ARRAY_BOUNDS_REFUSED)
        if unicode_space(text):
            raise UnrepresentableValue(ARRAY_SPACE_REFUSED)
        return parse(text)

    return parse_bounded


def _regular(value: Value, top: bool = True) -> bool:
    """A Postgres array: sub-arrays of one shape at each level (none empty below the top),
    never beside scalars. The engine's parser also reads '{{1},{2,3}}', '{{}}' and
    '{{a,b},c}', which Postgres refuses as malformed."""
    if not isinstance(value, tuple):
        return True
    if not value:
        return top
    subs = [isinstance(x, tuple) for x in value]
    if not any(subs):
        return True
    if not all(subs):
        return False
    shape = _shape_of(value[0])
    return all(_regular(x, False) and _shape_of(x) == shape for x in value)


#: `_regular`, for the compiler's literals of array types.
regular_array = _regular


def _shape_of(value: Value) -> tuple[int, ...]:
    dims = []
    while isinstance(value, tuple) and value:
        dims.append(len(value))
        value = value[0]
    return tuple(dims)


def _flat(value: Value) -> list[Value]:
    out: list[Value] = []
    for x in value:
        out.extend(_flat(x) if isinstance(x, tuple) else [x])
    return out


def _array_text_input(target: PgType, parser: Callable[[str], Value]) -> Callable[[str], Value]:
    def parse(text: str) -> Value:
        if has_array_bounds(text):
            raise UnrepresentableValue(ARRAY_BOUNDS_REFUSED)
        if unicode_space(text):
            raise UnrepresentableValue(ARRAY_SPACE_REFUSED)
        if trailing_comma(text):
            raise ValueError(f'malformed array literal: "{text[:40]}"')
        value = parser(text)
        if not _regular(value):
            raise ValueError(f'malformed array literal: "{text[:40]}"')
        if any(isinstance(x, str) and '"' in x for x in _flat(value)):
            # '{"a\\"b"}' holds a quote, '{a"b}' is malformed: the parsed value cannot tell
            raise _unknown_text_input(target, text)
        return value

    return parse


def text_input_cast(target: PgType) -> Callable[[str], Value]:
    """The cast of a string-typed value (a row's, not a literal's) to `target`."""
    if target.array:
        element = target.element
        if element in _STRICT_TEXT_INPUT:
            # each element as a scalar's text: '{"Jan 2 2024"}'::date[] is no less read by
            # Postgres than 'Jan 2 2024'::date (the engine called such rows no match)
            strict_element = text_input_cast(element)

            def parse_elements(text: str) -> Value:
                return pgv.parse_array(text, strict_element, target)

            return _array_text_input(target, parse_elements)
        return _array_text_input(target, datetime_input(target))
    parser = datetime_input(target)
    strict = _STRICT_TEXT_INPUT.get(target)
    if strict is not None:

        def strict_parse(text: str) -> Value:
            if not strict.fullmatch(text):
                raise _unknown_text_input(target, text)
            return parser(text)

        return strict_parse
    if target in _NUMBER_TYPES:

        def number_parse(text: str) -> Value:
            try:
                return parser(text)
            except UnrepresentableValue:
                raise
            except ValueError:
                if target in (FLOAT4, FLOAT8) and _SIGNED_NAN.fullmatch(text):
                    return math.nan  # strtod reads a signed NaN; Postgres prints it NaN
                if _MAYBE_NUMBER.match(text):
                    raise _unknown_text_input(target, text) from None
                raise

        return number_parse
    return parser
