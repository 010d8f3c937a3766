"""Date, timestamp, time and interval conversions and arithmetic, as Postgres does them.

Timestamps with time zone are aware datetimes in UTC; `pgv.PgInfinity` stands for
`infinity` / `-infinity` and passes through arithmetic unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sync_engine.pg import values as pgv


def date_to_ts(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return datetime.combine(value, time(0))


def ts_to_tstz(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.replace(tzinfo=UTC)


def tstz_to_ts(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def ts_to_date(value: Any) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value.date()


def ts_to_time(value: Any) -> Any:
    return value.time()


def tstz_to_date(value: Any) -> Any:
    return ts_to_date(tstz_to_ts(value))


def tstz_to_time(value: Any) -> Any:
    return tstz_to_ts(value).time()


def add_interval(value: Any, iv: pgv.Interval) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    if iv.months:
        value = pgv.add_months(value, iv.months)
    return value + timedelta(days=iv.days, microseconds=iv.micros)


def add_days(value: Any, days: int) -> Any:
    if isinstance(value, pgv.PgInfinity):
        return value
    return value + timedelta(days=days)


def neg_interval(iv: pgv.Interval) -> pgv.Interval:
    return pgv.Interval(-iv.months, -iv.days, -iv.micros)


def time_add(t: time, iv: pgv.Interval) -> time:
    micros = ((t.hour * 60 + t.minute) * 60 + t.second) * pgv.USECS_PER_SEC + t.microsecond
    micros = (micros + iv.micros) % pgv.USECS_PER_DAY
    secs, us = divmod(micros, pgv.USECS_PER_SEC)
    return time(secs // 3600, secs // 60 % 60, secs % 60, us)


def ts_diff(a: Any, b: Any) -> pgv.Interval:
    """timestamp - timestamp: days and time, like Postgres's justify_hours result."""
    delta = a - b
    micros = (delta.days * 86_400 + delta.seconds) * pgv.USECS_PER_SEC + delta.microseconds
    days = int(micros / pgv.USECS_PER_DAY)
    return pgv.Interval(0, days, micros - days * pgv.USECS_PER_DAY)


def interval_mul(iv: pgv.Interval, factor: float) -> pgv.Interval:
    months = iv.months * factor
    whole_months = int(months)
    days = iv.days * factor + (months - whole_months) * pgv.DAYS_PER_MONTH
    whole_days = int(days)
    micros = round(iv.micros * factor + (days - whole_days) * pgv.USECS_PER_DAY)
    return pgv.Interval(whole_months, whole_days, micros)


def date_minus_date(a: date, b: date) -> int:
    return (a - b).days


def justify_hours(iv: pgv.Interval) -> pgv.Interval:
    days = int(iv.micros / pgv.USECS_PER_DAY)
    return pgv.Interval(iv.months, iv.days + days, iv.micros - days * pgv.USECS_PER_DAY)


def justify_days(iv: pgv.Interval) -> pgv.Interval:
    months = int(iv.days / pgv.DAYS_PER_MONTH)
    return pgv.Interval(iv.months + months, iv.days - months * pgv.DAYS_PER_MONTH, iv.micros)


# Binary operators by (operator, left, right) -> (result type, function).
DATETIME_OPS: dict[tuple[str, str, str], tuple[str, Callable[[Any, Any], Any]]] = {
    ("+", "date", "int4"): ("date", lambda d, n: add_days(d, n)),
    ("+", "int4", "date"): ("date", lambda n, d: add_days(d, n)),
    ("-", "date", "int4"): ("date", lambda d, n: add_days(d, -n)),
    ("-", "date", "date"): ("int4", date_minus_date),
    ("+", "date", "time"): ("timestamp", datetime.combine),
    ("+", "time", "date"): ("timestamp", lambda t, d: datetime.combine(d, t)),
    ("+", "date", "interval"): ("timestamp", lambda d, i: add_interval(date_to_ts(d), i)),
    ("-", "date", "interval"): (
        "timestamp",
        lambda d, i: add_interval(date_to_ts(d), neg_interval(i)),
    ),
    ("+", "timestamp", "interval"): ("timestamp", add_interval),
    ("-", "timestamp", "interval"): ("timestamp", lambda t, i: add_interval(t, neg_interval(i))),
    ("+", "interval", "timestamp"): ("timestamp", lambda i, t: add_interval(t, i)),
    ("+", "timestamptz", "interval"): ("timestamptz", add_interval),
    ("-", "timestamptz", "interval"): (
        "timestamptz",
        lambda t, i: add_interval(t, neg_interval(i)),
    ),
    ("+", "interval", "timestamptz"): ("timestamptz", lambda i, t: add_interval(t, i)),
    ("-", "timestamp", "timestamp"): ("interval", ts_diff),
    ("-", "timestamptz", "timestamptz"): ("interval", ts_diff),
    ("+", "time", "interval"): ("time", time_add),
    ("-", "time", "interval"): ("time", lambda t, i: time_add(t, neg_interval(i))),
    ("+", "interval", "interval"): (
        "interval",
        lambda a, b: pgv.Interval(a.months + b.months, a.days + b.days, a.micros + b.micros),
    ),
    ("-", "interval", "interval"): (
        "interval",
        lambda a, b: pgv.Interval(a.months - b.months, a.days - b.days, a.micros - b.micros),
    ),
    ("*", "interval", "float8"): ("interval", interval_mul),
    ("*", "float8", "interval"): ("interval", lambda f, i: interval_mul(i, f)),
}
