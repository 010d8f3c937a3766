"""Snapshot packs: the last snapshot chunk and the completion marker of many shapes, one file.

A storm of new shapes is bound by the kernel creating files (an inode each, 150-1,500 µs on a
busy ext4), so a batch's small snapshots are written together: one pack file holds, per
shape, its marker (handle, definition, table, snapshot, each chunk's size and crc32) and its
last chunk, which for a small shape is its whole snapshot. One file and one fsync per batch
instead of a directory, a chunk file and a marker per shape.

    pack.<time>-<n>.pack    MAGIC, then records: u32 length, u32 crc32 of the payload, payload
                            b"S" u32 marker length, marker JSON, chunk bytes: a shape
                            b"R" handle: that shape was retired (appended later)
                            b"L" u64 LSN, handle: that shape's log began, its first
                            transaction at LSN (appended later; `ShapeLog`)

A pack is written whole and fsynced (with its directory) before any of its shapes is
announced. A shape's chunk in a pack never changes (the responses made from it are
immutable); retiring a shape appends an `R` record, and the pack is deleted once all its
shapes are retired.

A pack notes on itself (`PACK_END`, an extended attribute: it survives the file being cut
or rewritten in place) where its last record written whole ends: set with the pack (before
its fsync) and after each append, so a record made durable (the fsyncs that settle a
retirement or a log's beginning) has its note durable with it; a power loss may keep a note
whose unsettled record it lost, which only discards that pack's shapes. On load, a pack
found shorter than its note lost records at its end, its own records cannot tell which (a
cut at a record boundary leaves only whole ones), and a pack damaged before its note may
have lost any `R` or `L` record after the damage: either way it cannot say which of its
shapes were retired, and none of them is loaded (`store.py`). Only a torn tail past the
note (a crash in the middle of an append, a record nothing was settled on) is cut off.
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from .checksum import crc32
from .fds import write_new_file

MAGIC = b"SGPACK1\n"
SUFFIX = ".pack"
_HEAD = struct.Struct("<II")
_U32 = struct.Struct("<I")
_SHAPE = b"S"
_RETIRED = b"R"
_LOG_BEGUN = b"L"
_U64 = struct.Struct("<Q")
#: Extended attribute: where the pack's last record written whole ends (see above). Best
#: effort: not kept where the filesystem has no user attributes (or a copy dropped them),
#: and then a pack cut at a record boundary is not found.
PACK_END = "user.shapegate.pack_end"
#: Appends to packs come from the event loop (a log begun) and from worker threads (a
#: shape retired): one at a time, each at the end it found.
_appending = threading.Lock()
_names = itertools.count()


@dataclass(eq=False, slots=True)
class Pack:
    """A pack file and the handles in it not yet retired (changed on the event loop only)."""

    path: str
    live: set[str] = field(default_factory=set)


class PackedChunk(NamedTuple):
    """Where a shape's last snapshot chunk lies in its pack."""

    pack: Pack
    offset: int
    size: int


class PackEntry(NamedTuple):
    """A shape found in a pack: its marker and where its chunk is."""

    handle: str
    marker: dict[str, Any]
    offset: int
    size: int


class PackContents(NamedTuple):
    entries: list[PackEntry]
    retired: set[str]
    error: str | None  # what stopped the scan early (a torn or damaged record)
    end: int = 0  # where the last whole record ends (0: not a pack)
    begun: dict[str, int] | None = None  # handle -> LSN its log began at (`L` records)


def new_pack_path(directory: str) -> str:
    return f"{directory}/pack.{time.time_ns()}-{next(_names)}{SUFFIX}"


def encode_shape(marker: bytes, chunk: bytes) -> tuple[bytes, int]:
    """A shape's record, and where its chunk starts inside the record."""
    payload = _SHAPE + _U32.pack(len(marker)) + marker + chunk
    head = _HEAD.pack(len(payload), crc32(payload))
    return head + payload, len(head) + len(payload) - len(chunk)


