"""Collations through the real engine: live rows against `SELECT ... WHERE` in databases
whose default locale is not the cluster's C.UTF-8.

Each database here has another default collation (libc `en_US.UTF-8` when the system has
it, a split LC_COLLATE/LC_CTYPE, an ICU default). A shape's where is either refused at
creation with a 400 naming the collation (text order or case mapping the engine cannot
reproduce) or followed live: rows inserted and updated after the snapshot (non-ASCII case
pairs, `ß`, Turkish dotted/dotless i, final sigma) must leave the client holding exactly
Postgres's rows.
"""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from sync_engine.app import SOURCES, build_app
from sync_engine.pg.session import with_display_settings
from tests.support.databases import drop_database
from tests.sync_engine.engine_harness import SETTINGS, Engine, apply, stopped_within
from tests.sync_engine.shapes.where.test_collation import (
    _Clauses,
    _engine_columns,
    _populate,
    _rows,
    _verdict,
)


def _has_locale(name: str) -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout
    wanted = name.lower().replace("-", "")
    return any(line.strip().lower().replace("-", "") == wanted for line in out.splitlines())


#: Database options (constants of this file) by name; libc ones need the system's locale.
DATABASES = {
    "en_US": ("LOCALE 'en_US.UTF-8'", "en_US.utf8"),
    "c_collate_utf8_ctype": ("LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'", None),
    "utf8_collate_c_ctype": ("LC_COLLATE 'C.UTF-8' LC_CTYPE 'C'", None),
    "icu_de": ("LOCALE_PROVIDER icu ICU_LOCALE 'de' LOCALE 'C.UTF-8'", None),
}

WORDS = ["a", "B", "b", "A", "ä", "Ä", "ß", "SS", "İ", "\u0131", "i", "I", "Σ", "\u03c3", "ς", "é", "É",
         "ǅ", "straße", "STRASSE", "z", "Z", ""]  # fmt: skip


@pytest.fixture(params=sorted(DATABASES))
async def located(
    request: pytest.FixtureRequest, aiohttp_client: Any, pg_server_url: str, tmp_path: Path
) -> AsyncIterator[tuple[str, Engine]]:
    """An in-process engine on a new database of default collation `request.param`."""
    options, locale = DATABASES[request.param]
    if locale is not None and not _has_locale(locale):
        pytest.skip(f"the system has no {locale} locale")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE DATABASE {} TEMPLATE template0 ").format(pgsql.Identifier(name))
            + pgsql.SQL(options)  # (a constant of this file)
        )
    url = pg_server_url.rpartition("/")[0] + "/" + name
    try:
        settings = replace(SETTINGS, database_url=url, data_dir=tmp_path / "data")
        client = await aiohttp_client(build_app(settings))
        await client.app[SOURCES]["default"].ready.wait()
        try:
            yield request.param, Engine(client, url, tmp_path / "data")
        finally:
            await stopped_within(client.close(), "the in-process engine")
    finally:
        drop_database(pg_server_url, name)


async def _follow(engine: Engine, where: str, marker: int, writes: list[str]) -> set[str]:
    """Sync the shape, run `writes`, then a marker row, and follow live until it arrives
    (refetching from -1 on a 409 as a client does); the ids the client then holds."""
    rows, handle, offset = await engine.sync(table="x", where=where)
    for w in writes:
        engine.sql(w)
    engine.sql("INSERT INTO x (id) VALUES (%s)", (marker,))
    for _ in range(30):
        status, h, body = await engine.get(
            table="x", where=where, offset=offset, handle=handle, live="true"
        )
        if status == 409:
            rows, handle, offset = await engine.sync(table="x", where=where)
        else:
            assert status == 200, body
            apply(rows, body)
            offset = h["electric-offset"]
        if str(marker) in {r["id"] for r in rows.values()}:
            return {r["id"] for r in rows.values()}
    raise AssertionError("the marker row never arrived")


LIVE_CLAUSES = [
    # (where, refused under: the databases whose default makes the engine refuse it)
    ("c < 'b'", set()),  # column "C"
    ("upper(c) = 'ÄSS' OR lower(c) = 'straße' OR c ILIKE '\u0131%'", set()),
    ("d = 'ß' OR d LIKE 'S%' OR d IN ('İ', 'ς')", set()),  # equality: any deterministic one
    ("d < 'b'", {"en_US", "icu_de"}),
    ("upper(d) = 'ÄSS' OR lower(d) = 'i' OR d ILIKE '\u03c3'", {"en_US", "icu_de"}),
    ("d COLLATE \"C\" BETWEEN 'A' AND 'b' OR upper(d COLLATE \"POSIX\") = 'SS'", set()),
    ("'a' < 'B' OR d = 'z'", {"en_US", "icu_de"}),
    ("greatest(d, c) = 'z'", set()),  # (c's "C" beats the default)
]


