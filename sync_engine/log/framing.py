"""The on-disk framing of transaction chunks: records with a length and a crc32.

A chunk file is a sequence of records, one per transaction (or per part of a transaction,
when the transaction crosses a chunk boundary):

    record = header | body
    header = u32 body length | u32 body crc32 | u64 commit LSN | u32 flags | u32 header crc32
    body   = entry*,  entry = u32 op | u32 json length | json
    flags  = bit 0 (1): the record holds the transaction's last entry;
             bit 1 (2): the record is the first of its chunk file, and bits 2-31 hold the
             size of the chunk file before it (when under 1 GiB)

crc32 is zlib's (computed by `checksum`); the header's own checksum covers its first 20
bytes, seeded with the crc32 of the shape's handle (`seed_of`: a chunk file of another
shape, copied over this one's, fails its check; records written before the seed, with
none, are still read), so a record's length and LSN are known to be real before its
body is read: when a body is damaged, its LSN still says from where the slot must send
transactions again to repair it. A chunk file cut short at a record boundary (a lost
write, a partial copy) has only intact records: the next chunk's first record says how
long it was (`chunk_flags`), so `load` finds the hole. All integers are little-endian. A
record is only trusted whole: a reader that finds a short, unparseable or mismatching
record reports it instead of serving any of its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from .checksum import crc32 as _crc32

_HEAD = struct.Struct("<IIQI")  # body length, body crc32, commit LSN, flags
_HEAD_CRC = struct.Struct("<I")
_ENTRY = struct.Struct("<II")  # op, json length
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size  # 24
ENTRY_HEADER_SIZE = _ENTRY.size  # 8
FLAG_TX_END = 1
#: The record starts a chunk file and `flags >> PREV_SHIFT` is the previous file's size.
FLAG_PREV = 2
PREV_SHIFT = 2
PREV_MAX = (1 << (32 - PREV_SHIFT)) - 1
KEY_TX_END = 0xFFFFFFFF
_head_unpack = _HEAD.unpack_from
_head_pack = _HEAD.pack
_head_crc_pack = _HEAD_CRC.pack
_head_crc_unpack = _HEAD_CRC.unpack_from
_HS = _HEAD.size
_entry_unpack = _ENTRY.unpack_from
_entry_pack = _ENTRY.pack


class FramingError(ValueError):
    """Bytes that are not whole, intact records."""


def key_of(lsn: int, op: int) -> int:
    return (lsn << 32) | op


def seed_of(handle: str) -> int:
    """The seed of the header checksums of `handle`'s records."""
    return _crc32(handle.encode())


#: An entry's JSON at least this long is a piece of its record of its own (`record_body`):
#: written where it lies, never copied into a joined body (a 200 MB value was copied three
#: more times on its way to the file: the body, the record, the first record of a chunk).
BIG_ENTRY = 1 << 20


