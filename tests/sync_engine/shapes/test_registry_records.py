"""What the registry records of a shape's table survives a restart whole.

`table_to_json` lists the fields it writes; a field of `ColumnInfo` it left out came back
as its default after a restart (the domain's base type: a shape whose where clause casts
a domain column to text was then refused and discarded, its clients refetching).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import aiohttp
import psycopg
import pytest

from sync_engine.log.files import LogDamaged
from sync_engine.pg.catalog import ColumnInfo, TableInfo
from sync_engine.shapes.registry import table_from_json, table_to_json
from sync_engine.shapes.shape import Shape
from tests.support.engine_process import EngineProcess


def test_every_column_field_round_trips() -> None:
    values: dict[str, object] = {}
    for f in dataclasses.fields(ColumnInfo):  # a value unlike any default, per field
        values[f.name] = {"str | None": f"x-{f.name}", "int | None": 7, "bool": True}.get(
            str(f.type), f"x-{f.name}" if "str" in str(f.type) else 7
        )
    values["generated"] = values["not_null"] = True
    column = ColumnInfo(**values)  # type: ignore[arg-type]
    table = TableInfo(
        oid=1, schema="s", name="t", columns=(column,), pk=("x",), kind="r",
        replica_identity="d", relfilenode=16390,
    )  # fmt: skip
    again = table_from_json(table_to_json(table))
    assert again == table, [
        f.name
        for f in dataclasses.fields(ColumnInfo)
        if getattr(again.columns[0], f.name) != getattr(column, f.name)
    ]
    # recorded by an engine that did not record the relfilenode: None (not compared by the
    # schema check, so an upgrade retires no shape), the rest as it was
    old = table_to_json(table)
    del old["relfilenode"]
    assert table_from_json(old) == dataclasses.replace(table, relfilenode=None)


async def test_a_shape_casting_a_domain_to_text_survives_a_restart(
    db_url: str, tmp_path: Path
) -> None:
    """Real path: the engine as a process, restarted on its data directory; the client
    resumes with its handle and offset and is not sent back to -1."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE DOMAIN dbool AS boolean")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, db dbool)")
        conn.execute("INSERT INTO items VALUES (1, true), (2, false)")
    params = {"table": "items", "where": "db::text = 'true'", "offset": "-1"}
    engine = EngineProcess(db_url, tmp_path / "data")
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(engine.url + "/v1/shape", params=params) as r:
                assert r.status == 200, await r.text()
                handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
                assert [m["key"] for m in await r.json() if "key" in m] == ['"public"."items"/"1"']
            engine.stop()
            await asyncio.to_thread(engine.start)
            params.update(handle=handle, offset=offset)
            async with session.get(engine.url + "/v1/shape", params=params) as r:
                assert r.status == 200, await r.text()  # (was a 409: the shape discarded)
                assert r.headers["electric-handle"] == handle
    finally:
        engine.stop()


async def test_damage_found_by_a_read_in_a_worker_thread_rotates_on_the_event_loop(
    tmp_path: Path,
) -> None:
    """A snapshot chunk is read in a worker thread (`asyncio.to_thread`); one found
    damaged used to rotate its shape right there: the registry's and the router's dicts
    changed under the event loop, the shape's waiters woken from a foreign thread (a
    future's result set off its loop). Now the rotation is the loop's; the reader's 409
    still finds the shape gone."""
    from sync_engine.shapes.registry import ShapeRegistry
    from sync_engine.shapes.router import ShapeRouter
    from tests.sync_engine.shapes.test_waiting import make_shape

    registry = ShapeRegistry(tmp_path / "shapes", 1 << 20, ShapeRouter(), fsync=False)
    shape = make_shape(tmp_path)
    shape.log.create()
    shape.log.write_snapshot_chunk(0, b'{"key":"a"}')
    shape.log.chunks_readable(1, complete=False)
    registry.add(shape)
    (tmp_path / "1-1.snapshot.00000.json").write_bytes(b'{"key":"b"}')  # damaged
    threads: list[str] = []
    rotate = registry.rotate

    def rotating(shape: Shape, reason: str) -> None:  # (rotate's parameter names)
        threads.append(threading.current_thread().name)
        rotate(shape, reason)

    registry.rotate = rotating  # type: ignore[method-assign]
    waiter = asyncio.create_task(shape.wait_until(lambda: shape.rotated, 30))
    await asyncio.sleep(0)
    with pytest.raises(LogDamaged):
        await asyncio.to_thread(shape.log.read_snapshot_chunk, 0)
    assert threads == [threading.main_thread().name]
    assert shape.rotated and shape.handle not in registry.by_handle
    assert await asyncio.wait_for(waiter, 5) is True


@pytest.mark.parametrize(
    ("field", "rows"),
    [
        ("files", [[1, 2, 3]]),
        ("files", [[1]]),
        ("files", [[1, "2"]]),
        ("files", [[True, 2]]),  # (a JSON true is no oid: it read as 1)
        ("files", [1, 2]),
        ("files", {"1": 2}),
        ("enums", [[1, 2]]),
        ("enums", [[1, 2, 3]]),
        ("enums", [[1, False, "a"]]),
        ("enums", "a"),
    ],
)
def test_a_damaged_files_or_enums_list_is_refused(field: str, rows: object) -> None:
    """A record whose `files` or `enums` is not the list of rows `table_to_json` writes is
    refused (its shape is discarded, its clients refetch), never loaded as something else."""
    table = TableInfo(
        oid=1, schema="s", name="t", columns=(), pk=(), relfilenode=5,
        files=((2, 3), (4, 5)), enums=((1, 7, "a"), (1, 8, "b")),
    )  # fmt: skip
    assert table_from_json(table_to_json(table)) == table
    record = table_to_json(table)
    record[field] = rows
    with pytest.raises(TypeError):
        table_from_json(record)
