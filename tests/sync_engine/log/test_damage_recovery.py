"""Damaged shape logs through the engine: detected, never served, repaired or retired.

In-process engine, real Postgres and real files: a byte is flipped in a chunk file, as a bad
disk would, and what a client sees is checked: a 409 (then a refetch that equals `SELECT`),
never a body built from the damaged bytes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sync_engine.app import SOURCES, build_app
from sync_engine.log.framing import HEADER_SIZE, encode_record, encode_records
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine


async def _start(aiohttp_client: Any, db_url: str, data: Path) -> Engine:
    settings = replace(SETTINGS, database_url=db_url, data_dir=data, chunk_bytes=4096)
    client = await aiohttp_client(build_app(settings))
    source = client.app[SOURCES]["default"]
    await source.ready.wait()
    await source.replicator.connected.wait()  # loaded logs checked against the slot
    return Engine(client, db_url, data)


def _expected(engine: Engine) -> dict[str, dict[str, Any]]:
    return {
        f'"public"."items"/"{i}"': {"id": i, "v": v, "t": t}
        for i, v, t in engine.sql("SELECT id::text, v::text, t FROM items")
    }


async def _follow(
    engine: Engine, handle: str, offset: str, until: str | None = None
) -> tuple[str, list[Any]]:
    """Catch up from `offset` until up to date (and, if given, until the row with key
    suffix `until` arrived, waiting live); returns the last offset and the messages."""
    messages: list[Any] = []
    live = False
    for _ in range(200):
        params = {"live": "true"} if live else {}
        status, h, body = await engine.get(table="items", handle=handle, offset=offset, **params)
        assert status == 200, body
        messages += body
        offset = h["electric-offset"]
        live = "electric-up-to-date" in h
        seen = until is None or any(m.get("key", "").endswith(until) for m in messages)
        if live and seen:
            return offset, messages
    raise AssertionError("never up to date")


async def _synced_shape_with_log(engine: Engine) -> tuple[str, str, Path]:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, v int, t text)")
    engine.sql("INSERT INTO items SELECT g, 0, 'row ' || g FROM generate_series(1, 5) g")
    rows, handle, offset = await engine.sync(table="items")
    for i in range(30):  # one transaction each: many records in a few chunks
        engine.sql("UPDATE items SET v = v + 1, t = repeat('x', 100) WHERE id = %s", (i % 5 + 1,))
    engine.sql("INSERT INTO items VALUES (100, 0, 'last')")
    offset, _ = await _follow(engine, handle, offset, until='"100"')
    return handle, offset, _shapes(engine)


def _shapes(engine: Engine) -> Path:
    """The directory of the source's shape logs: `<handle>.*` files and packs."""
    return engine.data_dir / "sources" / "default" / "shapes"


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