def record_body(entries: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """The body of a record of `entries` `(op, json)`, as pieces to write one after the
    other: the small entries joined, each `BIG_ENTRY` one kept as it is."""
    pieces: list[bytes] = []
    run: list[bytes] = []
    for op, data in entries:
        run.append(_entry_pack(op, len(data)))
        if len(data) >= BIG_ENTRY:
            pieces.append(b"".join(run))
            pieces.append(data)
            run = []
        else:
            run.append(data)
    if run:
        pieces.append(b"".join(run))
    return pieces


def record_header(length: int, crc: int, lsn: int, flags: int, seed: int = 0) -> bytes:
    """The header of a record whose body is `length` bytes with crc32 `crc`."""
    head = _head_pack(length, crc, lsn, flags)
    return head + _head_crc_pack(_crc32(head, seed))


def chunk_flags(prev_size: int) -> int:
    """The flags that make a record the first of a chunk file whose predecessor is
    `prev_size` bytes long (none for a size that does not fit: no check then)."""
    return 0 if prev_size > PREV_MAX else FLAG_PREV | (prev_size << PREV_SHIFT)


def split_records(
    entries: Sequence[tuple[int, bytes]], chunk_bytes: int, used: int
) -> list[tuple[bool, int, int]]:
    """Where one transaction's entries `(op, json)` are cut into records when a chunk
    fills: `(starts_new_chunk, first, end)` per record, `entries[first:end]` its entries.

    `used` is the size of the chunk the first record would go to. A chunk ends after the
    entry that brings it to `chunk_bytes` or more, but never right after an op-0 entry that
    does not end the transaction (the offset `<lsn>_0` means "after transaction lsn").
    """
    out: list[tuple[bool, int, int]] = []
    new = used >= chunk_bytes
    size = HEADER_SIZE + (0 if new else used)
    first = 0
    last = len(entries) - 1
    for i, (op, data) in enumerate(entries):
        size += ENTRY_HEADER_SIZE + len(data)
        if i == last:
            out.append((new, first, i + 1))
        elif size >= chunk_bytes and op != 0:
            out.append((new, first, i + 1))
            first = i + 1
            new = True
            size = HEADER_SIZE
    return out


def encode_records(
    lsn: int,
    entries: list[tuple[int, bytes]],
    chunk_bytes: int,
    used: int,
    seed: int = 0,
    ends: bool = True,
) -> list[tuple[bool, bytes, int]]:
    """One transaction's entries `(op, json)` as records, cut where a chunk fills
    (`split_records`; `ends` False: a part of its entries, more follow, the last record
    then does not end it). Returns `(starts_new_chunk, record, key of its last entry)`
    per record (the first record of a new chunk without `chunk_flags`)."""
    out: list[tuple[bool, bytes, int]] = []
    cuts = split_records(entries, chunk_bytes, used)
    for new, first, end in cuts:
        flags = FLAG_TX_END if ends and end == len(entries) else 0
        record = _record(lsn, record_body(entries[first:end]), flags, seed)
        out.append((new, record, key_of(lsn, entries[end - 1][0])))
    return out


def encode_record(
    lsn: int, entries: list[tuple[int, bytes]], seed: int = 0, ends: bool = True
) -> tuple[bytes, int]:
    """A whole transaction as one record (`ends` False: a part of it, more follow), and the
    key of its last entry."""
    record = _record(lsn, record_body(entries), FLAG_TX_END if ends else 0, seed)
    return record, (lsn << 32) | entries[-1][0]


def _record(lsn: int, pieces: list[bytes], flags: int, seed: int) -> bytes:
    body = b"".join(pieces)
    return record_header(len(body), _crc32(body), lsn, flags, seed) + body


def _header(data: bytes, pos: int, seed: int) -> tuple[int, int, int, int] | None:
    """(body length, body crc, lsn, flags) of the header at `pos`, None if it fails its
    checksum (seeded with `seed`, or none: a record of an engine before seeds). The
    caller makes sure HEADER_SIZE bytes are there."""
    head = data[pos : pos + _HS]
    crc = _head_crc_unpack(data, pos + _HS)[0]
    if _crc32(head, seed) != crc and (not seed or _crc32(head) != crc):
        return None
    return _head_unpack(data, pos)


@dataclass(slots=True)
class ScanResult:
    """What `scan` found: the intact records, then the first problem if any."""

    records: list[tuple[int, int, int, int, bool]] = field(default_factory=list)
    """(start, end, key of last entry, lsn, ends its transaction) per intact record."""
    error: str | None = None
    error_at: int = 0
    error_lsn: int = 0
    """The LSN in the first bad record's header when the header itself is intact, else 0:
    the transactions cut from there on are that one and later ones."""
    prev_size: int | None = None
    """The size of the chunk file before this one, as its first record says (`chunk_flags`);
    None when it does not say."""


def scan(data: bytes, seed: int = 0) -> ScanResult:
    """Check every record of a chunk file's bytes (on load); stops at the first problem."""
    result = ScanResult()
    n = len(data)
    pos = 0
    view = memoryview(data)
    while pos < n:
        if n - pos < HEADER_SIZE:
            return _problem(result, pos, "incomplete record header")
        head = _header(data, pos, seed)
        if head is None:
            return _problem(result, pos, "record header checksum mismatch")
        length, crc, lsn, flags = head
        result.error_lsn = lsn
        if not pos and flags & FLAG_PREV:
            result.prev_size = flags >> PREV_SHIFT
        body = pos + HEADER_SIZE
        end = body + length
        if end > n:
            return _problem(result, pos, "record runs past the end of the file")
        if _crc32(view[body:end]) != crc:
            return _problem(result, pos, "record checksum mismatch")
        try:
            last_op = _last_op(data, body, end)
        except FramingError as exc:
            return _problem(result, pos, str(exc))
        result.records.append((pos, end, key_of(lsn, last_op), lsn, bool(flags & FLAG_TX_END)))
        result.error_lsn = 0
        pos = end
    return result


def _problem(result: ScanResult, pos: int, error: str) -> ScanResult:
    result.error, result.error_at = error, pos
    return result


def _last_op(data: bytes, pos: int, end: int) -> int:
    op = -1
    while pos < end:
        if end - pos < ENTRY_HEADER_SIZE:
            raise FramingError("malformed record body")
        op, length = _entry_unpack(data, pos)
        pos += ENTRY_HEADER_SIZE + length
    if pos != end or op < 0:
        raise FramingError("malformed record body")
    return op


def read_lone_entry(
    f: BinaryIO, start: int, size: int, after: int, seed: int
) -> list[bytes] | None:
    """The entry (if its key is above `after`) of the record filling `size` bytes at `start`
    of file `f` when that record holds exactly one entry, read straight into its own bytes
    object and checked: a huge value (a 200 MB row is a record of its own) was read with its
    record, then copied out of it, twice its size at the peak. None when the bytes are not
    such a record, or fail a check: the caller reads them whole, which says what is wrong."""
    f.seek(start)
    head = f.read(HEADER_SIZE + ENTRY_HEADER_SIZE)
    if len(head) < HEADER_SIZE + ENTRY_HEADER_SIZE:
        return None
    header = _header(head, 0, seed)
    if header is None:
        return None
    length, crc, lsn, _ = header
    op, n = _entry_unpack(head, HEADER_SIZE)
    if HEADER_SIZE + length != size or ENTRY_HEADER_SIZE + n != length:
        return None
    value = f.read(n)
    if len(value) != n or _crc32(value, _crc32(head[HEADER_SIZE:])) != crc:
        return None
    return [value] if (lsn << 32) | op > after else []


def iter_entries(data: bytes, after: int, out: list[bytes], seed: int = 0) -> bool:
    """Append the json of each entry with a key above `after` in the records `data` holds
    (whole records only) to `out`, checking each record. Returns whether the last record
    ends its transaction. Raises `FramingError` on anything but intact records."""
    n = len(data)
    pos = 0
    ends = False
    view = memoryview(data)
    append = out.append
    while pos < n:
        if n - pos < HEADER_SIZE:
            raise FramingError("incomplete record header")
        head = _header(data, pos, seed)
        if head is None:
            raise FramingError("record header checksum mismatch")
        length, crc, lsn, flags = head
        end = pos + HEADER_SIZE + length
        if end > n:
            raise FramingError("record runs past the end of the data")
        if _crc32(view[pos + HEADER_SIZE : end]) != crc:
            raise FramingError("record checksum mismatch")
        base = lsn << 32
        pos += HEADER_SIZE
        while pos < end:
            if end - pos < ENTRY_HEADER_SIZE:
                raise FramingError("malformed record body")
            op, size = _entry_unpack(data, pos)
            start = pos + ENTRY_HEADER_SIZE
            pos = start + size
            if base | op > after:
                append(data[start:pos])
        if pos != end:
            raise FramingError("malformed record body")
        ends = bool(flags & FLAG_TX_END)
    return ends
