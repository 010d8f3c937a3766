"""Checks before the engine listens: its data directory and its database.

A mistake a person must fix (a database that does not exist, a wrong password, a bad
`sslmode`, a role without REPLICATION, `wal_level` not `logical`, a data directory the
engine cannot write) stops the engine with one line saying what to change: retrying would
only fill the log. Postgres not being up yet (connection refused, starting up) is expected
when everything starts at once, so that is retried with "retrying in N s".
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

from .pg.encoding import UnsupportedEncoding, check_encoding
from .tenants.dburl import describe_target
from .tenants.diagnose import explain
from .tenants.store import read_snapshot

logger = logging.getLogger(__name__)

#: Errors that go away by themselves: Postgres is starting, restarting or busy.
_TRANSIENT = (
    "too many clients",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
)


class PermanentError(Exception):
    """A problem only a person can fix; the message says what to change."""


def check_data_dir(path: Path) -> str | None:
    """None when the engine can create, write and read files under `path`, else why not."""
    probe = path / f".write-test-{uuid.uuid4().hex}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        ok = probe.read_bytes() == b"ok"
        probe.unlink()
        os.listdir(path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Full, not unusable: the engine serves what it has and resumes when space returns.
            logger.warning("the data directory %s is full; writes resume when space returns", path)
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
            return None
        return exc.strerror or type(exc).__name__
    return None if ok else "files written there do not read back"


#: Mode bits that let users other than the engine's into the data directory.
OTHERS = 0o077


def keep_private(path: Path) -> None:
    """Close the data directory to other users. Its shape logs hold every synced row of
    every user, columns a policy hides included (the proxy narrows what each client gets;
    the files hold all of it), so any local account able to read them bypasses the proxy.
    The engine makes its files 0600 and directories 0700 (its umask is 077), but a
    directory made before, by an operator or by an older engine under umask 022, is
    usually 0755: closing the top directory closes everything under it. Postgres refuses
    to start on a data directory open to others; the engine closes it and says so, so that
    an upgrade does not stop a running deployment."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # (check_data_dir says what is wrong with it)
    if not mode & OTHERS:
        return
    try:
        os.chmod(path, mode & ~OTHERS)
    except OSError as exc:
        logger.warning(
            "the data directory %s is open to other users (mode %o) and could not be closed"
            " (%s): its shape logs hold every synced row; chmod 700 it",
            path, mode, exc.strerror or type(exc).__name__,
        )  # fmt: skip
        return
    logger.warning(
        "the data directory %s was open to other users (mode %o): now %o, since its shape"
        " logs hold every synced row",
        path, mode, mode & ~OTHERS,
    )  # fmt: skip


#: Bytes `disk_full` tries to write: more than SQLite's shared-memory file (32 kB) needs.
PROBE_BYTES = 64 * 1024


def disk_full(path: Path) -> bool:
    """Whether the filesystem of the directory `path` has no room for a small file (a write
    of `PROBE_BYTES` fails with ENOSPC or EDQUOT; other errors are not a full disk)."""
    probe = path / f".space-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = memoryview(b"\0" * PROBE_BYTES)
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return False


def check_registry(data_dir: Path) -> str | None:
    """None when `<data-dir>/sources.db` is absent or readable, else what is wrong with it.

    On a full disk SQLite cannot open it at all (its WAL index needs space): it is then
    read as it is on disk (`immutable`), to tell a damaged file from a full disk, and the
    engine starts (`app._Registry` opens it once space returns)."""
    path = data_dir / "sources.db"
    if not path.exists():
        return None
    try:
        _read_registry(f"file:{path}?mode=ro")
    except sqlite3.Error as exc:
        if disk_full(data_dir):
            try:
                _read_registry(f"file:{path}?mode=ro&immutable=1")
                return None
            except sqlite3.Error:
                pass
            try:  # content in its WAL and no index file (a crash, a reboot): read as SQLite would
                _read_with_wal(path)
                return None
            except (sqlite3.Error, OSError):
                pass
        return (
            f"cannot read the source registry {path} ({exc}): restore it from a backup, or"
            " move it away and register the sources again"
        )
    return None


def _read_registry(uri: str) -> None:
    db = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        db.execute("SELECT count(*) FROM sources").fetchone()
    finally:
        db.close()


def _read_with_wal(path: Path) -> None:
    """The registry with its WAL applied in memory (`store.read_snapshot`): the main file
    alone may not even have the tables yet, and refusing it would crash-loop the engine."""
    db = read_snapshot(path)
    try:
        db.execute("SELECT count(*) FROM sources").fetchone()
    finally:
        db.close()


def _is_transient(code: str, message: str) -> bool:
    low = message.lower()
    return code == "unreachable" or any(p in low for p in _TRANSIENT)


def _check_once(url: str) -> None:
    """Connect as the engine will (a normal and a replication connection); raise on failure."""
    # (UTF8 as the engine's own sessions: in an SQL_ASCII database psycopg reads text as
    # bytes otherwise: "wal_level is b'logical', not logical" was the CLI's whole message)
    with psycopg.connect(url, autocommit=True, connect_timeout=5, client_encoding="UTF8") as conn:
        try:
            check_encoding(conn)  # (as every source's start does: `pg.encoding`)
        except UnsupportedEncoding as exc:
            raise PermanentError(str(exc)) from None
        row = conn.execute("SHOW wal_level").fetchone()
        level = row[0] if row else "?"
        if level != "logical":
            raise PermanentError(
                f"wal_level is {level}, not logical: set wal_level = logical in"
                " postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart Postgres"
            )
    # The role needs REPLICATION (or superuser, or a managed service's replication role):
    # Postgres checks exactly that when a walsender starts.
    with psycopg.connect(url, autocommit=True, connect_timeout=5, replication="database"):
        pass


def check_database(
    url: str,
    *,
    flag: str,
    max_delay: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    wait: bool = True,
) -> None:
    """Return once the database is usable; raise PermanentError when a person must act.

    Transient failures are logged as a warning with the next delay and retried forever
    (the engine is meant to start before or with its database). With `wait=False` the
    first transient failure returns instead: the engine then serves (503 with a JSON body
    until its source is ready) while the source retries by itself, rather than holding
    its bound port silent, where every request hung until Postgres came up.
    """
    delay = 1.0
    target = describe_target(url)
    while True:
        try:
            _check_once(url)
            return
        except PermanentError as exc:
            raise PermanentError(f"{target}: {exc}") from None
        except psycopg.Error as exc:
            raw = exc.diag.message_primary if exc.diag.message_primary else str(exc)
            raw = " ".join((raw or type(exc).__name__).split())
            diagnosis = explain(raw, url)
            if not _is_transient(diagnosis.code, raw):
                hint = "" if diagnosis.code != "other" else f"; fix {flag}"
                raise PermanentError(f"{diagnosis.message}{hint}") from None
            logger.warning(
                "database %s not reachable yet (%s); retrying in %g s%s",
                target,
                raw,
                delay,
                "" if wait else " (answering 503 meanwhile)",
            )
            if not wait:
                return
            sleep(delay)
            delay = min(delay * 2, max_delay)
