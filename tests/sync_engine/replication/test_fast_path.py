"""`TransactionAssembler.handle_batch` (raw bytes, decodes only what routing needs) must leave
exactly the state the decoded path (`pgoutput.decode` + `TransactionAssembler.handle`) leaves: the same log
entries per shape, the same rotations, the same LSN bookkeeping.

Both replicators get the same real pgoutput stream from a real slot: inserts, updates
moving rows into and out of shapes, primary-key changes, deletes, NULL and TOASTed
(unchanged) indexed and unindexed columns, REPLICA IDENTITY FULL and DEFAULT, a table
without shapes, a table with an unindexed shape, multi-row transactions, a shape added
mid-stream, a schema change (new Relation message) and a TRUNCATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import psycopg
import pytest

from sync_engine.log.files import ShapeLog
from sync_engine.pg.catalog import TableInfo, load_table
from sync_engine.pg.xid_snapshot import XidSnapshot
from sync_engine.replication import pgoutput
from sync_engine.replication.replicator import Replicator
from sync_engine.replication.slot import ensure_slot
from sync_engine.replication.stream import XLOGDATA_HEADER, ReplicationStream
from sync_engine.shapes.registry import ShapeRegistry
from sync_engine.shapes.router import ShapeRouter, key_parser
from sync_engine.shapes.shape import Shape, ShapeDefinition, ShapeHandle
from sync_engine.shapes.where import index_key, parse_where

SLOT = "fast_path"
PUB = "fast_path_pub"
UUID = "6f1c1b43-3c1e-4f43-9a4e-3c3f6b1f0a11"

SCHEMA = [
    "CREATE TABLE items (id int PRIMARY KEY, user_id int, tag text, u uuid, big text, note text)",
    "ALTER TABLE items REPLICA IDENTITY FULL",
    "CREATE TABLE plain (id int PRIMARY KEY, user_id int, tag text)",
    "CREATE TABLE other (id int PRIMARY KEY, x int)",
    "CREATE TABLE loose (id int PRIMARY KEY, note text)",
    "ALTER TABLE loose REPLICA IDENTITY FULL",
    f"CREATE PUBLICATION {PUB} FOR TABLE items, plain, other, loose",
]

SHAPES = [
    ("items", "user_id = 1"),
    ("items", "user_id IN (2, 3)"),
    ("items", "tag = 'a'"),
    ("items", f"u = '{UUID}'"),
    ("items", "user_id = 5 AND tag = 'b'"),
    ("plain", "user_id = 1"),
    ("plain", "tag = 'a'"),
    ("loose", "note LIKE 'x%'"),
    ("items", "note = 'never'"),  # probing it walks past the TOASTed column
]
LATE_SHAPE = ("items", "user_id = 4")

BIG = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)"  # ~12 KB, TOASTed

PHASE_1A = [
    ["INSERT INTO items VALUES (1, 1, 'z', NULL, 'small', 'n')"],
    ["INSERT INTO items VALUES (2, 4, 'z', NULL, 'small', 'n')"],  # no shape yet
    ["INSERT INTO items VALUES (3, NULL, NULL, NULL, NULL, NULL)"],
    [f"INSERT INTO items VALUES (4, 2, 'a', '{UUID}', {BIG}, 'n')"],
    [
        "INSERT INTO items VALUES (5, 3, 'q', NULL, 'x', 'n')",
        "INSERT INTO other VALUES (1, 1)",
        "INSERT INTO items VALUES (6, 9, 'q', NULL, 'x', 'n')",
        "INSERT INTO plain VALUES (1, 1, 'b')",
        "INSERT INTO plain VALUES (2, 7, 'c')",
        "INSERT INTO loose VALUES (1, 'xyz')",
        "INSERT INTO loose VALUES (2, 'abc')",
    ],
    ["INSERT INTO items VALUES (7, 5, 'b', NULL, 'x', 'n')"],
    ["INSERT INTO items VALUES (8, 5, 'c', NULL, 'x', 'n')"],
    [f"INSERT INTO items VALUES (10, 8, 'z', NULL, {BIG}, 'n')"],  # no shape wants it
]
PHASE_1B = [
    ["INSERT INTO items VALUES (9, 4, 'z', NULL, 'small', 'n')"],  # the late shape's
    ["UPDATE items SET user_id = 1 WHERE id = 6"],  # moves in
    ["UPDATE items SET user_id = 9 WHERE id = 1"],  # moves out
    ["UPDATE items SET note = 'm' WHERE id = 3"],  # matches nothing, before or after
    ["UPDATE items SET note = 'toast unchanged' WHERE id = 4"],  # 'u' for big
    ["UPDATE items SET tag = 'a' WHERE id = 4"],
    ["UPDATE items SET note = 'still none' WHERE id = 10"],  # 'u' before the note column
    ["UPDATE items SET id = 40 WHERE id = 4"],  # primary key change
    ["UPDATE items SET u = NULL, user_id = 3 WHERE id = 40"],
    ["UPDATE plain SET tag = 'a' WHERE id = 2"],  # default identity: no old tuple
    ["UPDATE plain SET id = 20 WHERE id = 2"],  # key change: old 'K' tuple
    ["UPDATE plain SET user_id = 8 WHERE id = 1"],
    ["UPDATE loose SET note = 'xx' WHERE id = 2"],
    ["DELETE FROM items WHERE id = 5"],
    ["DELETE FROM items WHERE id = 3"],
    ["DELETE FROM plain WHERE id = 20"],
    ["DELETE FROM loose WHERE id = 1"],
    ["UPDATE other SET x = 2 WHERE id = 1", "DELETE FROM other WHERE id = 1"],
    [
        "INSERT INTO items SELECT i, i % 7, 'a', NULL, 'bulk', 'n' FROM generate_series(100, 160) i",
        "UPDATE items SET user_id = 2 WHERE id BETWEEN 100 AND 120",
        "DELETE FROM items WHERE id BETWEEN 150 AND 160",
    ],
]
PHASE_2 = [
    ["INSERT INTO plain VALUES (3, 1, 'a')"],
    ["ALTER TABLE items ADD COLUMN extra int"],
    ["INSERT INTO items VALUES (200, 1, 'a', NULL, 'x', 'n', 1)"],  # new Relation first
    ["INSERT INTO plain VALUES (4, 1, 'a')"],
    ["TRUNCATE plain"],
    ["INSERT INTO plain VALUES (5, 1, 'a')"],
    ["INSERT INTO loose VALUES (3, 'xq')"],
]


async def _run(db_url: str, txns: list[list[str]]) -> int:
    """Run each statement list as one transaction; returns how many commits that makes."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        for statements in txns:
            for stmt in statements:
                await conn.execute(stmt)
            await conn.commit()
    return sum(1 for t in txns if not t[0].startswith("ALTER"))


