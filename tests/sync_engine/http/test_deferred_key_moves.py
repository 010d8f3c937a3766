"""Under a DEFERRABLE primary key a row may land on a key another row still holds inside a
transaction, whatever the statements (review 08:41, cases by /work/review): a key change,
a plain insert, a row moving into the where; the held row then leaves by a key change, a
plain delete, or moving out of the where. No order of per-change messages says that to a
client (it was left a row short, no 409): the shape is retired, its clients refetch.
(The swap and shift cases: test_shape_api.py::test_keys_swapped_*.)"""

from __future__ import annotations

import pytest

from tests.sync_engine.engine_harness import Engine, apply

CASES = {
    "a_plain_delete": (
        None,
        [(1, 10, 5), (2, 20, 5)],
        "BEGIN; UPDATE d SET id = 2 WHERE id = 1; DELETE FROM d WHERE v = 20; COMMIT",
    ),
    "b_move_in": ("w > 0", [(1, 10, 0), (2, 20, 5)], "UPDATE d SET id = id + 1, w = 5"),
    "c_plain_insert": (
        None,
        [(2, 20, 5)],
        "BEGIN; INSERT INTO d VALUES (2, 99, 5); UPDATE d SET id = 3 WHERE v = 20; COMMIT",
    ),
    "d_move_out": (
        "w > 0",
        [(1, 10, 5), (2, 20, 5)],
        "BEGIN; UPDATE d SET id = 2 WHERE id = 1; UPDATE d SET w = 0, id = 9 WHERE v = 20; COMMIT",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_row_displaced_inside_a_transaction_ends_as_in_postgres(
    engine: Engine, case: str
) -> None:
    where, rows0, change = CASES[case]
    engine.sql(
        "CREATE TABLE d (id int, v int, w int,"
        " CONSTRAINT d_pk PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    for r in rows0:
        engine.sql("INSERT INTO d VALUES (%s, %s, %s)", r)
    params = {"table": "d", **({"where": where} if where else {})}
    rows, handle, offset = await engine.sync(**params)
    engine.sql(change)
    status, h, body = await engine.get(offset=offset, handle=handle, live="true", **params)
    if status == 409:
        rows, _, _ = await engine.sync(**params)
    else:
        assert status == 200, body
        apply(rows, body)
    q = "SELECT id, v FROM d" + (f" WHERE {where}" if where else "") + " ORDER BY id"
    want = {f'"public"."d"/"{i}"': str(v) for i, v in engine.sql(q)}
    got = {k: r["v"] for k, r in rows.items()}
    assert got == want, (case, status, body)
