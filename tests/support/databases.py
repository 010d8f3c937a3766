"""Throwaway databases on the test cluster: created fresh, dropped with their slots."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql


def create_database(server_url: str) -> tuple[str, str]:
    """A new empty database; returns its name and URL."""
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    base, _, _ = server_url.rpartition("/")
    return dbname, f"{base}/{dbname}"


@contextmanager
def latin1_database(server_url: str) -> Iterator[str]:
    """A new empty LATIN1 database (locale C) for its URL, dropped after: where the engine
    must know the database encoding (Postgres counts, cuts and compares in it)."""
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'").format(
                sql.Identifier(dbname)
            )
        )
    try:
        yield f"{server_url.rpartition('/')[0]}/{dbname}"
    finally:
        drop_database(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    """Drop a test database, its replication slots and any backend still connected.

    New connections are refused first: an engine still running makes its slot again when
    it is dropped under it, and a slot blocks DROP DATABASE.
    """
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(dbname))
        )
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE database = %s AND active_pid IS NOT NULL",
            (dbname,),
        )
        for _ in range(50):
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s", (dbname,)
            ).fetchall()
            if not rows:
                break
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                (dbname,),
            )
            for slot, active in rows:
                if not active:
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    except psycopg.Error:
                        pass
            time.sleep(0.1)
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