async def _capture(stream: ReplicationStream, commits: int) -> list[bytes]:
    out: list[bytes] = []
    seen = 0
    while seen < commits:
        batch = await stream.read_raw(timeout=10)
        assert batch, "the stream went quiet before all commits arrived"
        for m in batch:
            out.append(m)
            seen += m[XLOGDATA_HEADER] == ord("C")
    return out


Appended = dict[str, list[tuple[int, list[tuple[int, bytes]]]]]


def _make_shape(
    registry: ShapeRegistry,
    tables: dict[str, TableInfo],
    spec: tuple[str, str],
    n: int,
    appended: Appended,
) -> Shape:
    name, where = spec
    table = tables[name]
    definition = ShapeDefinition(
        table_oid=table.oid,
        schema="public",
        table=name,
        where=where,
        columns=tuple(c.name for c in table.columns),
    )
    log = ShapeLog(registry.directory / f"s{n}", 1 << 20, fsync=False)
    log.create()
    # What the replicator appends, kept in memory: rotation deletes the log's files.
    record = appended.setdefault(f"s{n}", [])
    append = log.append_transaction

    def recording_append(lsn: int, entries: list[tuple[int, bytes]], ends: bool = True) -> None:
        record.append((lsn, entries))
        append(lsn, entries, ends)

    log.append_transaction = recording_append  # type: ignore[method-assign]
    shape = Shape(
        handle=ShapeHandle(f"s{n}"),
        definition=definition,
        table=table,
        where=parse_where(where, {}, table.column_map),
        columns=table.columns,
        log=log,
        snapshot=XidSnapshot(0, 1, frozenset()),
    )
    registry.add(shape)
    return shape


def _replicator(data: Path, tables: dict[str, TableInfo]) -> tuple[Replicator, Appended]:
    data.mkdir(parents=True)
    router = ShapeRouter()
    registry = ShapeRegistry(data, 1 << 20, router, fsync=False)
    appended: Appended = {}
    for i, spec in enumerate(SHAPES):
        _make_shape(registry, tables, spec, i, appended)
    return Replicator("", "", "", registry, router, fsync=False), appended


def _state(rep: Replicator) -> tuple[int, ...]:
    return (
        rep.global_lsn,
        rep.changes_seen,
        rep.transactions_seen,
        rep.assembler.op,
        rep.assembler.xid,
        int(rep.assembler.in_transaction),
    )


