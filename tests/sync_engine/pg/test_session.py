"""The engine's connection strings: display settings, and TCP keepalives unless given."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from sync_engine.pg.session import TCP_SETTINGS, engine_conninfo, redact_dsn, with_display_settings
from tests.sync_engine.engine_harness import Engine


def test_keepalives_are_added_unless_the_url_sets_them() -> None:
    added = conninfo_to_dict(with_display_settings("postgresql://u@db.example/app"))
    assert {k: added[k] for k in TCP_SETTINGS} == TCP_SETTINGS
    assert "-c TimeZone=UTC" in str(added["options"])
    own = conninfo_to_dict(
        with_display_settings("postgresql://u@db.example/app?keepalives_idle=60&keepalives=0")
    )
    assert (own["keepalives_idle"], own["keepalives"]) == ("60", "0")
    assert own["tcp_user_timeout"] == TCP_SETTINGS["tcp_user_timeout"]


def test_a_connection_with_them_works(db_url: str) -> None:
    with psycopg.connect(with_display_settings(db_url)) as conn:
        row = conn.execute("SHOW TimeZone").fetchone()
    assert row == ("UTC",)


def test_redact_dsn_drops_every_secret_parameter() -> None:
    url = (
        "postgresql://u:pw-1@db.example:5433/app?sslpassword=pass-2&oauth_client_secret=oauth-3"
        "&sslmode=require&options=-c%20search_path%3Dx"
    )
    shown = redact_dsn(url)
    for secret in ("pw-1", "pass-2", "oauth-3", "search_path"):
        assert secret not in shown
    assert conninfo_to_dict(shown) == {
        "user": "u", "host": "db.example", "port": "5433", "dbname": "app", "sslmode": "require",
    }  # fmt: skip
    assert redact_dsn("postgresql://u@h/d?sslpassword") == "<unparseable connection string>"


async def test_a_database_cannot_change_how_the_engine_s_sql_is_read(engine: Engine) -> None:
    """A database (or role) may set how Postgres reads SQL. With these three settings off
    their defaults, the snapshot of `v = NULL` returned the row whose v is NULL (live
    changes, evaluated by the engine, never match it), `'{NULL}'::text[]` was an array of
    the string 'NULL', and a backslash in '...' was an escape."""
    dbname = str(conninfo_to_dict(engine.db_url)["dbname"])
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        for setting, value in [
            ("transform_null_equals", "on"),
            ("array_nulls", "off"),
            ("standard_conforming_strings", "off"),
        ]:
            conn.execute(
                pgsql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    pgsql.Identifier(dbname), pgsql.Identifier(setting), pgsql.Literal(value)
                )
            )
    engine.sql("CREATE TABLE t (id int PRIMARY KEY, v text, a text[])")
    engine.sql(
        "INSERT INTO t VALUES (1, NULL, '{x}'), (2, %s, ARRAY[NULL]), (3, 'b', NULL)", ("a\\b",)
    )
    rows, _handle, _offset = await engine.sync(table="t", where="v = NULL")
    assert rows == {}
    rows, _handle, _offset = await engine.sync(table="t", where="a = '{NULL}'")
    assert [r["id"] for r in rows.values()] == ["2"]
    rows, _handle, _offset = await engine.sync(table="t", where="v = 'a\\b'")
    assert [r["id"] for r in rows.values()] == ["2"]


async def test_a_function_a_database_user_adds_is_never_run_by_the_engine(engine: Engine) -> None:
    """A user who may create functions in `public` (any role, before PG15; the database's
    owner still) added `public.lower(varchar)`: a better match for a varchar column than
    Postgres's `lower(text)`, so the snapshot of `lower(name) LIKE 'hijacked%'` ran it with
    the engine's rights and returned the row, while live changes, judged by the engine's
    own `lower`, never matched. The engine's SQL resolves names in `pg_catalog` only."""
    engine.sql("CREATE TABLE vt (id int PRIMARY KEY, name varchar(20))")
    engine.sql("CREATE TABLE calls (who text)")
    engine.sql(
        "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS"
        " $$ INSERT INTO calls VALUES (current_user) RETURNING 'hijacked' $$"
    )
    engine.sql("INSERT INTO vt VALUES (1, 'Alice'), (2, 'BOB')")
    rows, handle, offset = await engine.sync(table="vt", where="lower(name) LIKE 'hijacked%'")
    assert rows == {}
    rows, handle, offset = await engine.sync(table="vt", where="lower(name) = 'alice'")
    assert [r["id"] for r in rows.values()] == ["1"]
    engine.sql("INSERT INTO vt VALUES (3, 'ALICE'), (4, 'carol')")
    offset = await engine.follow_live(
        rows, handle, offset, until_id="3", table="vt", where="lower(name) = 'alice'"
    )
    assert sorted(r["id"] for r in rows.values()) == ["1", "3"]
    assert engine.sql("SELECT count(*) FROM calls") == [(0,)]


def test_a_database_s_encoding_and_zone_abbreviations_do_not_reach_the_engine(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine reads every byte as UTF-8 and evaluates '... EST' with Postgres's default
    abbreviations: a database's (or the environment's) `client_encoding` and
    `timezone_abbreviations` must not reach its sessions. They did: LATIN1 text served as
    raw bytes (test_client_encoding_setting.py); EST read as +10 by snapshots under
    `Australia` while long-lived sessions read -5 (wherefuzz 20:30)."""
    dbname = str(conninfo_to_dict(db_url)["dbname"])
    with psycopg.connect(db_url, autocommit=True) as conn:
        for setting, value in [
            ("client_encoding", "LATIN1"),
            ("timezone_abbreviations", "Australia"),
        ]:
            conn.execute(
                pgsql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    pgsql.Identifier(dbname), pgsql.Identifier(setting), pgsql.Literal(value)
                )
            )
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    with psycopg.connect(engine_conninfo(db_url)) as conn:
        row = conn.execute(
            "SELECT current_setting('client_encoding'),"
            " current_setting('timezone_abbreviations'),"
            " '2024-01-01 12:00 EST'::timestamptz::text"
        ).fetchone()
    assert row == ("UTF8", "Default", "2024-01-01 17:00:00+00")
