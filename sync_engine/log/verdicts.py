"""Passed checks of snapshot chunk files, kept while nothing can have changed the bytes.

Every send of a snapshot chunk from its file is checked first (`ShapeLog.check_snapshot_file`:
size and crc32 against what was written): ~1 ms of reading and ISA-L crc32 per cached 10 MiB
chunk, ~30-33 ms of an 86 ms warm sync of 1M rows (issue 13 bar 5). Such a check reads the
file's pages from the page cache, and the send reads the same pages. It can only find bytes
other than those of the last check when something put other bytes into those pages since:

1. a change through the filesystem (a write, a truncation, a hole punched, a file renamed
   over it, a change of mode): the file's identity moves: its inode, size, modification or
   change time (`_identity`: device, inode, size, mtime ns, ctime ns). The change time cannot
   be put back (`os.utime` restoring the modification time moves it), and since Linux 6.13
   a change right after an `fstat` gets a time of its own (multigrain timestamps);
2. damage below the filesystem (a bad disk or controller, a write to the block device):
   it reaches the page cache only when a page was dropped and read again *from the disk*,
   by anyone (the engine's own send, a backup, `cat`). The filesystem's block device counts
   every read it completes (`/sys/dev/block/M:m/stat`): when its count of reads and sectors
   read is what it was before the check began, and no read is in flight on it, nothing
   came from that disk since, so the cached bytes are the checked ones;
3. a bit flipped in a cached page (memory without ECC, a kernel bug).

So a passed check is kept (`remember`) keyed by the file's identity, the region and what
it was checked against, with the device's read count taken before it began, and a send
uses it (`holds`) when the file's identity (one `fstat` of the open descriptor) and the
device's count are unchanged: 1 and 2 are then caught as before, at the next send after
them. The send asks on the event loop (`ShapeLog.snapshot_check_kept`: a dict look-up and
two reads of sysfs) and goes to a worker thread only for a check to make. What is given
up: 3 (the every-send check caught it: ECC memory is the remedy), and, on kernels before
6.13 (coarse timestamps), a write in place within the same clock tick (1-4 ms) as the
file's previous change (its making, or a pack's last record) and after
the check, which can leave every time as it was.

Filesystems whose device cannot vouch are checked at every send as before: no block device
(tmpfs, overlayfs, btrfs, NFS, FUSE: `st_dev` major 0), a type whose data may lie on
another device than `st_dev` (only ext2/3/4, and xfs without a realtime device, are
trusted), DAX (reads bypass the page cache and the block layer), no sysfs. Any read of the
device, of any file, forgets what was kept: on a disk busy with other reads (or after the
page cache was dropped) each send is checked as before; a warm sync served from the page
cache of a quiet disk is not.

A kept check vouches for the *cached* pages: a page dropped after the check and read again
by the send itself (nothing else read the device meanwhile) was sent unchecked, damaged or
not (chaos 10:57: one whole 200 with a changed value). So every send of a region that
passed a check with the file as it is now (`ShapeLog.send_check`) now checks its own
bytes, and big chunk files (`files.SEND_CHECKED_BYTES` and more, their own file) skip the
check before the send altogether. Such a send reads the file a piece at a time into a
buffer, adds it to a crc32 and writes that same buffer to the socket (`http/sendfile.py`,
`_checked_send`); it writes the body's closing `]` only when the crc32 of everything sent
is what was written, else the connection is cut there (short of its Content-Length: no
client, proxy or cache takes it as an answer) and the shape is retired
(`ShapeLog.send_check_failed`), so the next request is a 409. The bytes checked are the
bytes sent: 1, 2 and 3 above, and a page changed between a check and its send, are caught
by the send that would carry them. What changes for such damage: the request that finds
it gets a cut-off answer (its client retries) where a check before the send gave a 409. A
file changed through the filesystem (its identity moved) is checked before its send as
ever (409 first). On this VM, whose data directory shares the root disk, the device's
count always moves, and the check before each send was ~15-20% of a warm sync's engine
CPU plus a worker-thread hop; the send's own check costs a copy into the socket in place
of `sendfile`'s page references (about the same for the engine) and leaves the reader
less to do (it copies bytes still in the CPU's cache).

What was open before stays open, no wider, for sends without a passed check of their own (a
file changed since its check, sent by `sendfile`): bytes changed in the page cache between a
check and the end of its send: damage below the filesystem read back in meanwhile, or a
write through a shared mapping (`mmap`) whose page was dirtied before the check (a write to
a dirty mapped page takes no fault and moves neither time; it needs write access to the data
directory: attack 02:31). `tests/faults/test_silent_corruption.py` damages a checked chunk
below the filesystem (the test reads it back from the disk itself): 409;
`test_chunk_damage_after_check.py` through the filesystem with the times put back: 409.
"""

