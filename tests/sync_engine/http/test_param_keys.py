"""`params[01]` is not `$1`: Electric checks that keys are numbers (`Integer.parse`, which
reads `01` as 1) and numbered from 1, but looks `$1` up under the key `1`, so a clause
using `$1` with only `params[01]` is "parameter $1 was not provided", and one not using it
"parameter value for $01 was not used". The engine read `01` as `$1` and served the rows."""

from __future__ import annotations

from typing import Any

from tests.sync_engine.engine_harness import Engine


async def _where_error(engine: Engine, **params: Any) -> str:
    status, _h, body = await engine.get(table="items", offset="-1", **params)
    assert status == 400, body
    (message,) = body["errors"]["where"]
    return str(message)


async def test_a_zero_padded_param_key_is_not_dollar_one(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY)")
    engine.sql("INSERT INTO items VALUES (1), (2)")
    message = await _where_error(engine, where="id = $1", **{"params[01]": "1"})
    assert message == "At location 5: parameter $1 was not provided"
    message = await _where_error(engine, where="id = 1", **{"params[01]": "1"})
    assert message == "At location 0: parameter value for $01 was not used"
    # the plain key still works
    rows, _, _ = await engine.sync(table="items", where="id = $1", **{"params[1]": "2"})
    assert [r["id"] for r in rows.values()] == ["2"]
    # a subset alike
    _, handle, _ = await engine.sync(table="items")
    resp = await engine.client.post(
        "/v1/shape",
        params={"table": "items", "offset": "-1", "handle": handle},
        json={"where": "id = $1", "params": {"01": "1"}},
    )
    body = await resp.json()
    assert resp.status == 400, body
    assert body["errors"]["subset"]["where"] == ["At location 5: parameter $1 was not provided"]


async def test_keys_electric_reads_as_numbers_get_electrics_answers(engine: Engine) -> None:
    """`Integer.parse` also reads a sign and any number of digits: `+1` and `0000000001` are
    numbers (then "$1 was not provided", as for `01`), `-1` one out of sequence. The engine
    refused them as "Parameters can only use numbers as keys" (LOW)."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY)")
    engine.sql("INSERT INTO items VALUES (1)")
    for key in ("+1", "0000000001", "0" * 5000 + "1"):
        message = await _where_error(engine, where="id = $1", **{f"params[{key}]": "1"})
        assert message == "At location 5: parameter $1 was not provided", key
    for keys in (("-1",), ("1", "+1"), ("1", "9" * 5000)):
        status, _h, body = await engine.get(
            table="items", offset="-1", where="id = $1", **{f"params[{k}]": "1" for k in keys}
        )
        assert status == 400, body
        assert body["errors"]["params"] == [
            "Parameters must be numbered sequentially, starting from 1"
        ], keys
    for key in ("1_0", " 1", "1.0", "++1", "", "٣"):  # (not what Integer.parse reads whole)
        status, _h, body = await engine.get(
            table="items", offset="-1", where="id = $1", **{f"params[{key}]": "1"}
        )
        assert status == 400, body
        assert body["errors"]["params"] == ["Parameters can only use numbers as keys"], key
