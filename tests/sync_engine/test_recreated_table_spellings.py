"""A table dropped and created again under its name is a new table for every spelling of a
request (fidelity 08:44).

A request spelled as the shape's first (`table=t`) found the shape in the request cache and
checked its table was still there (`Tables.still_there`): the old shape was retired, the
request given a new one. A request spelled otherwise (`table=public.t`, `columns=` listing
every column) was described from the lookup's cached description (`LOOKUP_TTL`), whose
definition named the old table's oid, and was given the old shape without that check: the
dropped table's rows, and none of the new table's changes, until the schema check (every
`schema_check_interval`) retired it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine import tables
from sync_engine.app import SOURCES, build_app
from tests.sync_engine.engine_harness import SETTINGS, Engine, stopped_within


@pytest.fixture
async def engine(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Engine]:
    # No schema check meanwhile (it retires the old shape by chance), and the lookup's
    # description kept for the whole test (as within `LOOKUP_TTL` of the first request).
    monkeypatch.setattr(tables, "LOOKUP_TTL", 600.0)
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", schema_check_interval=600.0
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")
    await stopped_within(client.close(), "the in-process engine")


@pytest.mark.parametrize(
    "spelling",
    [{"table": "public.st"}, {"table": "st", "columns": "id,v"}],
    ids=["schema-qualified", "every-column"],
)
async def test_a_request_spelled_otherwise_after_drop_and_create_gets_the_new_table(
    engine: Engine, spelling: dict[str, str]
) -> None:
    engine.sql("CREATE TABLE st (id int PRIMARY KEY, v text)")
    rows, old, offset = await engine.sync(table="st")
    engine.sql("INSERT INTO st VALUES (0, 'old'), (1, 'old'), (2, 'old')")
    offset = await engine.follow_live(rows, old, offset, "2", table="st")
    assert len(rows) == 3
    engine.sql("DROP TABLE st")
    engine.sql("CREATE TABLE st (id int PRIMARY KEY, v text)")

    new_rows, new, new_offset = await engine.sync(**spelling)
    assert new != old
    assert new_rows == {}  # (the new table is empty; the old shape held 3 rows)
    engine.sql("INSERT INTO st VALUES (7, 'new')")
    await engine.follow_live(new_rows, new, new_offset, "7", **spelling)
    assert [r["v"] for r in new_rows.values()] == ["new"]

    status, _, _ = await engine.get(table="st", offset=offset, handle=old)
    assert status == 409  # (the old shape's clients refetch)


async def test_a_first_request_right_after_another_ones_check_gets_the_new_table(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `-1` request for an existing shape checks its table is still there
    (`Tables.still_there`). That check was trusted for `TABLE_CHECK_TTL` (1 s): a request
    arriving within it after `DROP TABLE` + `CREATE TABLE` (same name) + inserts got the
    dropped table's rows under the old handle. Held open here (600 s, as any request within
    the second) where that constant still exists; now a check counts only if it began
    after the request arrived."""
    monkeypatch.setattr(tables, "TABLE_CHECK_TTL", 600.0, raising=False)
    engine.sql("CREATE TABLE st (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO st VALUES (0, 'old'), (1, 'old'), (2, 'old')")
    rows, old, offset = await engine.sync(table="st")
    assert len(rows) == 3
    again, same, _ = await engine.sync(table="st")  # (another client's -1: the check ran)
    assert same == old and len(again) == 3
    engine.sql("DROP TABLE st")
    engine.sql("CREATE TABLE st (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO st VALUES (7, 'new')")

    new_rows, new, _ = await engine.sync(table="st")
    assert new != old
    assert [r["v"] for r in new_rows.values()] == ["new"]  # (never the dropped table's rows)
    status, _, _ = await engine.get(table="st", offset=offset, handle=old)
    assert status == 409