async def test_live_rows_equal_postgres_or_the_where_is_refused(
    located: tuple[str, Engine],
) -> None:
    """Each clause: refused with a 400 naming the collation where the database's default
    decides something the engine cannot reproduce, else followed live through inserts and
    updates of non-ASCII text, ending with exactly Postgres's rows."""
    which, engine = located
    engine.sql('CREATE TABLE x (id int PRIMARY KEY, c text COLLATE "C", d text)')
    engine.sql(
        "INSERT INTO x SELECT i, w, w FROM unnest(%s::text[]) WITH ORDINALITY AS u(w, i)",
        (WORDS[::2],),
    )
    marker = 1000
    for where, refused_under in LIVE_CLAUSES:
        if which in refused_under:
            status, _h, body = await engine.get(table="x", offset="-1", where=where)
            assert status == 400, (where, body)
            assert "collation" in body["errors"]["where"][0], body
            continue
        marker += 1
        base = marker * 100
        words = "{" + ",".join(f'"{w}"' for w in WORDS) + "}"  # (no quotes or backslashes)
        writes = [
            f"INSERT INTO x SELECT {base} + i, w, w"
            f" FROM unnest('{words}'::text[]) WITH ORDINALITY AS u(w, i)",
            # rows moving in and out by UPDATE
            f"UPDATE x SET c = upper(c), d = lower(d) WHERE id BETWEEN {base} AND {base + 8}",
            f"UPDATE x SET c = 'ß', d = 'SS' WHERE id = {base + 9}",
        ]
        shape = f"({where}) OR id = {marker}"
        got = await _follow(engine, shape, marker, writes)
        expected = {str(r[0]) for r in engine.sql(f"SELECT id FROM x WHERE {shape}")}
        assert got == expected, (which, where, sorted(got ^ expected))


@pytest.mark.parametrize(
    ("where", "new_type", "after"),
    [
        # code point order under "C"; ICU's root order puts 'b' before 'B'
        ("c < 'b'", 'text COLLATE "und-x-icu"', 400),
        # Unicode case mapping under C.UTF-8, ASCII-only under "C": upper('é') is 'é'
        ("upper(d) = 'É'", 'text COLLATE "C"', 200),
    ],
)
async def test_a_column_collation_changed_under_a_live_shape(
    engine: Engine, where: str, new_type: str, after: int
) -> None:
    """`ALTER COLUMN ... TYPE text COLLATE ...` rewrites no row (same type, same
    relfilenode) yet changes how Postgres compares the column. A shape made before must not
    go on judging new rows by the old collation: its clients get a 409 and the refetch
    gets what a new client gets (the 400 naming the collation, or the new rows)."""
    engine.sql('CREATE TABLE x (id int PRIMARY KEY, c text COLLATE "C", d text)')
    engine.sql("INSERT INTO x VALUES (1, 'a', 'é')")
    column = "c" if where.startswith("c") else "d"
    shape = f"({where}) OR id = 100"
    rows, handle, offset = await engine.sync(table="x", where=shape)
    assert {r["id"] for r in rows.values()} == {"1"}
    engine.sql(f"ALTER TABLE x ALTER COLUMN {column} TYPE {new_type}")
    engine.sql("INSERT INTO x VALUES (2, 'B', 'é'), (100, NULL, NULL)")
    for _ in range(30):
        status, h, body = await engine.get(
            table="x", where=shape, offset=offset, handle=handle, live="true"
        )
        if status == 409:
            break
        assert status == 200, body
        apply(rows, body)
        offset = h["electric-offset"]
        # (the shape went on: its rows must be Postgres's now)
        if "100" in {r["id"] for r in rows.values()}:
            expected = {str(r[0]) for r in engine.sql(f"SELECT id FROM x WHERE {shape}")}
            assert {r["id"] for r in rows.values()} == expected
            raise AssertionError("the shape went on after its column's collation changed")
    status, _h, body = await engine.get(table="x", where=shape, offset="-1")
    assert status == after, body
    if after == 400:
        assert "collation" in body["errors"]["where"][0], body
    else:
        rows, _handle, _offset = await engine.sync(table="x", where=shape)
        expected = {str(r[0]) for r in engine.sql(f"SELECT id FROM x WHERE {shape}")}
        assert {r["id"] for r in rows.values()} == expected


@pytest.mark.parametrize("which", sorted(DATABASES))
def test_random_clauses_in_other_locales(pg_server_url: str, which: str) -> None:
    """test_collation's random clauses (columns "C", "POSIX", default, ICU; literals, COLLATE,
    upper/lower, ||, GREATEST, NULLIF, LIKE/ILIKE, IN, BETWEEN, ANY) in these databases,
    with the table analyzed (some plans read statistics): each clause the engine accepts
    answers as Postgres does; what Postgres refuses, the engine refuses. Out of tree
    (/work/wherefuzz/collfz.py) 19 database locales and encodings x 1,500 clauses a seed."""
    options, locale = DATABASES[which]
    if locale is not None and not _has_locale(locale):
        pytest.skip(f"the system has no {locale} locale")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE DATABASE {} TEMPLATE template0 ").format(pgsql.Identifier(name))
            + pgsql.SQL(options)  # (a constant of this file)
        )
    try:
        url = with_display_settings(pg_server_url.rpartition("/")[0] + "/" + name)
        verdicts: dict[str, int] = {}
        with psycopg.connect(url, autocommit=True) as conn:
            _populate(conn)
            conn.execute("ANALYZE x")
            rows, columns = _rows(conn, "x"), _engine_columns(url, "x")
            gen = _Clauses(random.Random(20261206))
            for _ in range(300):
                verdict = _verdict(conn, "x", columns, rows, gen.clause())
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
        assert verdicts.get("agrees", 0) >= 50, verdicts
        assert verdicts.get("refused as Postgres", 0) >= 20, verdicts
    finally:
        drop_database(pg_server_url, name)