from __future__ import annotations

import os
import threading
from typing import TypeAlias

from cachetools import LRUCache

#: What a checked chunk file was: (device, inode, size, mtime ns, ctime ns).
Identity: TypeAlias = tuple[int, int, int, int, int]
#: A block device's completed reads and sectors read.
Stamp: TypeAlias = tuple[int, int]
#: (the file's identity, region start, region size, crc32 it matched)
_Key: TypeAlias = tuple[Identity, int, int, int]

#: Passed checks kept at most (the least recently used dropped first): a 10 MiB chunk per
#: entry covers 40 GiB of chunks; an entry is ~200 bytes.
MAX_KEPT = 4096

#: Filesystems whose file data lies only on the block device `st_dev` names.
_ONE_DEVICE = frozenset({"ext2", "ext3", "ext4", "xfs"})

_lock = threading.Lock()  # (checks run in worker threads)
_kept: LRUCache[_Key, Stamp] = LRUCache(MAX_KEPT)
# st_dev -> its block device's `stat` and `inflight` files (`_device_files`), or None.
_devices: dict[int, tuple[int, int] | None] = {}


def _mount_of(major: int, minor: int) -> tuple[str, set[str]] | None:
    """(type, mount and super options) of a mount of device `major:minor`, from mountinfo."""
    want = f"{major}:{minor}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == want and "-" in fields:
                    sep = fields.index("-")
                    options = set(fields[5].split(","))
                    if len(fields) > sep + 3:
                        options |= set(fields[sep + 3].split(","))
                    return fields[sep + 1], options
    except OSError:
        pass
    return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _device_files(dev: int) -> tuple[int, int] | None:
    """Descriptors of the `stat` and `inflight` files of the block device `dev` (kept open:
    a read at offset 0 makes them anew, ~10 µs where opening them costs ~100), or None
    when its reads cannot vouch for a file's bytes (see the module's docstring)."""
    major, minor = os.major(dev), os.minor(dev)
    if major == 0:
        return None  # (an anonymous device: no block device holds the file's bytes)
    mount = _mount_of(major, minor)
    if mount is None:
        return None
    fstype, options = mount
    if fstype not in _ONE_DEVICE or any(o.startswith(("dax", "rtdev")) for o in options):
        return None
    base = os.path.realpath(f"/sys/dev/block/{major}:{minor}")
    for queue in (f"{base}/queue/dax", f"{os.path.dirname(base)}/queue/dax"):
        # (a partition's queue is its disk's)
        if (dax := _read_text(queue)) is not None and dax.strip() != "0":
            return None
    try:
        stat = os.open(f"{base}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        inflight = os.open(f"{base}/inflight", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(stat)
        return None
    return stat, inflight


def stamp(dev: int) -> Stamp | None:
    """The reads the block device `dev` completed so far (count, sectors), None when its
    reads cannot say whether a file on it could have changed below its filesystem (see
    the module's docstring), or while a read is in flight on it."""
    try:
        files = _devices[dev]
    except KeyError:
        with _lock:
            if dev not in _devices:
                _devices[dev] = _device_files(dev)
            files = _devices[dev]
    if files is None:
        return None
    try:
        inflight = os.pread(files[1], 64, 0).split()
        stat = os.pread(files[0], 512, 0).split()
        if int(inflight[0]) == 0:
            return int(stat[0]), int(stat[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def remember(identity: Identity, start: int, size: int, crc: int, before: Stamp | None) -> None:
    """A check of the region [start, start + size) of the file `identity` found crc32 `crc`
    (what was written); `before`: the device's `stamp` taken before the check began."""
    if before is None:
        return
    with _lock:
        _kept[(identity, start, size, crc)] = before


def holds(identity: Identity, start: int, size: int, crc: int) -> bool:
    """Whether a kept check of this region of the file, against `crc`, still stands: the
    file is as it was (`identity`, one `fstat` of the open file) and its device read
    nothing since the check began."""
    with _lock:
        before = _kept.get((identity, start, size, crc))
    if before is None:
        return False
    if stamp(identity[0]) == before:
        return True
    with _lock:
        _kept.pop((identity, start, size, crc), None)
    return False


def forget_all() -> None:
    """Drop every kept check (tests)."""
    with _lock:
        _kept.clear()