async def test_damage_found_on_load_retires_the_shape(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """The slot was confirmed past the damaged transactions, so replay cannot repair the
    log: the shape is retired, the old handle gets a 409 and a refetch is exact."""
    first = await _start(aiohttp_client, db_url, tmp_path / "data")
    handle, _, shapes = await _synced_shape_with_log(first)
    await first.client.close()  # sends the slot its last confirmed position
    _flip_middle(shapes / f"{handle}.log.00000000.log")

    second = await _start(aiohttp_client, db_url, tmp_path / "data")
    status, h, body = await second.get(table="items", handle=handle, offset="0_inf")
    assert status == 409 and body == [{"headers": {"control": "must-refetch"}}]
    await wait_until_async(lambda: not list(shapes.glob(f"{handle}.*")), message="files gone")
    rows, new_handle, _ = await second.sync(table="items")
    assert new_handle != handle and rows == _expected(second)


async def test_damage_found_while_serving_gives_409_then_an_exact_refetch(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    engine = await _start(aiohttp_client, db_url, tmp_path / "data")
    handle, offset, shapes = await _synced_shape_with_log(engine)
    _flip_middle(shapes / f"{handle}.log.00000000.log")
    status, _, body = await engine.get(table="items", handle=handle, offset="0_inf")
    assert status == 409 and body == [{"headers": {"control": "must-refetch"}}]
    status, _, _ = await engine.get(table="items", handle=handle, offset=offset, live="true")
    assert status == 409  # the shape is retired, its followers refetch too
    rows, new_handle, _ = await engine.sync(table="items")
    assert new_handle != handle and rows == _expected(engine)


async def test_a_damaged_snapshot_chunk_is_never_served(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    first = await _start(aiohttp_client, db_url, tmp_path / "data")
    first.sql("CREATE TABLE items (id int PRIMARY KEY, v int, t text)")
    first.sql("INSERT INTO items SELECT g, 0, repeat('y', 50) FROM generate_series(1, 40) g")
    _, handle, _ = await first.sync(table="items")
    await first.client.close()
    (pack,) = _shapes(first).glob("*.pack")  # its one chunk: in the pack, beside its marker
    _flip_middle(pack)

    second = await _start(aiohttp_client, db_url, tmp_path / "data")  # discards the shape
    status, _, body = await second.get(table="items", handle=handle, offset="0_0")
    assert status == 409 and body == [{"headers": {"control": "must-refetch"}}]
    assert list(_shapes(second).iterdir()) == []
    rows, new_handle, _ = await second.sync(table="items")
    assert new_handle != handle and rows == _expected(second)


async def test_a_torn_tail_the_slot_will_resend_is_repaired_by_replay(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """A crash in the middle of an append leaves part of a record the slot was never
    confirmed past: the restart cuts it and the replay fills it in; same handle, no 409."""
    first = await _start(aiohttp_client, db_url, tmp_path / "data")
    handle, offset, shapes = await _synced_shape_with_log(first)
    await first.client.close()
    first.sql("INSERT INTO items VALUES (200, 0, 'while down')")
    (confirmed,) = first.sql(
        "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots"
        " WHERE database = current_database()"
    )[0]
    record, _ = encode_record(int(confirmed), [(0, b'{"key":"torn","value":{}}')])
    chunk = sorted(shapes.glob(f"{handle}.log.*.log"))[-1]
    with open(chunk, "ab") as f:
        f.write(record[: HEADER_SIZE + 10])

    second = await _start(aiohttp_client, db_url, tmp_path / "data")
    assert b"torn" not in chunk.read_bytes()  # cut back
    _, messages = await _follow(second, handle, offset, until='"200"')
    keys = [m["key"] for m in messages if "key" in m]
    assert keys == ['"public"."items"/"200"'], (
        offset,
        confirmed,
        [(m["headers"]["lsn"], m["headers"]["op_position"]) for m in messages if "key" in m],
    )
    rows, same, _ = await second.sync(table="items")
    assert same == handle and rows == _expected(second)


async def test_a_transaction_cut_short_between_records_is_cut_back_and_replayed(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """A big transaction is written as several records; a crash after the first ones leaves
    whole, valid records of a transaction that never ended. They are not served (a client
    would see half a transaction): the restart cuts them off and the slot sends the
    transaction again; same handle, no 409."""
    first = await _start(aiohttp_client, db_url, tmp_path / "data")
    handle, offset, shapes = await _synced_shape_with_log(first)
    await first.client.close()
    first.sql("INSERT INTO items VALUES (300, 0, 'while down')")
    (confirmed,) = first.sql(
        "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots"
        " WHERE database = current_database()"
    )[0]
    entries = [(op, b'{"key":"half","value":{}}') for op in range(1, 40)]
    records = encode_records(int(confirmed), entries, 256, 0)
    assert len(records) > 2
    chunk = sorted(shapes.glob(f"{handle}.log.*.log"))[-1]
    with open(chunk, "ab") as f:
        for _, record, _ in records[:-1]:  # every record but the one that ends it
            f.write(record)

    second = await _start(aiohttp_client, db_url, tmp_path / "data")
    assert b"half" not in chunk.read_bytes()
    _, messages = await _follow(second, handle, offset, until='"300"')
    assert [m["key"] for m in messages if "key" in m] == ['"public"."items"/"300"']
    rows, same, _ = await second.sync(table="items")
    assert same == handle and rows == _expected(second)
