"""The highest WAL position the engine may confirm to its slot, saved before it is confirmed.

Postgres never sends again what a slot has confirmed. An engine started on a data dir older
than what it confirmed (restored from a backup or a VM snapshot, or writes lost under
`--no-fsync`) served its old shapes without the changes in between, to every client and
every new one, for good. So the position is written to the data dir (and fsynced) before
the stream may report it (`ReplicationStream.confirm_limit`), and at start a slot whose
`confirmed_flush_lsn` is past the saved position means the data dir went back in time:
every shape is retired (`Source._prepare`).

One small file per source, rewritten in place (8 bytes, or 16 with the mark below: one
sector, never torn); a save runs in a worker thread, one at a time, as soon as the stream
has more to confirm.

Its second 8 bytes, when there, are the mark of the source's `log-ends` the save made
durable first (`before_save`: `log.ends.LogEnds.sync`, the highest LSN its lines noted): an
older `log-ends` restored with older chunks while this file stayed current (or deleted with
`log-ends-kept`) noted less than that, and the load takes it as unable to vouch for any log
(`log.store.ShapeStore.load`, chaos 19:48). An engine before it wrote 8 bytes: no mark.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

from .wal import Lsn

logger = logging.getLogger(__name__)

FILE_NAME = "confirmable-lsn"
_LSN = struct.Struct(">Q")


class DamagedPosition(Exception):
    """The saved position's file is there but does not hold one position (a zeroed or torn
    sector, a restore that cut it): damage, not absence (`Source._check_position`)."""


def read_saved(path: Path) -> Lsn | None:
    """The position saved at `path`, None when there is none (a new data dir, or one an
    engine without this file wrote). Raises DamagedPosition for a file of another length:
    read as none, the check it serves was off for a data dir older than its slot (chaos
    10:40)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) not in (_LSN.size, 2 * _LSN.size):
        raise DamagedPosition(f"{path} holds {len(data)} bytes, not one position ({_LSN.size})")
    return Lsn(_LSN.unpack_from(data)[0])


def read_mark(path: Path) -> int | None:
    """The `log-ends` mark saved with the position at `path` (see above); None when there is
    none (no file, an older engine's, unreadable: `Source._check_position` judges those)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) != 2 * _LSN.size:
        return None
    return int(_LSN.unpack_from(data, _LSN.size)[0])


class SavedPosition:
    """`saved`: what the stream may confirm; `want(lsn)` saves a later position."""

    def __init__(
        self, path: Path, fsync: bool, on_saved: Callable[[Lsn], None] | None = None
    ) -> None:
        self.path = path
        self.fsync = fsync
        try:
            self.saved = read_saved(path) or Lsn(0)
        except DamagedPosition:  # (`Source._check_position` retires the shapes, saves anew)
            self.saved = Lsn(0)
        #: Called on the event loop once a new position is saved.
        self.on_saved = on_saved
        #: Called in the save's worker thread before the position is written (when
        #: `fsync`): what else must be durable before the slot may confirm it
        #: (`log.ends.LogEnds.sync`), returning the mark saved with the position. Its
        #: OSError is logged, and the save goes on (with the mark saved before).
        self.before_save: Callable[[], int | None] | None = None
        self._mark: int | None = None
        self._before_failing = False  # (`before_save` failed at the last save)
        self._saving: asyncio.Future[None] | None = None
        self._wanted = self.saved

    def want(self, lsn: Lsn) -> None:
        """Save `lsn` (if past what is saved) as soon as the save in flight, if any, is done."""
        if lsn <= self._wanted:
            return
        self._wanted = lsn
        if self._saving is None:
            self._saving = asyncio.ensure_future(self._save())

    def save_now(self, lsn: Lsn) -> None:
        """Write `lsn` as the saved position at once (at start, nothing streaming yet)."""
        self._write(lsn)
        self.saved = self._wanted = lsn

    def forget(self) -> None:
        """Delete the saved position (at start, nothing streaming yet): it was another
        database's (`Source._check_identity`); the start saves the slot's anew."""
        self.path.unlink(missing_ok=True)
        self.saved = self._wanted = Lsn(0)

    async def _save(self) -> None:
        try:
            while self._wanted > self.saved:
                lsn = self._wanted
                try:
                    await asyncio.to_thread(self._write, lsn)
                except OSError as exc:  # (a full disk: the shape logs pause replication too)
                    logger.warning("could not save the replication position: %s", exc)
                    self._wanted = self.saved  # (tried again at the next `want`)
                    return
                self.saved = lsn
                if self.on_saved is not None:
                    self.on_saved(lsn)
        finally:
            self._saving = None

    def _write(self, lsn: Lsn) -> None:
        if self.fsync and self.before_save is not None:
            try:
                mark = self.before_save()
                if mark is not None:
                    self._mark = mark
            except OSError as exc:
                # Said once while it goes on (a full disk failed it at every save: ~21
                # warnings a second, chaos 23:28), and once when it works again.
                if not self._before_failing:
                    self._before_failing = True
                    logger.warning(
                        "before saving the replication position: %s (the position is saved"
                        " with the mark saved before; said again only once this works)",
                        exc,
                    )
                else:
                    logger.debug("before saving the replication position: %s", exc)
            else:
                if self._before_failing:
                    self._before_failing = False
                    logger.warning("before saving the replication position: works again")
        data = _LSN.pack(lsn)
        if self._mark is not None:
            data += _LSN.pack(self._mark)
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, data, 0)
            if len(data) == _LSN.size:  # (no mark: none of an earlier run's left behind)
                os.ftruncate(fd, _LSN.size)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if new and self.fsync:  # (the file's name, too, must survive a crash)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
