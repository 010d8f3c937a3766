"""Unit tests for the pgoutput decoder on hand-built protocol payloads."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
import struct
from typing import cast

import pytest

from sync_engine.replication.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgoutputDecodeError,
    Probe,
    Relation,
    RelationColumn,
    Truncate,
    Type,
    Update,
    decode,
    read_begin,
    read_commit,
    read_row,
    read_row_oid,
    row_may_match,
)
from sync_engine.replication.wal import Lsn, Xid

# ---------------------------------------------------------------- payload builders


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def tuple_data(*values: object) -> bytes:
    out = struct.pack("!H", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        else:
            assert isinstance(v, str)
            raw = v.encode()
            out += b"t" + struct.pack("!I", len(raw)) + raw
    return out


def begin(final_lsn: int, ts: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, ts, xid)


def commit(flags: int, lsn: int, end: int, ts: int) -> bytes:
    return b"C" + struct.pack("!BQQq", flags, lsn, end, ts)


def relation(oid: int, schema: str, name: str, ident: str, cols: list[tuple]) -> bytes:
    out = b"R" + struct.pack("!I", oid) + cstr(schema) + cstr(name) + ident.encode()
    out += struct.pack("!H", len(cols))
    for flags, cname, toid, tmod in cols:
        out += bytes([flags]) + cstr(cname) + struct.pack("!Ii", toid, tmod)
    return out


def insert(oid: int, *values: object) -> bytes:
    return b"I" + struct.pack("!I", oid) + b"N" + tuple_data(*values)


# ---------------------------------------------------------------- messages


def test_begin() -> None:
    msg = decode(begin(0x1_0000_0010, 123_456_789, 4242))
    assert msg == Begin(final_lsn=Lsn(0x1_0000_0010), commit_ts=123_456_789, xid=Xid(4242))
    assert type(msg) is Begin


def test_commit() -> None:
    msg = decode(commit(0, 0x16B3748, 0x16B3778, -5))
    assert msg == Commit(flags=0, commit_lsn=Lsn(0x16B3748), end_lsn=Lsn(0x16B3778), commit_ts=-5)


def test_relation() -> None:
    payload = relation(
        16384,
        "public",
        "ïtems",
        "f",
        [(1, "id", 20, -1), (0, "title", 25, -1), (0, "price", 1700, 655366)],
    )
    msg = decode(payload)
    assert msg == Relation(
        oid=16384,
        schema="public",
        name="ïtems",
        replica_identity="f",
        columns=(
            RelationColumn("id", 20, -1, True),
            RelationColumn("title", 25, -1, False),
            RelationColumn("price", 1700, 655366, False),
        ),
    )


def test_relation_without_columns() -> None:
    assert decode(relation(7, "s", "t", "n", [])) == Relation(7, "s", "t", "n", ())


def test_type() -> None:
    payload = b"Y" + struct.pack("!I", 99999) + cstr("public") + cstr("mood")
    assert decode(payload) == Type(oid=99999, schema="public", name="mood")


def test_origin() -> None:
    payload = b"O" + struct.pack("!Q", 0xABCDEF) + cstr("node_a")
    assert decode(payload) == Origin(commit_lsn=Lsn(0xABCDEF), name="node_a")


def test_logical_message() -> None:
    payload = b"M" + struct.pack("!BQ", 1, 777) + cstr("shapegate") + struct.pack("!I", 3)
    payload += b"\x00\xffx"
    assert decode(payload) == LogicalMessage(
        transactional=True, lsn=Lsn(777), prefix="shapegate", content=b"\x00\xffx"
    )
    payload = b"M" + struct.pack("!BQ", 0, 1) + cstr("p") + struct.pack("!I", 0)
    assert decode(payload) == LogicalMessage(False, Lsn(1), "p", b"")


def test_insert_with_null_unicode_and_empty_string() -> None:
    msg = decode(insert(16384, "1", "héllo ✓ 🐘", None, "", "12.50"))
    assert msg == Insert(relation_oid=16384, new=("1", "héllo ✓ 🐘", None, "", "12.50"))
    assert type(msg) is Insert


def test_insert_zero_columns() -> None:
    assert decode(insert(5)) == Insert(5, ())


def test_update_without_old_tuple() -> None:
    payload = b"U" + struct.pack("!I", 10) + b"N" + tuple_data("1", "x")
    assert decode(payload) == Update(relation_oid=10, old=None, new=("1", "x"))


def test_update_with_key_tuple() -> None:
    payload = (
        b"U" + struct.pack("!I", 10) + b"K" + tuple_data("1", None) + b"N" + tuple_data("2", "x")
    )
    assert decode(payload) == Update(10, ("1", None), ("2", "x"))


def test_update_with_old_tuple_and_unchanged_toast() -> None:
    payload = (
        b"U"
        + struct.pack("!I", 10)
        + b"O"
        + tuple_data("1", "big", None)
        + b"N"
        + tuple_data("1", UNCHANGED_TOAST, "now")
    )
    msg = decode(payload)
    assert isinstance(msg, Update)
    assert msg.old == ("1", "big", None)
    assert msg.new[0] == "1" and msg.new[2] == "now"
    assert msg.new[1] is UNCHANGED_TOAST


@pytest.mark.parametrize("kind", [b"K", b"O"])
def test_delete(kind: bytes) -> None:
    payload = b"D" + struct.pack("!I", 77) + kind + tuple_data("9", None)
    assert decode(payload) == Delete(relation_oid=77, old=("9", None))


def test_truncate() -> None:
    payload = b"T" + struct.pack("!IB", 3, 3) + struct.pack("!III", 1, 2, 4_000_000_000)
    msg = decode(payload)
    assert msg == Truncate(relation_oids=(1, 2, 4_000_000_000), options=3)
    assert isinstance(msg, Truncate)
    assert msg.options & Truncate.CASCADE and msg.options & Truncate.RESTART_IDENTITY


def test_messages_are_frozen_slotted_and_hashable() -> None:
    msg = decode(insert(1, "a"))
    assert isinstance(msg, Insert)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.relation_oid = 2  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
    assert hash(msg) == hash(Insert(1, ("a",)))
    assert repr(msg) == "Insert(relation_oid=1, new=('a',))"


def test_unchanged_toast_is_a_singleton() -> None:
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST


def test_bytes_like_payloads_are_accepted() -> None:
    raw = insert(3, "x")
    # decode() is annotated for bytes; the bytes-like types are what this test checks
    assert (
        decode(cast(bytes, bytearray(raw)))
        == decode(cast(bytes, memoryview(raw)))
        == Insert(3, ("x",))
    )


# ---------------------------------------------------------------- errors


GOOD = [
    begin(1, 2, 3),
    commit(0, 1, 2, 3),
    relation(1, "public", "t", "d", [(1, "id", 23, -1)]),
    b"Y" + struct.pack("!I", 1) + cstr("s") + cstr("t"),
    b"O" + struct.pack("!Q", 1) + cstr("o"),
    b"M" + struct.pack("!BQ", 1, 1) + cstr("p") + struct.pack("!I", 2) + b"ab",
    insert(1, "abc", None, UNCHANGED_TOAST),
    b"U" + struct.pack("!I", 1) + b"O" + tuple_data("a") + b"N" + tuple_data("b"),
    b"D" + struct.pack("!I", 1) + b"K" + tuple_data("a"),
    b"T" + struct.pack("!IB", 2, 0) + struct.pack("!II", 1, 2),
]


@pytest.mark.parametrize("payload", GOOD, ids=lambda p: chr(p[0]))
def test_every_truncation_is_rejected(payload: bytes) -> None:
    decode(payload)  # the full message is fine
    for cut in range(len(payload)):
        with pytest.raises(PgoutputDecodeError):
            decode(payload[:cut])


@pytest.mark.parametrize("payload", GOOD, ids=lambda p: chr(p[0]))
def test_trailing_bytes_are_rejected(payload: bytes) -> None:
    with pytest.raises(PgoutputDecodeError, match="trailing"):
        decode(payload + b"\0")


def test_truncated_error_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"truncated pgoutput b'I' message"):
        decode(insert(1, "hello")[:-2])


def test_empty_payload() -> None:
    with pytest.raises(PgoutputDecodeError, match="empty"):
        decode(b"")


def test_unknown_message_type() -> None:
    with pytest.raises(PgoutputDecodeError, match="unknown pgoutput message type b'Z'"):
        decode(b"Z\0\0\0")
    # proto 2 streaming messages are not part of proto 1
    with pytest.raises(PgoutputDecodeError, match="unknown"):
        decode(b"S" + struct.pack("!IB", 1, 1))


def test_unknown_tuple_kind() -> None:
    with pytest.raises(PgoutputDecodeError, match="tuple value kind b'x'"):
        decode(b"I" + struct.pack("!IcH", 1, b"N", 1) + b"x")


def test_binary_tuple_value_rejected() -> None:
    payload = b"I" + struct.pack("!IcH", 1, b"N", 1) + b"b" + struct.pack("!I", 1) + b"\x01"
    with pytest.raises(PgoutputDecodeError, match="binary"):
        decode(payload)


def test_wrong_tuple_markers() -> None:
    with pytest.raises(PgoutputDecodeError, match="expected 'N'"):
        decode(b"I" + struct.pack("!I", 1) + b"K" + tuple_data("a"))
    with pytest.raises(PgoutputDecodeError, match="expected 'K' or 'O'"):
        decode(b"D" + struct.pack("!I", 1) + b"N" + tuple_data("a"))
    with pytest.raises(PgoutputDecodeError, match="expected 'N'"):
        decode(b"U" + struct.pack("!I", 1) + b"O" + tuple_data("a") + b"X" + tuple_data("a"))


def test_invalid_utf8() -> None:
    payload = b"I" + struct.pack("!IcH", 1, b"N", 1) + b"t" + struct.pack("!I", 1) + b"\xff"
    with pytest.raises(PgoutputDecodeError, match="malformed"):
        decode(payload)


def test_non_bytes_payload() -> None:
    with pytest.raises(PgoutputDecodeError, match="must be bytes"):
        decode("I")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the fast path's raw reading


def test_raw_readers_agree_with_the_decoder() -> None:
    pad = b"w" + bytes(24)  # the messages lie at some position in a bigger buffer
    b, c = begin(7, 8, 9), commit(0, 10, 11, 12)
    assert read_begin(pad + b, len(pad)) == dataclasses.astuple(decode(b))
    assert read_commit(pad + c, len(pad)) == dataclasses.astuple(decode(c))
    assert read_row_oid(pad + insert(16384, "1"), len(pad)) == (16384,)


ROWS = [
    insert(1, "abc", None, UNCHANGED_TOAST),
    insert(2, "x", "é", ""),
    insert(5),
    b"U" + struct.pack("!I", 10) + b"N" + tuple_data("1", "x"),
    b"U" + struct.pack("!I", 1) + b"O" + tuple_data("a", None) + b"N" + tuple_data("b", "u"),
    b"U" + struct.pack("!I", 1) + b"K" + tuple_data("a") + b"N" + tuple_data(UNCHANGED_TOAST),
    b"D" + struct.pack("!I", 1) + b"K" + tuple_data("a", None),
    b"D" + struct.pack("!I", 77) + b"O" + tuple_data("9", "z"),
]


@pytest.mark.parametrize("payload", ROWS, ids=lambda p: chr(p[0]))
def test_read_row_reads_what_the_decoder_decodes(payload: bytes) -> None:
    pad = b"w" + bytes(24)
    kind, oid, old, new = read_row(pad + payload, len(pad))
    msg = decode(payload)
    assert kind == payload[0]
    assert isinstance(msg, Insert | Update | Delete)
    assert oid == msg.relation_oid
    assert old == (None if isinstance(msg, Insert) else msg.old)
    assert new == (None if isinstance(msg, Delete) else msg.new)


@pytest.mark.parametrize("payload", [*ROWS, insert(1, "hello")], ids=lambda p: chr(p[0]))
def test_read_row_rejects_what_the_decoder_rejects(payload: bytes) -> None:
    pad = bytes(25)
    for bad in [payload[:cut] for cut in range(1, len(payload))] + [payload + b"\0"]:
        with pytest.raises(PgoutputDecodeError) as decoded:
            decode(bad)
        with pytest.raises(PgoutputDecodeError) as read:
            read_row(pad + bad, len(pad))
        assert str(read.value) == str(decoded.value)  # about the message, not the buffer


@pytest.mark.parametrize("payload", GOOD[:6] + GOOD[9:], ids=lambda p: chr(p[0]))
def test_read_row_reads_only_rows(payload: bytes) -> None:
    with pytest.raises(PgoutputDecodeError, match="not a row message"):
        read_row(bytes(25) + payload, 25)


def _answer_of_decoded(payload: bytes, probes: list[Probe]) -> bool:
    """What probing the fully decoded rows answers: does a probed column's value, parsed,
    have a non-empty entry? (A value the parser refuses: has any entry of that column one?
    `ShapeRouter.candidates` asks every shape of the column then.)"""
    msg = decode(payload)
    rows = [getattr(msg, "old", None), getattr(msg, "new", None)]
    for row in rows:
        if row is None:
            continue
        for pos, parse, by_key in probes:
            value = row[pos]
            if not isinstance(value, str):
                continue
            try:
                key = value if parse is None else parse(value)
            except ValueError:
                if any(by_key.values()):
                    return True
                continue
            if by_key.get(key):
                return True
    return False


def test_row_may_match_answers_as_probing_the_decoded_rows() -> None:
    rng = random.Random(12)
    values = [None, UNCHANGED_TOAST, "", "3", "7", "x", "-2"]
    for _ in range(5000):
        ncols = rng.randint(1, 5)

        def row(ncols: int = ncols) -> tuple[object, ...]:
            return tuple(rng.choice(values) for _ in range(ncols))

        kind = rng.choice("IUD")
        if kind == "I":
            payload = b"I" + struct.pack("!I", 1) + b"N" + tuple_data(*row())
        elif kind == "D":
            payload = b"D" + struct.pack("!I", 1) + rng.choice([b"K", b"O"]) + tuple_data(*row())
        else:
            old = rng.choice([b"", b"K", b"O"])
            payload = b"U" + struct.pack("!I", 1)
            if old:
                payload += old + tuple_data(*row())
            payload += b"N" + tuple_data(*row())
        positions = sorted(rng.sample(range(ncols), rng.randint(0, ncols)))
        probes: list[Probe] = [
            (p, rng.choice([None, int]), {rng.choice(["3", 3, 7, "x"]): rng.choice([set(), {1}])})
            for p in positions
        ]
        at = rng.randint(0, 30)
        buf = bytes(at) + payload
        assert row_may_match(buf, at, probes) == _answer_of_decoded(payload, probes), payload


def test_row_may_match_defers_to_the_decoder_when_in_doubt() -> None:
    unknown_kind = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 2) + b"z" + b"n"
    assert row_may_match(unknown_kind, 0, [(1, None, {"a": {1}})])
    too_few_values = b"I" + struct.pack("!I", 1) + b"N" + tuple_data("a")
    assert row_may_match(too_few_values, 0, [(3, None, {"a": {1}})])
