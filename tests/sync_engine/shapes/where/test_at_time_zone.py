"""`AT TIME ZONE` (timezone(zone, x)) in a where: the engine's readings are Postgres's.

Differential: rows at and around every offset change of a set of zones chosen for their
awkward history (half-hour and 30-minute daylight saving, a skipped day, a change of
standard time, local mean time before 1900, rules projected past 2037), each compared with
what Postgres itself computes for the same row. Then the HTTP path: live rows equal the
snapshot's, names the engine does not take are 400s, and `ZoneAgreement` refuses a zone
whose readings differ from Postgres's (as with another tzdata release).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from sync_engine.shapes.where import zones as zones_module
from sync_engine.shapes.where.zones import ZoneAgreement, zone, zone_key
from tests.support.databases import create_database, drop_database
from tests.sync_engine.engine_harness import SETTINGS, Engine, apply
from tests.sync_engine.shapes.where.columns import column_map

ZONES = [
    "America/New_York",
    "Europe/Paris",
    "Australia/Lord_Howe",  # daylight saving of 30 minutes
    "Asia/Kolkata",  # +05:30, and +05:53:20 local mean time
    "Pacific/Apia",  # skipped 2011-12-30 when it crossed the date line
    "Europe/Moscow",  # 2014: standard time changed from +4 to +3, neither daylight time
    "America/Sao_Paulo",  # daylight saving ended in 2019
    "Africa/Casablanca",  # daylight saving suspended every Ramadan
    "Etc/GMT+5",  # POSIX sign: five hours behind UTC
    "UTC",
    "europe/paris",  # Postgres finds zone files whatever the case
    "utc",  # ... and abbreviations: 'utc' and 'Utc' are its UTC (they were refused)
    "Utc",
]


def _instants() -> list[datetime]:
    """Each zone's offset changes in a few eras, with the seconds and hours around them."""
    out = {datetime(1850, 6, 1, tzinfo=UTC), datetime(2150, 7, 1, 12, tzinfo=UTC)}
    around = [timedelta(seconds=s) for s in (-3601, -1, 0, 1, 1799, 3600, 5400)]
    for name in ZONES:
        for at, _before, _after in zones_module._transitions(zone(zone_key(name) or "UTC")):
            if at.year in (1890, 1911, 1942, 1996, 2011, 2014, 2019, 2024, 2045, 2099):
                out.update(at + d for d in around)
    return sorted(out)


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    """One table for the module's 20 cases (a database each cost ~20 s of a loaded CI):
    each reading case writes its own zone's columns before reading them."""
    dbname, db_url = create_database(pg_server_url)
    try:
        yield from _table(with_display_settings(db_url))
    finally:
        drop_database(pg_server_url, dbname)


def _table(url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, ts timestamp, tz timestamptz)")
        instants = _instants()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO d VALUES (%s, %s, %s)",
                [(i, at.replace(tzinfo=None), at) for i, at in enumerate(instants)]
                + [(len(instants), None, None), (len(instants) + 1, "infinity", "-infinity")],
            )
        conn.execute("ALTER TABLE d ADD COLUMN local timestamp, ADD COLUMN instant timestamptz")

        yield conn, column_map(url)


def _rows(conn: psycopg.Connection[Any]) -> list[dict[str, str | None]]:
    names = ("id", "ts", "tz", "local", "instant")
    select = ", ".join(f"CASE WHEN {n} IS NULL THEN NULL ELSE concat({n}, '') END" for n in names)
    return [dict(zip(names, r, strict=True)) for r in conn.execute(f"SELECT {select} FROM d")]


@pytest.mark.parametrize("name", ZONES)
def test_readings_equal_postgres(table: tuple[psycopg.Connection[Any], Any], name: str) -> None:
    conn, columns = table
    # Postgres's own readings, written next to each row
    conn.execute(
        "UPDATE d SET local = tz AT TIME ZONE %(z)s, instant = ts AT TIME ZONE %(z)s",
        {"z": name},
    )
    literal = "'" + name + "'"
    clauses = [
        f"tz AT TIME ZONE {literal} = local",
        f"ts AT TIME ZONE {literal} = instant",
        f"timezone({literal}, tz) IS NOT DISTINCT FROM local",
        f"timezone({literal}, ts) IS NOT DISTINCT FROM instant",
    ]
    rows = _rows(conn)
    for clause in clauses:
        where = parse_where(clause, {}, columns)
        assert where.zones == {zone_key(name)}
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        got = {int(str(r["id"])) for r in rows if where.matches(r)}
        assert got == expected, (clause, sorted(got ^ expected)[:5])
    # every finite row is read the same by both (the NULL row and the infinities aside)
    assert len(expected) >= len(rows) - 2