def _count_wanted(rep: Replicator) -> list[int]:
    """Count the rows for which the reference router finds candidate shapes."""
    count = [0]
    candidates = rep.router.candidates

    def counting(
        oid: int,
        positions: dict[str, int],
        old: Sequence[object] | None,
        new: Sequence[object] | None,
    ) -> set[Shape]:
        found = candidates(oid, positions, old, new)
        count[0] += bool(found)
        return found

    rep.router.candidates = counting  # type: ignore[method-assign]
    shapes_of = rep.router.shapes_of

    def counting_all(oid: int) -> set[Shape]:  # (an update or delete without its old row)
        found = shapes_of(oid)
        count[0] += bool(found)
        return found

    rep.router.shapes_of = counting_all  # type: ignore[method-assign]
    return count


def _feed_decoded(rep: Replicator, raw: list[bytes]) -> int:
    last = 0
    for m in raw:
        end = rep.assembler.handle(pgoutput.decode(m[XLOGDATA_HEADER:]))
        last = end or last
    return last


def _feed_fast(rep: Replicator, raw: list[bytes], size: int) -> int:
    last = 0
    for i in range(0, len(raw), size):
        end = rep.handle_batch(raw[i : i + size])
        last = end or last
    return last


@pytest.mark.parametrize("batch_size", [1, 5, 10_000])
async def test_fast_path_matches_the_decoded_path(
    db_url: str, tmp_path: Path, batch_size: int
) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for stmt in SCHEMA:
            await conn.execute(stmt)
        # (load_table's None, a missing table, would fail the test at its first use)
        tables = cast(
            dict[str, TableInfo],
            {
                name: await load_table(conn, "public", name)
                for name in ("items", "plain", "other", "loose")
            },
        )
    await ensure_slot(db_url, SLOT)
    async with ReplicationStream(db_url, SLOT, PUB, linger=0) as stream:
        raw_1a = await _capture(stream, await _run(db_url, PHASE_1A))
        raw_1b = await _capture(stream, await _run(db_url, PHASE_1B))
        raw_2 = await _capture(stream, await _run(db_url, PHASE_2))

    ref, ref_log = _replicator(tmp_path / "ref", tables)
    fast, fast_log = _replicator(tmp_path / "fast", tables)
    # The fast path must also be exact the other way: a row reaches the full decoder only
    # when some shape may want it (falling back on doubt would be correct, but slow).
    wanted = _count_wanted(ref)

    assert _feed_fast(fast, raw_1a, batch_size) == _feed_decoded(ref, raw_1a)
    assert _state(fast) == _state(ref)
    _make_shape(ref.registry, tables, LATE_SHAPE, 99, ref_log)
    _make_shape(fast.registry, tables, LATE_SHAPE, 99, fast_log)
    assert _feed_fast(fast, raw_1b, batch_size) == _feed_decoded(ref, raw_1b)
    assert _state(fast) == _state(ref)
    assert fast_log == ref_log
    # `plain` keeps the default REPLICA IDENTITY: its shapes, whose where clauses read
    # other columns than the key, cannot take an update or delete without its old row, and
    # are retired (both paths alike: `_state`)
    live = set(fast.registry.by_handle)
    assert not {"s5", "s6"} & live
    assert all(txns for h, txns in fast_log.items() if h not in ("s5", "s6", "s8")), (
        "all others got rows"
    )
    assert b"toast unchanged" in b"".join(e for _, es in fast_log["s3"] for _, e in es)
    counts = {h: len(txns) for h, txns in fast_log.items()}

    shapes = list(fast.registry.by_handle.values())
    assert _feed_fast(fast, raw_2, batch_size) == _feed_decoded(ref, raw_2)
    assert _state(fast) == _state(ref)
    assert fast_log == ref_log
    assert [s.rotated for s in shapes] == [s.definition.table != "loose" for s in shapes]
    assert fast.router.tables() == ref.router.tables() == {tables["loose"].oid}
    assert fast.assembler.rows_decoded == wanted[0] > 20
    grown = {h for h, txns in fast_log.items() if len(txns) > counts[h]}
    assert grown == {"s7"}  # loose; items rotated first, plain's retired in phase 1


def test_key_parser_agrees_with_index_key() -> None:
    from sync_engine.pg.catalog import ColumnInfo

    cases = {
        "int4": ["1", "-7"],
        "int8": ["9007199254740993"],
        "text": ["a b"],
        "bpchar": ["ab  "],
        "uuid": [UUID.upper()],
        "numeric": ["1.50"],
        "bool": ["t", "f"],
        "_int4": ["{1,2}"],
        "date": ["2024-02-29"],
    }
    for type_name, texts in cases.items():
        elem = type_name[1:] if type_name.startswith("_") else None
        info = ColumnInfo("c", 1, 0, type_name, elem, "b", -1, 1 if elem else 0, False, None)
        parse = key_parser(info)
        for text in texts:
            got = text if parse is None else parse(text)
            assert got == index_key(info, text), (type_name, text)
