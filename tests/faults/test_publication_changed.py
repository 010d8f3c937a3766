"""The engine's publication changed by someone else (a DBA, a migration tool) in ways the
periodic check's question "is the table in the publication now" did not see: pgoutput sends
a change only as the publication stood when it was written, so the changes made meanwhile
never reached a client, which stayed "up to date" without them for good (chaos, 01:50).

- the table taken out of the publication and added again between two checks;
- the publication's `publish` option narrowed to inserts, then set back between two checks;
- the same option narrowed and left so (updates and deletes never sent again);
- the table's entry given a row filter (rows outside it never sent, an update leaving it
  sent as a delete);
- each of these altered and put back inside the transaction of the row changes (chaos
  02:27): pgoutput decodes them under that transaction's catalog state.

Now the check compares what publishes each table (its publication entries and the
publication row's version) with what did when its shapes were made, retires the shapes
(their clients refetch: equal to `SELECT` again), puts the publication back to every change
and every row, and later changes stream live. Real path: the engine as a process, a follower
that acts as the client does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults.followed import Rows, followed_engine, rows_of, run_sql

PUB = "shapegate_pub_default"
EVERY = "'insert, update, delete, truncate'"
#: What each case does to the publication and the table, in one quick series.
CASES = {
    "dropped-and-added-again": [
        f"ALTER PUBLICATION {PUB} DROP TABLE items",
        "INSERT INTO items VALUES (10, 'new')",
        "UPDATE items SET v = 'changed' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        f"ALTER PUBLICATION {PUB} ADD TABLE items",
    ],
    "publish-narrowed-and-set-back": [
        f"ALTER PUBLICATION {PUB} SET (publish = 'insert')",
        "UPDATE items SET v = 'changed' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        f"ALTER PUBLICATION {PUB} SET (publish = {EVERY})",
    ],
    "publish-narrowed": [
        f"ALTER PUBLICATION {PUB} SET (publish = 'insert')",
        "UPDATE items SET v = 'changed' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
    ],
    "row-filter": [
        f"ALTER PUBLICATION {PUB} DROP TABLE items",
        f"ALTER PUBLICATION {PUB} ADD TABLE items WHERE (id < 5)",
        "INSERT INTO items VALUES (10, 'outside')",
        "UPDATE items SET v = 'changed' WHERE id = 1",
    ],
    # Altered and put back in the transaction of the row changes (chaos 02:27): no look at
    # the publication's state, however often, sees it altered.
    "dropped-and-added-again-in-one-transaction": [
        "BEGIN",
        f"ALTER PUBLICATION {PUB} DROP TABLE items",
        "INSERT INTO items VALUES (10, 'new')",
        "UPDATE items SET v = 'changed' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        f"ALTER PUBLICATION {PUB} ADD TABLE items",
        "COMMIT",
    ],
    "publish-narrowed-and-set-back-in-one-transaction": [
        "BEGIN",
        f"ALTER PUBLICATION {PUB} SET (publish = 'insert')",
        "UPDATE items SET v = 'changed' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        f"ALTER PUBLICATION {PUB} SET (publish = {EVERY})",
        "COMMIT",
    ],
    "row-filter-in-one-transaction": [
        "BEGIN",
        f"ALTER PUBLICATION {PUB} DROP TABLE items",
        f"ALTER PUBLICATION {PUB} ADD TABLE items WHERE (id < 0)",
        "INSERT INTO items VALUES (10, 'outside')",
        "UPDATE items SET v = 'changed' WHERE id = 1",
        f"ALTER PUBLICATION {PUB} DROP TABLE items",
        f"ALTER PUBLICATION {PUB} ADD TABLE items",
        "COMMIT",
    ],
}


def _select(db_url: str) -> Rows:
    return rows_of(db_url, b"SELECT id, v FROM items")


def _view(rows: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    return sorted((str(r["id"]), str(r["v"])) for r in rows.values())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", list(CASES))
async def test_a_publication_changed_under_a_shape_is_noticed(
    db_url: str, tmp_path: Path, case: str
) -> None:
    run_sql(
        db_url,
        "CREATE TABLE items (id int PRIMARY KEY, v text)",
        "INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    # (checks 3 s apart: the series of a case takes a few ms, so it falls between two)
    async with followed_engine(db_url, tmp_path, "3", _view, lambda: _select(db_url)) as f:
        await f.converged("first sync")
        old = f.follower.handle
        run_sql(db_url, *CASES[case])
        await f.converged(case)
        assert f.follower.handle != old and f.follower.resets == 1, f.follower.statuses
        # The publication sends every change of every row again: later ones stream live.
        run_sql(
            db_url,
            "INSERT INTO items VALUES (20, 'later')",
            "UPDATE items SET v = 'later' WHERE id = 3",
            "DELETE FROM items WHERE id = 1",
        )
        await f.converged(f"{case}: later changes, live")
        assert f.follower.resets == 1, f.follower.statuses
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                b"SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate"
                b" FROM pg_publication WHERE pubname = %s",
                (PUB,),
            ).fetchone()
            filtered = conn.execute(
                b"SELECT count(*) FROM pg_publication_rel WHERE prqual IS NOT NULL"
            ).fetchone()
        assert row == (True,) and filtered == (0,)
