"""Time zones for `AT TIME ZONE`: which names the engine takes, and proof that Postgres
reads them as the engine does.

Postgres (timestamp_zone, timestamptz_zone) looks a zone up first as a time zone
abbreviation ('EST', 'CET': a fixed offset whatever the date, from its own
`timezone_abbreviations` table), then as a zone file, and last as a POSIX spec ('UTC+3',
'EST5EDT', with the sign the other way round). The engine takes only what both read from
the same kind of source: a full `Area/Location` name (never an abbreviation), found
case-insensitively as Postgres finds zone files, and 'UTC'.

Both then read zone files, but not necessarily the same ones: Debian's Postgres reads the
system's /usr/share/zoneinfo as Python's zoneinfo does, while a remote Postgres may carry
another tzdata release (a country that dropped daylight saving since). So before a shape
uses a zone, `ZoneAgreement` asks the source's Postgres for that zone's readings at every
transition the engine knows of (a second before and at it, and local times in and around
each gap or overlap) and at every month from 1800 to 2200, and compares them with the
engine's. A zone on which they differ anywhere is refused with a 400: an answer that
might differ from Postgres's on a live row is never given.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from psycopg import AsyncConnection

from .datetimes import local_to_tstz, tstz_to_local

OnCatalog = Callable[[Callable[[AsyncConnection[Any]], Awaitable[Any]]], Awaitable[Any]]
"""Runs a query function on the source's catalog connection (`Tables.on_catalog`)."""

#: The years over which a zone's readings are compared with Postgres's.
FIRST_YEAR, LAST_YEAR = 1800, 2200


@functools.cache
def _zone_names() -> dict[str, str]:
    """Full zone names by their lower case (Postgres opens zone files case-insensitively)."""
    return {
        name.lower(): name
        for name in zoneinfo.available_timezones()
        if "/" in name and not name.startswith(("posix/", "right/"))
    }


def zone_key(name: str) -> str | None:
    """The zone file a name reads (`Europe/Paris` for `europe/paris`), `UTC`, or None for a
    name the engine does not take (an abbreviation, a POSIX spec, an unknown name).

    'UTC' in any case ('utc', 'Utc'): Postgres reads it as the abbreviation UTC (it
    looks abbreviations up in lower case), offset 0 whatever the date, as the engine's UTC."""
    if name.lower() == "utc":
        return "UTC"
    return _zone_names().get(name.lower())


def zone(key: str) -> tzinfo:
    """The zone of a `zone_key`."""
    return UTC if key == "UTC" else zoneinfo.ZoneInfo(key)


def _transitions(tz: tzinfo) -> list[tuple[datetime, timedelta, timedelta]]:
    """(instant in UTC, offset before, offset after) of each change of `tz`'s UTC offset
    between FIRST_YEAR and LAST_YEAR that a weekly scan sees, bisected to the second."""

    def offset(at: datetime) -> timedelta:
        off = at.astimezone(tz).utcoffset()
        assert off is not None
        return off

    out = []
    step = timedelta(days=7)
    at = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
    end = datetime(LAST_YEAR, 1, 1, tzinfo=UTC)
    before = offset(at)
    while at < end:
        nxt = at + step
        after = offset(nxt)
        if after != before:
            lo, hi = at, nxt  # offset(lo) == before, offset(hi) != before
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if offset(mid) == before:
                    lo = mid
                else:
                    hi = mid
            out.append((hi, before, offset(hi)))
        at, before = nxt, after
    return out


def probes(tz: tzinfo) -> tuple[list[datetime], list[datetime]]:
    """Instants (UTC) and local times (naive) at which to compare readings of `tz`."""
    instants: list[datetime] = []
    local: list[datetime] = []
    for year in range(FIRST_YEAR, LAST_YEAR):
        for month in range(1, 13):
            at = datetime(year, month, 1, 12, tzinfo=UTC)
            instants.append(at)
            local.append(at.replace(tzinfo=None))
    second = timedelta(seconds=1)
    for at, before, after in _transitions(tz):
        instants += (at - second, at)
        start, end = sorted((at.replace(tzinfo=None) + before, at.replace(tzinfo=None) + after))
        local += (start - second, start, start + (end - start) / 2, end - second, end)
    return instants, local


class ZoneAgreement:
    """Per source: which zones its Postgres reads as the engine does (asked once a zone)."""

    def __init__(self, on_catalog: OnCatalog) -> None:
        self._on_catalog = on_catalog
        self._verdicts: dict[str, str | None] = {}

    async def problem(self, keys: Iterable[str]) -> str | None:
        """Why one of the zones `keys` cannot be used, or None when Postgres agrees on all."""
        for key in sorted(keys):
            if key not in self._verdicts:
                self._verdicts[key] = await self._on_catalog(functools.partial(_disagreement, key))
            verdict = self._verdicts[key]
            if verdict is not None:
                return verdict
        return None


async def _disagreement(key: str, conn: AsyncConnection[Any]) -> str | None:
    tz = zone(key)
    instants, local = probes(tz)
    n = max(len(instants), len(local))
    cur = await conn.execute(
        "SELECT u AT TIME ZONE %(z)s, l AT TIME ZONE %(z)s"
        " FROM unnest(%(u)s::timestamptz[], %(l)s::timestamp[]) WITH ORDINALITY AS p(u, l, i)"
        " ORDER BY i",
        {"z": key, "u": _padded(instants, n), "l": _padded(local, n)},
    )
    rows = await cur.fetchall()
    for (pg_local, pg_instant), u, lt in zip(rows, _padded(instants, n), _padded(local, n),
                                             strict=True):  # fmt: skip
        if u is not None and pg_local != tstz_to_local(tz, u):
            return _refusal(key, f"{u:%Y-%m-%d %H:%M:%S} UTC")
        if lt is not None and pg_instant != local_to_tstz(tz, lt):
            return _refusal(key, f"{lt:%Y-%m-%d %H:%M:%S} local time")
    return None


def _padded(xs: list[datetime], n: int) -> list[datetime | None]:
    return [*xs, *([None] * (n - len(xs)))]


def _refusal(key: str, at: str) -> str:
    return (
        f'time zone "{key}" is read differently by Postgres and by the engine (at {at}):'
        " their time zone data differ, so AT TIME ZONE with it is not supported"
    )
