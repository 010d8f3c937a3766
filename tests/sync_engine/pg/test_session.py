"""The engine's connection strings: display settings, and TCP keepalives unless given."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from sync_engine.pg.session import TCP_SETTINGS, redact_dsn, with_display_settings


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
