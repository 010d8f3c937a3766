"""DELETE /v1/shape refusals in Electric's words (its delete_shape_plug_test pins them).

Neither `table` nor `handle`: Electric's `Params.validate_for_delete` blames the handle
("can't be blank when shape definition is missing"), the engine blamed the table. A handle
that is not the definition's shape: Electric's `Response.shape_definition_mismatch`, a 400
with its message and no `errors`, the engine had its own shorter words under `errors`.
Electric's DeleteShapePlug reads only `table` and `handle` (an empty one is absent): the
engine checked a DELETE as a GET from -1, so `live`, `live_sse` and an empty table were
refused in its own words (attack's raw probes, 1205h).
"""

from __future__ import annotations

from tests.sync_engine.engine_harness import Engine


async def test_delete_refusals_say_what_electric_says(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    await engine.sync(table="items")
    _, other, _ = await engine.sync(table="items", where="id > 1")
    resp = await engine.client.delete("/v1/shape")
    assert resp.status == 400
    assert await resp.json() == {
        "message": "Invalid request",
        "errors": {"handle": ["can't be blank when shape definition is missing"]},
    }
    resp = await engine.client.delete("/v1/shape", params={"table": "items", "handle": other})
    assert resp.status == 400
    assert await resp.json() == {
        "message": "The specified shape definition and handle do not match. Please ensure the"
        " shape definition is correct or omit the shape handle from the request to obtain a"
        " new one."
    }
    handle_missing = {
        "message": "Invalid request",
        "errors": {"handle": ["can't be blank when shape definition is missing"]},
    }
    for query in ("table=", "live=1&table=&offset=-1", "table=&handle=&live_sse=x"):
        resp = await engine.client.delete(f"/v1/shape?{query}")
        assert (resp.status, await resp.json()) == (400, handle_missing), query
    resp = await engine.client.delete("/v1/shape?table=it%C3%A9ms&live_sse=")
    assert resp.status == 400
    assert list((await resp.json())["errors"]) == ["table"]
    # (offset, live and the rest never read: the shape is deleted)
    resp = await engine.client.delete(
        "/v1/shape?table=items&where=id+%3E+1&live=true&offset=nonsense&live_sse=x"
    )
    assert resp.status == 202
    resp = await engine.client.delete("/v1/shape", params={"table": "", "handle": other})
    assert resp.status == 404  # (by handle alone: the one above is gone)


async def test_a_request_id_is_kept_only_when_20_to_200_bytes_long(engine: Engine) -> None:
    """As Electric's Plug.RequestId (and the proxy): a client's `x-request-id` of 20 to 200
    bytes is echoed, any other is replaced by one the engine makes (it echoed any)."""
    for given, kept in (("abc", False), ("r" * 20, True), ("r" * 200, True), ("r" * 201, False)):
        resp = await engine.client.get("/v1/health", headers={"x-request-id": given})
        answered = resp.headers["x-request-id"]
        assert (answered == given) is kept, (given, answered)
        assert 20 <= len(answered) <= 200
