"""The store of registered sources: a small SQLite database, `<data-dir>/sources.db` (WAL mode).

One row per source: id (uuid4), unique name, connection string, secret hash, the previous
secret's hash and when it stops working (rotation grace period), last known state and
error, paused flag, per-source limits and timestamps. The file is created readable by its
owner only, since connection strings carry passwords. Every method is one short
transaction; a failed one changes nothing.

A deleted source leaves its id in `deleted_sources`: once a source was ever registered, a
request naming a `source_id` is for a registered source (or a 401), never for the engine's
single database, even after the last source is deleted (see `SourceManager.has_sources`).
Its connection string stays there until its replication slot and publication are dropped
(`cleanup_pending`, `cleaned`): the deletion is recorded first, so a crash or an unreachable
database mid-deletion leaves a cleanup to finish, never a source half there.

A source is created with `secret_delivered` 0 and marked 1 once the answer carrying a
secret of it was sent (`mark_delivered`): a source still at 0 is one whose creation's
answer may have been lost (the engine killed before it, the client gone), or sent with the
engine killed before it could record that. Until then its first secret is kept sealed
(`pending_secret`, credentials.seal_secret), and a retry of the same creation is answered
with that same secret (`SourceManager.create`): a client that got the first answer keeps a
working secret. Marking it delivered, or any rotation, forgets the sealed secret.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from .dburl import redact_url
from .errors import DuplicateName, UnknownSource

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    source_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    database_url TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    previous_secret_hash TEXT,
    previous_secret_expires_at REAL,
    grace_checked_at REAL,
    secret_rotated_at REAL,
    state TEXT NOT NULL DEFAULT 'connecting',
    last_error TEXT,
    last_error_at REAL,
    paused INTEGER NOT NULL DEFAULT 0,
    secret_delivered INTEGER NOT NULL DEFAULT 1,
    pending_secret TEXT,
    max_shapes INTEGER,
    max_initial_syncs INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deleted_sources (
    source_id TEXT PRIMARY KEY,
    deleted_at REAL NOT NULL
);
"""
# Columns added since schema 2 (ALTER TABLE for an older store): `deleted_sources`'
# in schema 3, `sources.secret_delivered` in schema 4 (older sources: delivered),
# `sources.pending_secret` in schema 5, `sources.grace_checked_at` in schema 6.
_ADDED_COLUMNS = {
    "deleted_sources": {"database_url": "TEXT", "cleaned": "INTEGER NOT NULL DEFAULT 1"},
    "sources": {
        "secret_delivered": "INTEGER NOT NULL DEFAULT 1",
        "pending_secret": "TEXT",
        "grace_checked_at": "REAL",
    },
}
_VERSION = 6
#: Older schemas a store may be used on as it is, when its upgrade cannot be written
_OLDER = (3, 4, 5)
BUSY_WAIT = 1.0
_INSERT = {
    6: "INSERT INTO sources (source_id, name, database_url, secret_hash, state, paused,"
    " secret_delivered, max_shapes, max_initial_syncs, created_at, updated_at,"
    " pending_secret) VALUES (?, ?, ?, ?, 'connecting', 0, 0, ?, ?, ?, ?, ?)",
    5: "INSERT INTO sources (source_id, name, database_url, secret_hash, state, paused,"
    " secret_delivered, max_shapes, max_initial_syncs, created_at, updated_at,"
    " pending_secret) VALUES (?, ?, ?, ?, 'connecting', 0, 0, ?, ?, ?, ?, ?)",
    4: "INSERT INTO sources (source_id, name, database_url, secret_hash, state, paused,"
    " secret_delivered, max_shapes, max_initial_syncs, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, 'connecting', 0, 0, ?, ?, ?, ?)",
    3: "INSERT INTO sources (source_id, name, database_url, secret_hash, state, paused,"
    " max_shapes, max_initial_syncs, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, 'connecting', 0, ?, ?, ?, ?)",
}
_COLUMNS = (
    "source_id, name, database_url, secret_hash, previous_secret_hash,"
    " previous_secret_expires_at, grace_checked_at, secret_rotated_at, state, last_error,"
    " last_error_at, paused,"
    " secret_delivered, pending_secret, max_shapes,"
    " max_initial_syncs, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    source_id: str
    name: str
    database_url: str = field(repr=False)
    secret_hash: str = field(repr=False)
    previous_secret_hash: str | None = field(default=None, repr=False)
    #: When the previous secret stops working, by the wall clock: shown, and what a later
    #: start counts from; not what this process checks (`previous_secret_deadline`).
    previous_secret_expires_at: float | None = None
    #: Wall clock time when `previous_secret_expires_at` was last set from this process's
    #: monotonic deadline (schema 6 on): a start counts the time since then, never less
    #: than 0, so a clock set back while the engine was stopped does not lengthen a grace.
    grace_checked_at: float | None = None
    #: When the previous secret stops working, by `time.monotonic()` in this process
    #: (computed when read from the store or rotated: see `grace_deadline`).
    previous_secret_deadline: float | None = field(default=None, compare=False)
    secret_rotated_at: float | None = None
    state: str = "connecting"
    last_error: str | None = None
    last_error_at: float | None = None
    paused: bool = False
    #: False from its creation until the answer carrying its first secret was sent
    secret_delivered: bool = True
    #: that first secret, sealed, while `secret_delivered` is False (schema 5 on)
    pending_secret: str | None = field(default=None, repr=False)
    max_shapes: int | None = None
    max_initial_syncs: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def redacted_url(self) -> str:
        return redact_url(self.database_url)

    def valid_hashes(self, mono: float | None = None) -> list[str]:
        """The hashes a request's secret may match at `mono` (`time.monotonic()`, default
        now): current, and previous in its grace period. Monotonic: the wall clock stepped
        (NTP, an operator) neither lengthens nor shortens a grace period under way."""
        hashes = [self.secret_hash]
        if self.in_grace(mono):
            assert self.previous_secret_hash is not None
            hashes.append(self.previous_secret_hash)
        return hashes

    def in_grace(self, mono: float | None = None) -> bool:
        """Whether the previous secret still works at `mono` (default now)."""
        mono = time.monotonic() if mono is None else mono
        return (
            self.previous_secret_hash is not None
            and self.previous_secret_deadline is not None
            and mono < self.previous_secret_deadline
        )

    def grace_left(self, mono: float | None = None) -> float:
        """Seconds the previous secret still works (0 when it does not)."""
        if self.previous_secret_deadline is None:
            return 0.0
        mono = time.monotonic() if mono is None else mono
        return max(0.0, self.previous_secret_deadline - mono)


def grace_deadline(
    expires: float | None,
    checked: float | None,
    rotated: float | None,
    *,
    wall: float | None = None,
    mono: float | None = None,
) -> float | None:
    """The monotonic deadline of a grace period stored by wall clock times.

    A process's monotonic clock is the one a clock step does not move, but it does not
    survive a restart; the wall clock does, but NTP or an operator may step it. So a
    running engine checks grace periods by the monotonic clock only, and records by the
    wall clock what is left (`previous_secret_expires_at`, re-anchored at `grace_checked_at`
    every minute and when it stops). A start counts the time since that record by the wall
    clock, never less than 0: a clock set back while the engine was stopped does not
    lengthen a grace period; a clock set forward while it was stopped cannot be told from
    time passing and shortens it."""
    if expires is None:
        return None
    wall = time.time() if wall is None else wall
    mono = time.monotonic() if mono is None else mono
    anchor = checked if checked is not None else rotated if rotated is not None else wall
    left = (expires - anchor) - max(0.0, wall - anchor)
    return mono + left


def _record(row: sqlite3.Row) -> SourceRecord:
    expires, checked = row["previous_secret_expires_at"], row["grace_checked_at"]
    return SourceRecord(
        grace_checked_at=checked,
        previous_secret_deadline=grace_deadline(expires, checked, row["secret_rotated_at"]),
        source_id=row["source_id"],
        name=row["name"],
        database_url=row["database_url"],
        secret_hash=row["secret_hash"],
        previous_secret_hash=row["previous_secret_hash"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        secret_rotated_at=row["secret_rotated_at"],
        state=row["state"],
        last_error=row["last_error"],
        last_error_at=row["last_error_at"],
        paused=bool(row["paused"]),
        secret_delivered=bool(row["secret_delivered"]),
        pending_secret=row["pending_secret"],
        max_shapes=row["max_shapes"],
        max_initial_syncs=row["max_initial_syncs"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class StoreReadOnly(sqlite3.OperationalError):
    """sources.db is open read-only (it could not be opened for writing) and still cannot
    be: nothing was written."""


class SourceStore:
    """sources.db. Opened for writing; when that fails at start (a full disk: SQLite cannot
    make its WAL files; a read-only mount), opened read-only instead, the sources as they
    are on disk (`read_only`): served as usual, every write refused (`StoreReadOnly`, the
    admin API's 503) until the file can be opened for writing again, which each write and
    `try_writable` attempt."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: why it is open read-only (None: open for writing)
        self.read_only: str | None = None
        self._columns = _COLUMNS
        #: the schema it is used on: an older one kept as it is when its upgrade could not
        #: be written (3: no `secret_delivered`; 4: no `pending_secret`)
        self._schema = _VERSION
        try:
            self._db = self._open_writable()
        except (sqlite3.OperationalError, OSError) as exc:
            self._db = self._open_read_only(exc)
            self.read_only = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "%s cannot be opened for writing (%s): read-only, the sources as they are on"
                " disk; adding, changing or deleting sources is refused until it can be",
                path,
                exc,
            )

    def _open_writable(self) -> sqlite3.Connection:
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        # Only this process writes it (the CLI goes through the admin API), in the manager's
        # store thread: another process holding its lock (an operator's sqlite3 shell) holds
        # an admin request up to 1 s, then it fails (503 store_unavailable, nothing changed).
        db = sqlite3.connect(path, timeout=BUSY_WAIT, isolation_level=None,
                             check_same_thread=False)  # fmt: skip
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            # forgotten values (a creation's sealed secret) are overwritten, not left in
            # free pages of the file
            db.execute("PRAGMA secure_delete=ON")
            version = self._version(db)
            schema = _VERSION
            if version != _VERSION:  # no write when it is current
                try:
                    _upgrade(db)
                except sqlite3.OperationalError as exc:
                    if version not in _OLDER:
                        raise
                    # A full disk (or a lock held) must not stop a start after an upgrade
                    # either: run on the old schema until a later start can write the
                    # upgrade.
                    logger.warning(
                        "%s: could not upgrade it to schema %d (%s); running on schema %d: a"
                        " creation whose answer is lost must be recovered by rotating its"
                        " secret",
                        path,
                        _VERSION,
                        exc,
                        version,
                    )
                    schema = version
        except BaseException:
            db.close()
            raise
        self._run_on_schema(schema)
        return db

    def _open_read_only(self, cause: BaseException) -> sqlite3.Connection:
        """The store as it is on disk, never written, or raise `cause`. After a clean stop
        SQLite has removed its WAL files and the main file holds everything: it is read as
        it is (`immutable`: no WAL index needed, which a full disk has no room for). A WAL
        with content (a crash) must be read with it (a rotation in it not read would bring
        an old secret back): SQLite reads it when its index file is still there; when that
        is gone too (and cannot be made: no space), the WAL is applied in memory
        (`read_snapshot`)."""
        path = self.path
        wal = path.with_name(path.name + "-wal")
        main_size = path.stat().st_size if path.exists() else 0
        wal_size = wal.stat().st_size if wal.exists() else 0
        try:
            if main_size == 0 and wal_size == 0:  # never written: no source registered
                db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                _upgrade(db)
            else:
                mode = "ro&immutable=1" if wal_size == 0 else "ro"
                db = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True,
                                     timeout=BUSY_WAIT, isolation_level=None,
                                     check_same_thread=False)  # fmt: skip
            db.row_factory = sqlite3.Row
            try:
                version = self._version(db)
                db.execute("SELECT count(*) FROM sources").fetchone()
            except BaseException:
                db.close()
                raise
        except sqlite3.Error as exc:
            try:
                db = read_snapshot(path)
                version = self._version(db)
            except (sqlite3.Error, OSError) as again:
                logger.error(
                    "%s cannot be read either (%s; %s): it is not served until it can be"
                    " opened for writing; if the disk has space, restore it from a backup",
                    path,
                    exc,
                    again,
                )
                raise cause from None
            logger.warning(
                "%s: SQLite cannot read it in place (%s); read with its WAL applied in memory",
                path,
                exc,
            )
        if version not in (*_OLDER, _VERSION):
            db.close()
            raise cause
        self._run_on_schema(version)
        return db

    def _version(self, db: sqlite3.Connection) -> int:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > _VERSION:
            raise RuntimeError(
                f"{self.path} was written by a newer shapegate (schema {version} > {_VERSION})"
            )
        return version

    def _run_on_schema(self, schema: int) -> None:
        self._schema = schema
        columns = _COLUMNS
        if schema < 6:
            columns = columns.replace("grace_checked_at", "NULL AS grace_checked_at")
        if schema < 5:
            columns = columns.replace("pending_secret", "NULL AS pending_secret")
        if schema < 4:
            columns = columns.replace("secret_delivered", "1 AS secret_delivered")
        self._columns = columns

    def try_writable(self) -> bool:
        """Open it for writing if it is open read-only and that works now (space returned).
        True when it is open for writing."""
        if self.read_only is None:
            return True
        try:
            db = self._open_writable()
        except (sqlite3.OperationalError, OSError) as exc:
            logger.debug("%s still cannot be opened for writing: %s", self.path, exc)
            return False
        self._db.close()
        self._db, self.read_only = db, None
        logger.info("%s is open for writing again", self.path)
        return True

    def _writable(self) -> None:
        if not self.try_writable():
            raise StoreReadOnly(
                f"{self.path.name} is open read-only: it could not be opened for writing at"
                f" start ({self.read_only}) and still cannot be (is the disk full?)"
            )

    def close(self) -> None:
        self._db.close()

    # -- reads ----------------------------------------------------------------------------

    def all(self) -> list[SourceRecord]:
        rows = self._db.execute(f"SELECT {self._columns} FROM sources ORDER BY created_at, name")  # noqa: S608
        return [_record(r) for r in rows.fetchall()]

    def get(self, source_id: str) -> SourceRecord:
        row = self._db.execute(
            f"SELECT {self._columns} FROM sources WHERE source_id = ?",  # noqa: S608
            (source_id,),
        ).fetchone()
        if row is None:
            raise UnknownSource(f"no source with id {source_id}")
        return _record(row)

    def find_name(self, name: str) -> SourceRecord | None:
        """The source with this name (compared case-insensitively, as names are unique)."""
        row = self._db.execute(
            f"SELECT {self._columns} FROM sources WHERE name = ?",  # noqa: S608
            (name,),
        ).fetchone()
        return None if row is None else _record(row)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM sources").fetchone()[0])

    def ever_had_sources(self) -> bool:
        """Whether a source was ever registered here (and maybe deleted since)."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM sources) OR EXISTS (SELECT 1 FROM deleted_sources)"
        ).fetchone()
        return bool(row[0])

    # -- writes ---------------------------------------------------------------------------

    def create(
        self,
        name: str,
        database_url: str,
        secret_hash: str,
        *,
        max_shapes: int | None = None,
        max_initial_syncs: int | None = None,
        now: float | None = None,
        source_id: str | None = None,
        pending_secret: str | None = None,
    ) -> SourceRecord:
        """A new source, its secret not yet delivered (`secret_delivered` marks that) and
        kept as `pending_secret` (sealed) until then."""
        self._writable()
        now = time.time() if now is None else now
        schema = self._schema
        rec = SourceRecord(
            source_id=source_id or str(uuid.uuid4()),
            name=name,
            database_url=database_url,
            secret_hash=secret_hash,
            secret_delivered=schema < 4,
            pending_secret=pending_secret if schema >= 5 else None,
            max_shapes=max_shapes,
            max_initial_syncs=max_initial_syncs,
            created_at=now,
            updated_at=now,
        )
        values: tuple[object, ...] = (
            rec.source_id,
            name,
            database_url,
            secret_hash,
            max_shapes,
            max_initial_syncs,
            now,
            now,
        )
        if schema >= 5:
            values += (rec.pending_secret,)  # (the last column of schemas 5 and 6)
        try:
            self._db.execute(_INSERT[schema], values)
        except sqlite3.IntegrityError:
            raise DuplicateName(f"a source named {name!r} already exists") from None
        return rec

    def rotate_secret(
        self, source_id: str, new_hash: str, grace_seconds: float, now: float | None = None
    ) -> SourceRecord:
        """Make `new_hash` current; the old secret keeps working for `grace_seconds`. A
        creation's sealed secret is forgotten: a retry of that creation can no longer be
        answered with it (it is a 409)."""
        self._writable()
        now = time.time() if now is None else now
        mono = time.monotonic()
        current = self.get(source_id)
        previous, expires, deadline = (
            (current.secret_hash, now + grace_seconds, mono + grace_seconds)
            if grace_seconds > 0
            else (None, None, None)
        )
        pending = ", pending_secret = NULL" if self._schema >= 5 else ""
        checked = ", grace_checked_at = NULL" if self._schema >= 6 else ""
        self._db.execute(
            "UPDATE sources SET secret_hash = ?, previous_secret_hash = ?,"  # noqa: S608
            f" previous_secret_expires_at = ?, secret_rotated_at = ?, updated_at = ?{pending}"
            f"{checked} WHERE source_id = ?",
            (new_hash, previous, expires, now, now, source_id),
        )
        return replace(
            current,
            secret_hash=new_hash,
            previous_secret_hash=previous,
            previous_secret_expires_at=expires,
            grace_checked_at=None,
            previous_secret_deadline=deadline,
            secret_rotated_at=now,
            updated_at=now,
            pending_secret=None,
        )

    def record_grace(self, source_id: str, left: float, now: float | None = None) -> None:
        """Record that the previous secret of the source works `left` seconds more, as of
        `now` (wall clock): what a later start counts from (`grace_deadline`)."""
        if self._schema < 6:
            return
        self._writable()
        now = time.time() if now is None else now
        self._db.execute(
            "UPDATE sources SET previous_secret_expires_at = ?, grace_checked_at = ?"
            " WHERE source_id = ? AND previous_secret_hash IS NOT NULL",
            (now + left, now, source_id),
        )

    def mark_delivered(self, source_id: str) -> None:
        """The answer carrying the source's first secret was sent: forget it (sealed)."""
        if self._schema < 4:
            return
        self._writable()
        pending = ", pending_secret = NULL" if self._schema >= 5 else ""
        self._db.execute(
            f"UPDATE sources SET secret_delivered = 1{pending} WHERE source_id = ?",  # noqa: S608
            (source_id,),
        )

    def set_paused(self, source_id: str, paused: bool) -> SourceRecord:
        self._writable()
        now = time.time()
        cur = self._db.execute(
            "UPDATE sources SET paused = ?, state = ?, updated_at = ? WHERE source_id = ?",
            (int(paused), "paused" if paused else "connecting", now, source_id),
        )
        if cur.rowcount == 0:
            raise UnknownSource(f"no source with id {source_id}")
        return self.get(source_id)

    def set_state(self, source_id: str, state: str, error: str | None) -> None:
        """Record the state; an error is kept as `last_error` after the source recovers."""
        self._writable()
        now = time.time()
        if error:
            self._db.execute(
                "UPDATE sources SET state = ?, last_error = ?, last_error_at = ?, updated_at = ?"
                " WHERE source_id = ?",
                (state, error, now, now, source_id),
            )
        else:
            self._db.execute(
                "UPDATE sources SET state = ?, updated_at = ? WHERE source_id = ?",
                (state, now, source_id),
            )

    def delete(self, source_id: str, *, cleaned: bool = False) -> SourceRecord:
        """Remove the source; unless `cleaned`, keep its connection string until `cleaned()`
        says its slot and publication are dropped (`cleanup_pending` lists it meanwhile)."""
        self._writable()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rec = self.get(source_id)
            self._db.execute("DELETE FROM sources WHERE source_id = ?", (source_id,))
            self._db.execute(
                "INSERT OR REPLACE INTO deleted_sources (source_id, deleted_at, database_url,"
                " cleaned) VALUES (?, ?, ?, ?)",
                (source_id, time.time(), None if cleaned else rec.database_url, int(cleaned)),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return rec

    def cleanup_pending(self) -> list[tuple[str, str]]:
        """(source_id, database_url) of deleted sources whose slot may still exist."""
        rows = self._db.execute(
            "SELECT source_id, database_url FROM deleted_sources"
            " WHERE cleaned = 0 AND database_url IS NOT NULL ORDER BY deleted_at"
        )
        return [(r[0], r[1]) for r in rows.fetchall()]

    def cleaned(self, source_id: str) -> None:
        """The deleted source's slot and publication are gone: forget its connection string."""
        self._writable()
        self._db.execute(
            "UPDATE deleted_sources SET cleaned = 1, database_url = NULL WHERE source_id = ?",
            (source_id,),
        )


def _upgrade(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for column, kind in columns.items():
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        db.execute(f"PRAGMA user_version={_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


_WAL_MAGIC = (0x377F0682, 0x377F0683)


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes) continuing from (s0, s1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _apply_wal(image: bytearray, wal: bytes) -> bytearray:
    """The database `image` with the committed transactions of its WAL applied, as SQLite
    reads them: frames whose salts and running checksum are right, up to the last commit
    frame (one with the database size); anything after it is a transaction not committed
    (or torn by a crash) and ignored, as SQLite ignores it."""
    if len(wal) < 32:
        return image
    magic, _, page_size, _, salt1, salt2, c0, c1 = struct.unpack(">8I", wal[:32])
    if magic not in _WAL_MAGIC or not 512 <= page_size <= 65536:
        return image
    big = magic & 1 == 1
    s0, s1 = _wal_checksum(wal[:24], 0, 0, big)
    if (s0, s1) != (c0, c1):
        return image
    pages: dict[int, bytes] = {}
    committed: dict[int, bytes] = {}
    size_pages: int | None = None
    pos = 32
    while pos + 24 + page_size <= len(wal):
        number, commit, f1, f2, c0, c1 = struct.unpack(">6I", wal[pos : pos + 24])
        page = wal[pos + 24 : pos + 24 + page_size]
        if (f1, f2) != (salt1, salt2) or number == 0:
            break
        s0, s1 = _wal_checksum(wal[pos : pos + 8], s0, s1, big)
        s0, s1 = _wal_checksum(page, s0, s1, big)
        if (s0, s1) != (c0, c1):
            break
        pages[number] = page
        if commit:
            committed.update(pages)
            pages.clear()
            size_pages = commit
        pos += 24 + page_size
    if size_pages is None:
        return image
    out = bytearray(image[: size_pages * page_size])
    out.extend(b"\0" * (size_pages * page_size - len(out)))
    for number, page in committed.items():
        if number <= size_pages:
            out[(number - 1) * page_size : number * page_size] = page
    return out


def read_snapshot(path: Path) -> sqlite3.Connection:
    """sources.db as SQLite would read it (its WAL's committed transactions included), in
    memory, without writing a byte or holding a lock on the files.

    For a store that cannot be opened for writing nor read by SQLite in place: with
    content in its WAL, SQLite needs the WAL's index file (`-shm`), and makes it when it is
    missing (a crash, a reboot cleaning it, a copy that left it out), which a full disk has
    no room for. Reading the main file alone would miss what only the WAL holds (a source
    just registered, a rotation: an old secret would work again)."""
    image = bytearray(path.read_bytes()) if path.exists() else bytearray()
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        image = _apply_wal(image, wal.read_bytes())
    if len(image) >= 20:
        image[18:20] = b"\1\1"  # a WAL-mode header: read it as a rollback journal one
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        if image:
            db.deserialize(bytes(image))
        db.row_factory = sqlite3.Row
        db.execute("SELECT count(*) FROM sources").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def store_has_sources(data_dir: Path) -> bool:
    """Whether a store with at least one source exists there (without creating one; read
    as `SourceStore` does when it cannot be opened for writing, as on a full disk)."""
    path = data_dir / "sources.db"
    if not path.exists():
        return False
    wal = path.with_name(path.name + "-wal")
    modes = ["ro"] if wal.exists() and wal.stat().st_size else ["ro", "ro&immutable=1"]
    for mode in modes:
        try:
            db = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True, timeout=5)
            try:
                return bool(db.execute("SELECT count(*) FROM sources").fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:
            continue
    try:  # a WAL with content whose index is gone, on a full disk: SQLite cannot read it
        db = read_snapshot(path)
    except (sqlite3.Error, OSError):
        return False
    try:
        return bool(db.execute("SELECT count(*) FROM sources").fetchone()[0])
    finally:
        db.close()
