"""What the registry records of a shape's table survives a restart whole.

`table_to_json` lists the fields it writes; a field of `ColumnInfo` it left out came back
as its default after a restart (the domain's base type: a shape whose where clause casts
a domain column to text was then refused and discarded, its clients refetching).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
import psycopg

from sync_engine.pg.catalog import ColumnInfo, TableInfo
from sync_engine.shapes.registry import table_from_json, table_to_json
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
        replica_identity="d",
    )  # fmt: skip
    again = table_from_json(table_to_json(table))
    assert again == table, [
        f.name
        for f in dataclasses.fields(ColumnInfo)
        if getattr(again.columns[0], f.name) != getattr(column, f.name)
    ]


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