def test_constant_folding_and_literals_equal_postgres(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    """Untyped literals and dates take timestamptz, as Postgres's preferred type."""
    conn, columns = table
    for clause in [
        "'2024-03-10 02:30' AT TIME ZONE 'America/New_York' = '2024-03-09 21:30'",
        "'2024-03-10 02:30'::timestamp AT TIME ZONE 'America/New_York' < tz",
        "'2024-11-03 01:30'::timestamp AT TIME ZONE 'America/New_York' < tz",
        "'2024-03-31'::date AT TIME ZONE 'Europe/Paris' = '2024-03-31 02:00'",
        "NULL::timestamp AT TIME ZONE 'Europe/Paris' IS NULL",
        "tz AT TIME ZONE NULL IS NULL",
    ]:
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        got = {int(str(r["id"])) for r in _rows(conn) if where.matches(r)}
        assert got == expected, clause


@pytest.mark.parametrize(
    ("clause", "message"),
    [
        ("tz AT TIME ZONE 'EST' IS NULL", 'time zone "EST" is not supported'),
        ("tz AT TIME ZONE 'CET' IS NULL", 'time zone "CET" is not supported'),
        ("tz AT TIME ZONE 'UTC+3' IS NULL", 'time zone "UTC+3" is not supported'),
        ("tz AT TIME ZONE 'Nowhere/Atlantis' IS NULL", 'time zone "Nowhere/Atlantis"'),
        ("tz AT TIME ZONE 'posix/Europe/Paris' IS NULL", "is not supported"),
        ("tz AT TIME ZONE local::text IS NULL", "needs a constant zone name"),
        ("tz AT TIME ZONE interval '1 hour' IS NULL", "with an interval offset is not supported"),
        ("id AT TIME ZONE 'UTC' IS NULL", "function timezone\\(unknown, integer\\) does not exist"),
    ],
)
def test_names_the_engine_cannot_read_as_postgres_are_refused(
    table: tuple[psycopg.Connection[Any], Any], clause: str, message: str
) -> None:
    _conn, columns = table
    with pytest.raises(WhereError, match=message.replace("+", "\\+")):
        parse_where(clause, {}, columns)


async def test_agreement_with_postgres(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def on_catalog(work: Any) -> Any:
        async with await psycopg.AsyncConnection.connect(with_display_settings(db_url)) as c:
            return await work(c)

    agreement = ZoneAgreement(on_catalog)
    assert await agreement.problem(["Europe/Paris", "Pacific/Apia", "UTC"]) is None
    # Another tzdata release: the engine reading Berlin's rules where Postgres reads Paris's
    berlin = zone("Europe/Berlin")
    monkeypatch.setattr(zones_module, "zone", lambda key: berlin)
    fresh = ZoneAgreement(on_catalog)
    problem = await fresh.problem(["Europe/Paris"])
    assert problem is not None and 'time zone "Europe/Paris" is read differently' in problem


async def test_live_rows_equal_the_snapshot(engine: Engine) -> None:
    engine.sql("CREATE TABLE ev (id int PRIMARY KEY, at timestamp)")
    where = "at AT TIME ZONE 'America/New_York' >= '2024-03-10 07:00:00+00'"
    engine.sql("INSERT INTO ev VALUES (1, '2024-03-10 01:59:59'), (2, '2024-03-10 02:00:00')")
    rows, handle, offset = await engine.sync(table="ev", where=where)
    assert {r["id"] for r in rows.values()} == {"2"}  # 02:00 does not exist: read as EST
    # a gap, an overlap, and the marker
    engine.sql(
        "INSERT INTO ev VALUES (3, '2024-03-10 02:30'), (4, '2024-11-03 01:30'),"
        " (5, '2024-03-10 01:30'), (6, '2024-03-10 03:00'), (99, '2030-01-01')"
    )
    for _ in range(50):
        status, h, body = await engine.get(
            table="ev", where=where, offset=offset, handle=handle, live="true"
        )
        assert status == 200, body
        apply(rows, body)
        offset = h["electric-offset"]
        if any(r["id"] == "99" for r in rows.values()):
            break
    snapshot = {str(r[0]) for r in engine.sql(f"SELECT id FROM ev WHERE {where}")}
    assert {r["id"] for r in rows.values()} == snapshot == {"2", "3", "4", "6", "99"}


#: Literals with a zone word in any case, or a time and zone after a date: Postgres reads
#: them all (ParseDateTime lowers the words; date_in keeps the date as written), the engine
#: refused them ("not supported"). Postgres's failures must stay the engine's refusals.
LITERALS = [
    ("2024-01-01 12:00 utc", "timestamptz"),
    ("2024-01-01 12:00z", "timestamptz"),
    ("2024-01-01 12:00 Gmt", "timestamptz"),
    ("2024-01-01 12:00:00.5 UTC", "timestamptz"),
    ("2024-01-01T12:00Z", "timestamptz"),
    ("2024-01-01t12:00", "timestamp"),
    ("2024-01-01 12:00 UTC", "timestamptz"),
    ("2024-01-01 12:00 utc", "timestamp"),
    ("2024-01-01 +0530", "timestamptz"),
    ("2024-01-01 -05", "timestamp"),
    ("12:00 utc", "time"),
    ("2024-01-01 utc", "date"),
    ("2024-01-01 z", "date"),
    ("2024-01-01 +0530", "date"),
    ("2024-01-01 23:00 -05", "date"),
    ("2024-01-01 12:00", "date"),
    ("2024-01-01T12:00", "date"),
    (" 2024-01-01  12:00:00+05:30 ", "date"),
    ("2024-01-01 +16", "date"),  # (out of range to both)
    ("2024-01-01 25:00", "date"),
    ("2024-01-01 12:00 xyz", "date"),
    ("2024-01-01 utc", "timestamptz"),
]


@pytest.mark.parametrize(("literal", "type_name"), LITERALS)
def test_zone_words_in_literals_equal_postgres(
    table: tuple[psycopg.Connection[Any], Any], literal: str, type_name: str
) -> None:
    conn, columns = table
    try:
        with conn.transaction():
            row = conn.execute(f"SELECT (%s::{type_name})::text", (literal,)).fetchone()
        expected: str | None = row[0] if row else None
    except psycopg.Error:
        expected = None  # Postgres refuses it: so must the engine
    clause = f"'{literal}'::{type_name} = '{expected}'::{type_name}"
    if expected is None:
        with pytest.raises(WhereError):
            parse_where(f"'{literal}'::{type_name} IS NOT NULL", {}, columns)
        return
    where = parse_where(clause, {}, columns)
    assert where.matches({}) is True, (clause, where.sql)
    assert conn.execute(f"SELECT {where.sql}").fetchone() == (True,)


async def test_a_lower_case_utc_through_http(engine: Engine) -> None:
    """`AT TIME ZONE 'utc'` and a literal's 'utc' were 400s; now the rows Postgres returns,
    live too."""
    engine.sql("CREATE TABLE ev (id int PRIMARY KEY, at timestamp)")
    engine.sql("INSERT INTO ev VALUES (1, '2024-03-10 06:59:59'), (2, '2024-03-10 07:00')")
    where = "at AT TIME ZONE 'utc' >= '2024-03-10 07:00:00 utc' AND timezone('Utc', at) IS NOT NULL"
    rows, handle, offset = await engine.sync(table="ev", where=where)
    assert {r["id"] for r in rows.values()} == {"2"}
    engine.sql("INSERT INTO ev VALUES (3, '2024-03-10 06:00'), (4, '2024-03-10 08:00')")
    await engine.follow_live(rows, handle, offset, "4", table="ev", where=where)
    snapshot = {str(r[0]) for r in engine.sql(f"SELECT id FROM ev WHERE {where}")}
    assert {r["id"] for r in rows.values()} == snapshot == {"2", "4"}


async def test_refusals_are_400s(engine: Engine) -> None:
    engine.sql("CREATE TABLE ev (id int PRIMARY KEY, at timestamp)")
    status, _h, body = await engine.get(
        table="ev", offset="-1", where="at AT TIME ZONE 'EST' > now()"
    )
    assert status == 400 and "where" in body["errors"], body
    status, _h, body = await engine.get(
        table="ev", offset="-1", where="at AT TIME ZONE 'EST' > '2024-01-01'"
    )
    assert status == 400, body
    assert 'time zone "EST" is not supported' in body["errors"]["where"][0], body


async def test_a_restored_shape_is_rotated_when_postgres_reads_its_zone_differently(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shape is checked when it is made; after a restart its zones are checked again, as
    either side's tz data may have changed between the runs (here: the engine now reads
    Berlin's rules for Paris, as another tzdata release could). Every request for it is a
    400 then (its where is described anew each time); the restored shape is retired rather
    than kept, unreadable, and fed every change of its table."""
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    where = "at AT TIME ZONE 'Europe/Paris' >= '2024-03-31 01:30:00'"
    client = await aiohttp_client(build_app(settings))
    await asyncio.wait_for(client.app[SOURCES]["default"].ready.wait(), 120)  # not for ever
    first = Engine(client, db_url, tmp_path / "data")
    first.sql("CREATE TABLE ev (id int PRIMARY KEY, at timestamptz)")
    first.sql("INSERT INTO ev VALUES (1, '2024-03-31 00:30:00+00')")
    _, handle, offset = await first.sync(table="ev", where=where)
    await client.close()

    berlin = zone("Europe/Berlin")
    monkeypatch.setattr(zones_module, "zone", lambda key: berlin)
    client2 = await aiohttp_client(build_app(settings))
    await asyncio.wait_for(client2.app[SOURCES]["default"].ready.wait(), 120)  # not for ever
    second = Engine(client2, db_url, tmp_path / "data")
    assert second.source.shape(handle) is None  # retired at load
    for params in ({"offset": offset, "handle": handle, "live": "true"}, {"offset": "-1"}):
        status, _, body = await second.get(table="ev", where=where, **params)
        assert status == 400 and 'time zone "Europe/Paris" is read differently' in str(body)
