"""int2vector and oidvector columns: scalars to the client, as in Electric, not arrays."""

from __future__ import annotations

import orjson

from tests.sync_engine.engine_harness import Engine


async def test_vector_columns_are_not_arrays_in_the_schema_or_the_values(engine: Engine) -> None:
    engine.sql("CREATE TABLE v (id int PRIMARY KEY, i2v int2vector, oidv oidvector, a int2[])")
    engine.sql("INSERT INTO v VALUES (1, '1 2', '1 2 3', '{1,2}')")
    status, h, body = await engine.get(table="v", offset="-1")
    assert status == 200
    schema = orjson.loads(h["electric-schema"])
    # Electric's client parses a column with `dims` as an array literal: '1 2' read as one
    # int2 was NaN in every ShapeStream row.
    assert schema["i2v"] == {"type": "int2vector"}
    assert schema["oidv"] == {"type": "oidvector"}
    assert schema["a"] == {"type": "int2", "dims": 1}
    [row] = [m["value"] for m in body if "key" in m]
    assert row == {"id": "1", "i2v": "1 2", "oidv": "1 2 3", "a": "{1,2}"}
