"""Where each shape's log ended when last made durable, kept apart from its chunk files.

A chunk file vouches for itself: its records' checksums, its `user.shapegate.durable` size
(`files.DURABLE_SIZE`). An older copy of the file put in its place (a restore mix-up, a
partial `rsync -X` or `cp -a` of a backup) carries an older, self-consistent version of all
of that, and loaded as a whole log that merely ended earlier: every change after the copy
was gone for new clients, with nothing logged (chaos, MEDIUM). What binds a chunk to its
shape's position must not travel with the file.

So every flush also appends, per shape it makes durable, one line to the source's
`log-ends` file, before the chunk files are fsynced and anything
is published: the LSN its log was published to before the flush, the first and the last LSN
the flush writes. `load` compares: a log that ends before its last noted LSN lost records
that were durable (`ShapeLog.check_end`), and is cut there like any other damage: the
replicator keeps the shape only if the slot will send the lost transactions again. A line
whose flush never became durable (a crash during it) notes records the slot never got
past: the cut is a repair, from the flush's first LSN.

The file lies in the source's directory, beside its saved replication position, not in
the shapes directory: a restore of that directory from a backup (cp -a, rsync -aX) brought
back an older `log-ends` with the older chunks, which then agreed (chaos 17:00). A whole
source directory restored is the data-dir rollback the saved position catches. A file that
should be there and is not (`log-ends-kept`, written once it first was, was there when the
source started), or that holds no readable line at all (zeroed), cannot vouch for any
log: every shape with a log is checked as if it lost what followed its end
(`ShapeLog.unverified`): kept only if the slot replays from there.

Best effort in one direction only: a missing, torn or damaged line (a crash during an
append; a filesystem error) loses only that detection, never retires a shape that is
whole. So a flush does not fsync it (one more fsync per flush, +60-150% of a one-shape
flush's time measured): the lines are fdatasynced before each save of the replication
position, off the flush's path, so that none the slot was confirmed past is lost to a power
cut (`sync`); a file of appends never synced, zero-filled by one, read as damaged and
retired every shape with a log. It is rewritten with one line per live shape once it grows
past a few times that (`LogEnds.rewrite`).
"""

from __future__ import annotations

import logging
import os

from .checksum import crc32

logger = logging.getLogger(__name__)

#: The file's name in the source's directory (an older one in the shapes directory, of an
#: engine that put it there, is deleted by `store.ShapeStore.load`).
NAME = "log-ends"
#: A file in a source's directory, written before the source first makes anything in its
#: database (`Source.note_made`).
MADE = "made-in-database"
#: A file in a source's directory, written once `NAME` was first written whole (`note_kept`):
#: found when the source starts, `NAME` should be there. Not `MADE`, which is written before
#: the first load: a first start of this engine on an older directory ended between the two
#: made the next start take every log as unverifiable (review 17:24).
KEPT = "log-ends-kept"

#: The file is rewritten once it holds more than this many bytes and `COMPACT_FACTOR` times
#: the lines of the shapes there are.
COMPACT_MIN = 1 << 20
COMPACT_FACTOR = 4

#: A shape's noted end: (published LSN before the flush, first LSN it wrote, last LSN).
End = tuple[int, int, int]
#: The handle of the line a rewrite begins with: (0, 0, the highest last LSN noted before,
#: `LogEnds.high`), so that the mark survives the retirement of the shape that noted it.
HIGH = "high"


def _line(handle: str, end: End) -> bytes:
    body = b"%s %x %x %x" % (handle.encode(), *end)
    return b"%s %08x\n" % (body, crc32(body))


def _parse(line: bytes) -> tuple[str, End] | None:
    try:
        body, crc = line.rsplit(b" ", 1)
        if int(crc, 16) != crc32(body):
            return None
        handle, before, first, last = body.split(b" ")
        return handle.decode(), (int(before, 16), int(first, 16), int(last, 16))
    except ValueError:
        return None


