"""The engine's connection strings: display settings, and TCP keepalives unless given."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from sync_engine.pg.session import TCP_SETTINGS, with_display_settings


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
