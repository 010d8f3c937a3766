"""Date, timestamp, time and interval conversions and arithmetic, as Postgres does them.

Timestamps with time zone are aware datetimes in UTC; `pgv.PgInfinity` stands for
`infinity` / `-infinity` and passes through arithmetic unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from sync_engine.pg import values as pgv
from sync_engine.pg.types import DATE, FLOAT8, INT4, INTERVAL, TIME, TIMESTAMP, TIMESTAMPTZ, PgType
from sync_engine.pg.values import Value


def date_to_ts(value: Value) -> Value:
    if isinstance(value, pgv.PgInfinity):
        return value
    return datetime.combine(value, time(0))


def ts_to_tstz(value: Value) -> Value:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.replace(tzinfo=UTC)


def tstz_to_ts(value: Value) -> Value:
    if isinstance(value, pgv.PgInfinity):
        return value
    return _in_utc(value).replace(tzinfo=None)


def _in_utc(value: datetime) -> datetime:
    """An aware datetime in UTC; one written with an offset can leave Python's years in UTC
    ('9999-12-31 23:00-12' is in year 10000), which Postgres holds."""
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _beyond_python() from None


def ts_to_date(value: Value) -> Value:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.date()


def ts_to_time(value: Value) -> Value:
    if isinstance(value, pgv.PgInfinity):
        return None  # Postgres: an infinite timestamp cast to time is NULL
    return value.time()


def tstz_to_date(value: Value) -> Value:
    return ts_to_date(tstz_to_ts(value))


def tstz_to_time(value: Value) -> Value:
    return ts_to_time(tstz_to_ts(value))


def _beyond_python() -> pgv.UnrepresentableValue:
    """Python's date/datetime overflowed: Postgres's wider range may still hold the result
    (BC, or past year 9999), so the answer is unknown rather than a data error."""
    return pgv.UnrepresentableValue("date/time result outside years 1-9999 is not supported")


def add_interval(value: Value, iv: pgv.Interval) -> Value:
    if isinstance(value, pgv.PgInfinity):
        return value
    if value.tzinfo is not None and value.tzinfo is not UTC:
        # Postgres adds months and days in the session's zone (UTC for the engine), not in
        # the offset a literal was written with: '1999-12-31 12:00-12'::timestamptz - '1 mon'
        # is 1999-12-01 00:00 UTC, not 1999-11-30 12:00-12.
        value = _in_utc(value)
    try:
        # months, then days, then the time, each step in range as in timestamp_pl_interval:
        # '2024-01-01' - (3000000 days -72000000 hours) fails in Postgres (year 6190 BC on
        # the way) where the sum of the two is no change
        if iv.months:
            value = pgv.add_months(value, iv.months)
        if iv.days:
            value = value + timedelta(days=iv.days)
        return value + timedelta(microseconds=iv.micros)
    except (OverflowError, ValueError):
        raise _beyond_python() from None


def add_days(value: Value, days: int) -> Value:
    if isinstance(value, pgv.PgInfinity):
        return value
    try:
        return value + timedelta(days=days)
    except OverflowError:
        raise _beyond_python() from None


INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def _trunc_div(a: int, b: int) -> int:
    """C integer division (toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def checked_interval(months: int, days: int, micros: int) -> pgv.Interval:
    """An interval whose fields fit Postgres's int32 / int32 / int64, else its error."""
    if not (
        INT32[0] <= months <= INT32[1]
        and INT32[0] <= days <= INT32[1]
        and INT64[0] <= micros <= INT64[1]
    ):
        raise OverflowError("interval out of range")
    return pgv.Interval(months, days, micros)


def neg_interval(iv: pgv.Interval) -> pgv.Interval:
    return checked_interval(-iv.months, -iv.days, -iv.micros)


def interval_add(a: pgv.Interval, b: pgv.Interval) -> pgv.Interval:
    return checked_interval(a.months + b.months, a.days + b.days, a.micros + b.micros)


def interval_sub(a: pgv.Interval, b: pgv.Interval) -> pgv.Interval:
    return checked_interval(a.months - b.months, a.days - b.days, a.micros - b.micros)


def time_micros(t: time) -> int:
    if isinstance(t, pgv.EndOfDay):
        return pgv.USECS_PER_DAY
    return ((t.hour * 60 + t.minute) * 60 + t.second) * pgv.USECS_PER_SEC + t.microsecond


def time_to_interval(t: time) -> pgv.Interval:
    """time_interval, Postgres's implicit time -> interval cast (`tm < iv` compares as
    interval): the clock as microseconds, no days or months (24:00 is '24:00:00', equal to
    '1 day' under interval's own comparison)."""
    return pgv.Interval(0, 0, time_micros(t))


def _wrap64(n: int) -> int:
    """C int64 arithmetic as Postgres is built (-fwrapv): wraps instead of overflowing."""
    return (n + 2**63) % 2**64 - 2**63


def _time_of(micros: int) -> time:
    # time_pl_interval: result -= result / USECS_PER_DAY * USECS_PER_DAY (C division), then
    # a negative result gets a day added: the same as Python's floor modulo.
    micros %= pgv.USECS_PER_DAY
    secs, us = divmod(micros, pgv.USECS_PER_SEC)
    return time(secs // 3600, secs // 60 % 60, secs % 60, us)


def time_add(t: time, iv: pgv.Interval) -> time:
    """time + interval: only the interval's microseconds count, and their sum with the time
    is not checked for overflow in Postgres (it wraps: `'23:59:59.999999' + 2562047788
    hours` is a time after midnight, not an error)."""
    return _time_of(_wrap64(time_micros(t) + iv.micros))


def time_sub(t: time, iv: pgv.Interval) -> time:
    """time - interval: Postgres subtracts the microseconds (it never negates the whole
    interval, whose months may not negate: '-178956970 years -8 mons')."""
    return _time_of(_wrap64(time_micros(t) - iv.micros))


def sub_interval(value: Value, iv: pgv.Interval) -> Value:
    """timestamp - interval: timestamp + (-interval). An interval whose negation overflows
    (-2147483648 months) is an error from an infinite timestamp in Postgres 17, which
    checks it, but gives the infinity back in Postgres 15, which does not; a finite one is
    out of range either way."""
    try:
        negated = neg_interval(iv)
    except OverflowError:
        if isinstance(value, pgv.PgInfinity):
            raise pgv.UnrepresentableValue(
                "infinite timestamp minus an interval whose negation overflows: "
                "Postgres versions differ"
            ) from None
        raise
    return add_interval(value, negated)


def ts_diff(a: Value, b: Value) -> pgv.Interval:
    """timestamp - timestamp: the microseconds, then justify_hours (timestamp_mi)."""
    if isinstance(a, pgv.PgInfinity) or isinstance(b, pgv.PgInfinity):
        raise ValueError("cannot subtract infinite timestamps")
    delta = a - b
    micros = (delta.days * 86_400 + delta.seconds) * pgv.USECS_PER_SEC + delta.microseconds
    return justify_hours(pgv.Interval(0, 0, micros))


def _tsround(x: float) -> float:
    return round(x * 1e6) / 1e6


def interval_mul(iv: pgv.Interval, factor: float) -> pgv.Interval:
    """interval * float8, step for step as Postgres's interval_mul (timestamp.c)."""
    # FLOAT8_FITS_IN_INT32: -2^31 <= x < 2^31, so 2147483647.5 months is 2147483647
    months_f = iv.months * factor
    if math.isnan(months_f) or not -(2.0**31) <= months_f < 2.0**31:
        raise OverflowError("interval out of range")
    months = int(months_f)
    days_f = iv.days * factor
    if math.isnan(days_f) or not -(2.0**31) <= days_f < 2.0**31:
        raise OverflowError("interval out of range")
    days = int(days_f)
    month_remainder_days = _tsround((iv.months * factor - months) * pgv.DAYS_PER_MONTH)
    sec_remainder = _tsround(
        (iv.days * factor - days + month_remainder_days - int(month_remainder_days)) * 86_400
    )
    if abs(sec_remainder) >= 86_400:
        days += int(sec_remainder / 86_400)
        sec_remainder -= int(sec_remainder / 86_400) * 86_400
    days += int(month_remainder_days)
    if not INT32[0] <= days <= INT32[1]:
        # the remainders carried into days: Postgres 15 lets them wrap, 17 raises
        raise pgv.UnrepresentableValue("interval * float8: days out of range (versions differ)")
    micros_f = round(iv.micros * factor + sec_remainder * pgv.USECS_PER_SEC)
    if math.isnan(micros_f) or not -(2.0**63) <= micros_f < 2.0**63:
        raise OverflowError("interval out of range")
    return pgv.Interval(months, days, int(micros_f))


def interval_div(iv: pgv.Interval, factor: float) -> pgv.Interval:
    """interval / float8, step for step as Postgres's interval_div (timestamp.c, with the
    range checks 15.x has): interval_mul's steps with a quotient for each product."""
    if factor == 0.0:
        raise ZeroDivisionError("division by zero")
    months_f = iv.months / factor
    if math.isnan(months_f) or not -(2.0**31) <= months_f < 2.0**31:
        raise OverflowError("interval out of range")
    months = int(months_f)
    days_f = iv.days / factor
    if math.isnan(days_f) or not -(2.0**31) <= days_f < 2.0**31:
        raise OverflowError("interval out of range")
    days = int(days_f)
    month_remainder_days = _tsround((iv.months / factor - months) * pgv.DAYS_PER_MONTH)
    sec_remainder = _tsround(
        (iv.days / factor - days + month_remainder_days - int(month_remainder_days)) * 86_400
    )
    if abs(sec_remainder) >= 86_400:
        days += int(sec_remainder / 86_400)
        sec_remainder -= int(sec_remainder / 86_400) * 86_400
    days += int(month_remainder_days)
    if not INT32[0] <= days <= INT32[1]:
        raise pgv.UnrepresentableValue("interval / float8: days out of range (versions differ)")
    micros_f = round(iv.micros / factor + sec_remainder * pgv.USECS_PER_SEC)
    if math.isnan(micros_f) or not -(2.0**63) <= micros_f < 2.0**63:
        raise OverflowError("interval out of range")
    return pgv.Interval(months, days, int(micros_f))


def date_minus_date(a: date, b: date) -> int:
    if isinstance(a, pgv.PgInfinity) or isinstance(b, pgv.PgInfinity):
        raise ValueError("cannot subtract infinite dates")  # (Postgres's date_mi)
    return (a - b).days


def justify_hours(iv: pgv.Interval) -> pgv.Interval:
    whole = _trunc_div(iv.micros, pgv.USECS_PER_DAY)
    days, micros = iv.days + whole, iv.micros - whole * pgv.USECS_PER_DAY
    if days > 0 and micros < 0:
        micros += pgv.USECS_PER_DAY
        days -= 1
    elif days < 0 and micros > 0:
        micros -= pgv.USECS_PER_DAY
        days += 1
    return checked_interval(iv.months, days, micros)


def justify_days(iv: pgv.Interval) -> pgv.Interval:
    whole = _trunc_div(iv.days, pgv.DAYS_PER_MONTH)
    months, days = iv.months + whole, iv.days - whole * pgv.DAYS_PER_MONTH
    if months > 0 and days < 0:
        days += pgv.DAYS_PER_MONTH
        months -= 1
    elif months < 0 and days > 0:
        days -= pgv.DAYS_PER_MONTH
        months += 1
    return checked_interval(months, days, iv.micros)


def justify_interval(iv: pgv.Interval) -> pgv.Interval:
    """Postgres's interval_justify_interval, sign rules included."""
    months, days, micros = iv.months, iv.days, iv.micros
    if (days > 0 and micros > 0) or (days < 0 and micros < 0):
        whole = _trunc_div(days, pgv.DAYS_PER_MONTH)
        days -= whole * pgv.DAYS_PER_MONTH
        months += whole
    whole = _trunc_div(micros, pgv.USECS_PER_DAY)
    micros -= whole * pgv.USECS_PER_DAY
    days += whole
    whole = _trunc_div(days, pgv.DAYS_PER_MONTH)
    days -= whole * pgv.DAYS_PER_MONTH
    months += whole
    if months > 0 and (days < 0 or (days == 0 and micros < 0)):
        days += pgv.DAYS_PER_MONTH
        months -= 1
    elif months < 0 and (days > 0 or (days == 0 and micros > 0)):
        days -= pgv.DAYS_PER_MONTH
        months += 1
    if days > 0 and micros < 0:
        micros += pgv.USECS_PER_DAY
        days -= 1
    elif days < 0 and micros > 0:
        micros -= pgv.USECS_PER_DAY
        days += 1
    return checked_interval(months, days, micros)


# Binary operators by (operator, left, right) -> (result type, function).
def date_plus_time(d: Value, t: time) -> Value:
    if isinstance(d, pgv.PgInfinity):
        return d  # an infinite date stays infinite as a timestamp
    if isinstance(t, pgv.EndOfDay):
        try:
            return datetime.combine(d, time(0)) + timedelta(days=1)  # 24:00 is next midnight
        except OverflowError:
            raise _beyond_python() from None
    return datetime.combine(d, t)


DATETIME_OPS: dict[tuple[str, PgType, PgType], tuple[PgType, Callable[[Value, Value], Value]]] = {
    ("+", DATE, INT4): (DATE, lambda d, n: add_days(d, n)),
    ("+", INT4, DATE): (DATE, lambda n, d: add_days(d, n)),
    ("-", DATE, INT4): (DATE, lambda d, n: add_days(d, -n)),
    ("-", DATE, DATE): (INT4, date_minus_date),
    ("+", DATE, TIME): (TIMESTAMP, lambda d, t: date_plus_time(d, t)),
    ("+", TIME, DATE): (TIMESTAMP, lambda t, d: date_plus_time(d, t)),
    ("+", DATE, INTERVAL): (TIMESTAMP, lambda d, i: add_interval(date_to_ts(d), i)),
    ("-", DATE, INTERVAL): (
        TIMESTAMP,
        lambda d, i: sub_interval(date_to_ts(d), i),
    ),
    ("+", TIMESTAMP, INTERVAL): (TIMESTAMP, add_interval),
    ("-", TIMESTAMP, INTERVAL): (TIMESTAMP, sub_interval),
    ("+", INTERVAL, TIMESTAMP): (TIMESTAMP, lambda i, t: add_interval(t, i)),
    ("+", TIMESTAMPTZ, INTERVAL): (TIMESTAMPTZ, add_interval),
    ("-", TIMESTAMPTZ, INTERVAL): (
        TIMESTAMPTZ,
        sub_interval,
    ),
    ("+", INTERVAL, TIMESTAMPTZ): (TIMESTAMPTZ, lambda i, t: add_interval(t, i)),
    ("-", TIMESTAMP, TIMESTAMP): (INTERVAL, ts_diff),
    ("-", TIMESTAMPTZ, TIMESTAMPTZ): (INTERVAL, ts_diff),
    ("+", TIME, INTERVAL): (TIME, time_add),
    ("+", INTERVAL, TIME): (TIME, lambda i, t: time_add(t, i)),
    ("-", TIME, INTERVAL): (TIME, time_sub),
    # time_mi_time: the microseconds between them, no months or days
    ("-", TIME, TIME): (INTERVAL, lambda a, b: pgv.Interval(0, 0, time_micros(a) - time_micros(b))),
    ("+", INTERVAL, DATE): (TIMESTAMP, lambda i, d: add_interval(date_to_ts(d), i)),
    ("+", INTERVAL, INTERVAL): (
        INTERVAL,
        interval_add,
    ),
    ("-", INTERVAL, INTERVAL): (
        INTERVAL,
        interval_sub,
    ),
    ("*", INTERVAL, FLOAT8): (INTERVAL, interval_mul),
    ("*", FLOAT8, INTERVAL): (INTERVAL, lambda f, i: interval_mul(i, f)),
    ("/", INTERVAL, FLOAT8): (INTERVAL, interval_div),
}


# -- AT TIME ZONE (zones.py says which zones) ------------------------------------------


def local_to_tstz(zone: tzinfo, value: Value) -> Value:
    """timezone(zone, timestamp): the instant at which `zone`'s clocks show `value`.

    A local time that a transition skips or repeats has two readings. Postgres
    (DetermineTimeZoneOffset) takes the reading from before a spring-forward gap and the one
    after a fall-back overlap: in both cases the later of the two instants.
    """
    if isinstance(value, pgv.PgInfinity):
        return value
    try:
        first = value.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = value.replace(tzinfo=zone, fold=1).astimezone(UTC)
    except (OverflowError, ValueError):
        raise _beyond_python() from None
    return max(first, second)


def tstz_to_local(zone: tzinfo, value: Value) -> Value:
    """timezone(zone, timestamptz): what `zone`'s clocks showed at the instant `value`."""
    if isinstance(value, pgv.PgInfinity):
        return value
    try:
        return value.astimezone(zone).replace(tzinfo=None)
    except (OverflowError, ValueError):
        raise _beyond_python() from None