class LogEnds:
    """The `log-ends` file of one shapes directory, and what it says, by handle."""

    def __init__(self, directory: str, fsync: bool) -> None:
        self.path = f"{directory}/{NAME}"
        self.fsync = fsync
        self.ends: dict[str, End] = {}
        self._size = 0
        #: After `read`: whether the file was there, and why it cannot vouch for any log
        #: (None: it can).
        self.found = False
        self.damaged: str | None = None
        #: The highest last LSN any line noted (the mark `sync` returns, saved with the
        #: replication position: `replication.position`).
        self.high = 0

    def read(self) -> dict[str, End]:
        """What the file says (the last whole line of each shape; damaged lines skipped)."""
        self.ends, self.found, self.damaged, self.high = {}, True, None, 0
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data, self.found = b"", False
        except OSError as exc:
            data, self.damaged = b"", f"{self.path}: {exc.strerror}"
        bad = 0
        for line in data.split(b"\n")[:-1]:  # (a last line without its newline: torn)
            parsed = _parse(line)
            if parsed is None:
                bad += 1
                continue
            self.high = max(self.high, parsed[1][2])
            if parsed[0] != HIGH:
                self.ends[parsed[0]] = parsed[1]
        if data and not self.ends and not self.high:  # (zeroed, or garbage: no line)
            self.damaged = f"{self.path}: {len(data)} bytes and not one readable line"
        elif bad:
            logger.warning("%s: %d damaged lines skipped", self.path, bad)
        self._size = len(data)
        return dict(self.ends)

    def forget(self, handle: str) -> None:
        """A retired shape's end is no longer kept (dropped at the next rewrite)."""
        self.ends.pop(handle, None)

    def note(self, ends: list[tuple[str, End]]) -> None:
        """Append the ends a flush is about to make durable (before its fsync). Raises
        OSError as a chunk write does (the flush fails, its records are cut back and
        replayed)."""
        if not ends:
            return
        for handle, end in ends:
            self.ends[handle] = end
        if self._size > max(COMPACT_MIN, COMPACT_FACTOR * 64 * len(self.ends)):
            self.rewrite()  # (its lines hold these ends: the mark may count them)
            self.high = max(self.high, *(e[2] for _, e in ends))
            return
        data = b"".join(_line(h, e) for h, e in ends)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):  # (a full disk: the line is torn, skipped on read)
                raise OSError(28, "short write")
        finally:
            os.close(fd)
        self._size += len(data)
        self.high = max(self.high, *(e[2] for _, e in ends))

    def sync(self) -> int:
        """Make the lines appended so far durable (`fdatasync`), before the replication
        position past their flushes is saved (`SavedPosition.before_save`, in its worker
        thread); returns the mark saved with it (`high` before the sync: every line up to
        it is durable after). Nothing to sync when the file is not there (none noted since
        a start rewrote it, fsynced)."""
        high = self.high
        if not self.fsync:
            return high
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return high
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return high

    def note_kept(self) -> None:
        """Note (once, durably) that the file was written whole: from the next start on, a
        missing one is damage (`KEPT`). A rewrite's leftover `.new` goes too."""
        directory = os.path.dirname(self.path)
        kept = f"{directory}/{KEPT}"
        try:
            os.unlink(self.path + ".new")
        except FileNotFoundError:
            pass
        if os.path.exists(kept):
            return
        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.fsync:
            dfd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def rewrite(self) -> None:
        """Write the file anew with one line per shape kept (`ends`): a new file renamed
        over the old, so that a crash leaves one or the other, whole or torn at its end
        (an empty one when no shape is kept: that it is there says this engine ran here)."""
        data = _line(HIGH, (0, 0, self.high)) if self.high else b""
        data += b"".join(_line(h, e) for h, e in self.ends.items())
        tmp = self.path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(28, "short write")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.fsync:  # (its name too: a file found missing makes every log unverified)
            dfd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._size = len(data)
