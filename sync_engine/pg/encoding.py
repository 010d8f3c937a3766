"""The database encodings the engine refuses to serve, and the one check that says so.

An SQL_ASCII database stores whatever bytes a client sends, unchecked. The walsender
converts each change to the engine's client encoding (UTF8), and a value that is not
UTF-8 fails that conversion: the replication stream stops at that change, again at every
retry, and every shape of the source stops following (fidelity 08:39). No per-value answer
exists for it, so such a database is refused by name wherever a source's connection is
first checked: the CLI's preflight (`preflight._check_once`), a source's start
(`Tables.prepare`, which every source goes through, whether given on the command line or
registered through the admin API) and, so that the admin API answers a 400 rather than
registering a source that can never serve, registration (`SourceManager.create`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from .session import engine_conninfo

#: Encodings a source's database may not have, each with why.
REFUSED = {
    "SQL_ASCII": (
        "its text need not be UTF-8, and one value that is not would stop replication for"
        " every shape"
    ),
}

#: The fix the refusal names.
FIX = (
    "use a database created with ENCODING 'UTF8' (pg_dump this one and restore it into"
    " one: CREATE DATABASE ... TEMPLATE template0 ENCODING 'UTF8')"
)

#: Seconds registration gives the database to say its encoding (unreachable: registered,
#: and its start checks again).
REGISTER_CHECK_TIMEOUT = 3.0


class UnsupportedEncoding(RuntimeError):
    """The database's encoding is one the engine refuses (`REFUSED`); the message says
    which and what to do. A RuntimeError: a source's start takes it as permanent."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        super().__init__(f"the database's encoding is {encoding}: {REFUSED[encoding]}; {FIX}")


def check_encoding(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Raise UnsupportedEncoding when `conn`'s database has a refused encoding (read from
    the parameters the server sent at login: no round trip)."""
    encoding = conn.info.parameter_status("server_encoding")
    if encoding in REFUSED:
        raise UnsupportedEncoding(encoding)


async def refused_encoding(database_url: str) -> UnsupportedEncoding | None:
    """The refusal of the database at `database_url` if it answers within
    `REGISTER_CHECK_TIMEOUT` with a refused encoding; None otherwise (fine, or not known
    now: unreachable, wrong password; the source's start says what is wrong then)."""
    try:
        async with asyncio.timeout(REGISTER_CHECK_TIMEOUT):
            conn = await psycopg.AsyncConnection.connect(
                engine_conninfo(database_url), autocommit=True, connect_timeout=3
            )
            try:
                check_encoding(conn)
            finally:
                await conn.close()
    except UnsupportedEncoding as exc:
        return exc
    except (psycopg.Error, TimeoutError, OSError):
        return None
    return None
