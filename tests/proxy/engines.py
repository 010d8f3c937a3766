"""A real engine on a database of its own, for a module's tests to share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.support.databases import create_database, drop_database
from tests.support.engine_process import EngineProcess


@contextmanager
def engine_on_a_new_database(
    pg_server_url: str, data_dir: Path, secret: str, *setup_sql: str, args: tuple[str, ...] = ()
) -> Iterator[EngineProcess]:
    """A real `sync-engine` (`secret`, `args`) on a database of its own made by `setup_sql`;
    stopped and the database dropped after. Used by module-scoped fixtures: each test
    starting its own engine cost ~2 s in CI, and most tests only read."""
    dbname, db_url = create_database(pg_server_url)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for statement in setup_sql:
                conn.execute(statement)
        # (a stream id of its own: slot names are per cluster, and a test's own engine on
        # another database of it, with the default id, took this engine's slot from under
        # it: every shape it served was retired, a 409 at a client's own tip)
        engine = EngineProcess(
            db_url, data_dir, "--secret", secret, "--replication-stream-id", dbname, *args
        )
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()
    finally:
        drop_database(pg_server_url, dbname)