def encode_retired(handle: str) -> bytes:
    payload = _RETIRED + handle.encode()
    return _HEAD.pack(len(payload), crc32(payload)) + payload


def encode_log_begun(handle: str, lsn: int) -> bytes:
    payload = _LOG_BEGUN + _U64.pack(lsn) + handle.encode()
    return _HEAD.pack(len(payload), crc32(payload)) + payload


def scan_pack(data: bytes) -> PackContents:
    """The shapes and retirements in a pack's bytes, up to the first bad record."""
    entries: list[PackEntry] = []
    retired: set[str] = set()
    begun: dict[str, int] = {}
    if not data.startswith(MAGIC):
        return PackContents(entries, retired, "not a snapshot pack")
    pos = len(MAGIC)
    view = memoryview(data)
    while pos < len(data):
        if pos + _HEAD.size > len(data):
            return PackContents(entries, retired, f"torn record at byte {pos}", pos)
        length, crc = _HEAD.unpack_from(data, pos)
        start = pos + _HEAD.size
        end = start + length
        if end > len(data) or length < 1:
            return PackContents(entries, retired, f"torn record at byte {pos}", pos)
        if crc32(view[start:end]) != crc:
            return PackContents(entries, retired, f"damaged record at byte {pos}", pos)
        kind = data[start : start + 1]
        if kind == _RETIRED:
            retired.add(data[start + 1 : end].decode())
        elif kind == _LOG_BEGUN and length > 9:
            begun.setdefault(data[start + 9 : end].decode(), _U64.unpack_from(data, start + 1)[0])
        elif kind == _SHAPE and length >= 5:
            (marker_len,) = _U32.unpack_from(data, start + 1)
            chunk_at = start + 5 + marker_len
            try:
                marker = orjson.loads(view[start + 5 : chunk_at])
                handle = str(marker["handle"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return PackContents(entries, retired, f"unreadable marker at byte {pos}", pos)
            entries.append(PackEntry(handle, marker, chunk_at, end - chunk_at))
        else:
            return PackContents(entries, retired, f"unknown record at byte {pos}", pos)
        pos = end
    return PackContents(entries, retired, None, pos, begun)


def write_new(path: str, data: bytes, fsync: bool) -> None:
    """Create `path` holding `data`; with `fsync`, durable with its directory entry. A failed
    write removes the file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_new_file(fd, data)
        note_end(fd, len(data))
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)
    if fsync:
        sync_directory(os.path.dirname(path))


def note_end(fd: int, end: int) -> None:
    """Note on the pack `fd` that its records written whole end at `end` (`PACK_END`)."""
    try:
        os.setxattr(fd, PACK_END, b"%d" % end)
    except OSError:
        pass


def noted_end(path: str) -> int | None:
    """Where the pack at `path` says its last whole record ends; None when it does not say
    (written by an older engine, a filesystem without user attributes)."""
    try:
        return int(os.getxattr(path, PACK_END))
    except (OSError, ValueError):
        return None


def sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_retired(path: str, handle: str) -> None:
    """Append the record that retires `handle`: whole, or not at all (a short write, on a
    full disk, is cut back and raises OSError, to be tried again: a retirement that never
    reaches the pack brings the shape back on the next load, so its files are kept until
    it does, `store._delete`). A pack already gone needs no record."""
    append_record(path, encode_retired(handle))


def append_record(path: str, record: bytes) -> None:
    """Append `record` to the pack at `path`, whole or not at all (see `append_retired`)."""
    with _appending:
        _append(path, record)


def _append(path: str, record: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = os.pwrite(fd, record, start)
            if written != len(record):
                raise OSError(errno.ENOSPC, "short write")
        except OSError:
            os.ftruncate(fd, start)
            raise
        note_end(fd, start + written)
    finally:
        os.close(fd)
