"""Which source and which database a source's data directory holds the shapes of.

A source's directory (`data/sources/<id>/`, or the data dir of `--database-url`) carries
nothing else naming its database: two directories swapped in a restore, or a data dir
pointed at another database, were served under the wrong credentials whenever their table
OIDs and LSNs happened to line up (two tenant databases made by the same migrations on fresh
clusters do). So each directory holds `identity.json`: the source's id, the cluster's
`system_identifier` and the database's OID. A start that finds another identity retires
every shape of the directory (their clients refetch from this database) and writes the
right one; a directory without the file (made before it existed) gets it, as it is.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection

FILE_NAME = "identity.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    source_id: str
    #: The cluster's (`pg_control_system()`), None where the role may not read it.
    system_identifier: str | None
    database_oid: int


async def database_identity(conn: AsyncConnection[Any], source_id: str) -> Identity:
    """The identity of the database `conn` (autocommit) is connected to."""
    row = await (
        await conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
    ).fetchone()
    assert row is not None
    try:
        sysid = await (
            await conn.execute("SELECT system_identifier::text FROM pg_control_system()")
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        sysid = None  # (the OID alone then: still tells most databases apart)
    return Identity(source_id, sysid[0] if sysid else None, int(row[0]))


def read_identity(data_dir: Path) -> Identity | None:
    """The identity written in `data_dir`, None when there is none (or it is unreadable:
    then it is written again, and the check it serves is off for that start only)."""
    try:
        raw = json.loads((data_dir / FILE_NAME).read_bytes())
        return Identity(
            str(raw["source_id"]),
            None if raw["system_identifier"] is None else str(raw["system_identifier"]),
            int(raw["database_oid"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        # (said: it was rewritten silently, the check it serves off with no line, chaos 17:00)
        logger.warning(
            "%s is damaged (%s): written again; whether this data directory is this"
            " database's is not checked at this start (the replication slot still is)",
            data_dir / FILE_NAME,
            type(exc).__name__,
        )
        return None


def differs(saved: Identity, current: Identity) -> str | None:
    """What differs between the identity a directory was written for and the database's,
    None if they match. An unknown system identifier (not readable) is not a difference."""
    if saved.source_id != current.source_id:
        return f"it was written for source {saved.source_id}, not {current.source_id}"
    known = saved.system_identifier is not None and current.system_identifier is not None
    if known and saved.system_identifier != current.system_identifier:
        return (
            f"it was written for the Postgres cluster {saved.system_identifier}, and the"
            f" database is on {current.system_identifier}"
        )
    if saved.database_oid != current.database_oid:
        return (
            f"it was written for the database of OID {saved.database_oid}, and this one's is"
            f" {current.database_oid}"
        )
    return None


def write_identity(data_dir: Path, identity: Identity, fsync: bool) -> None:
    """Write `identity` in `data_dir`, whole or not at all (a file beside it, renamed)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = data_dir / (FILE_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(asdict(identity)).encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, data_dir / FILE_NAME)
    if fsync:
        dfd = os.open(data_dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
