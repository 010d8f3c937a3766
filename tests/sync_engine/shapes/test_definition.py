"""Shape parameters -> definition, checked against the catalog (`shapes/definition.py`).

Pure: the catalog is a lookup over tables built here. `tests/sync_engine/http/test_bad_input.py`
sends a few of these through the real engine and Postgres.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from sync_engine.errors import InvalidRequest
from sync_engine.pg.catalog import ColumnInfo, TableInfo
from sync_engine.shapes.definition import (
    Described,
    LogMode,
    Replica,
    ShapeDefinition,
    ShapeParams,
    describe,
)

C_UTF8 = "c|C.UTF-8|C.UTF-8|t"


def _col(
    name: str, type_name: str, attnum: int, *, pk: int | None = None, generated: bool = False
) -> ColumnInfo:
    collation = C_UTF8 if type_name == "text" else None
    return ColumnInfo(
        name, attnum, 0, type_name, None, "b", -1, 0, pk is not None, pk, generated, collation
    )


ITEMS = TableInfo(
    oid=100,
    schema="public",
    name="items",
    columns=(_col("id", "int4", 1, pk=0), _col("title", "text", 2), _col("n", "int4", 3)),
    pk=("id",),
)
TABLES = {
    ("public", "items"): ITEMS,
    ("public", "items_view"): TableInfo(101, "public", "items_view", ITEMS.columns, (), kind="v"),
    ("public", "Mixed"): TableInfo(102, "public", "Mixed", (_col("id", "int4", 1, pk=0),), ("id",)),
    ("public", "gen"): TableInfo(
        103,
        "public",
        "gen",
        (_col("id", "int4", 1, pk=0), _col("twice", "int4", 2, generated=True)),
        ("id",),
    ),
}


async def lookup(schema: str, name: str) -> TableInfo | None:
    return TABLES.get((schema, name))


async def no_zones(zones: Iterable[str]) -> str | None:
    raise AssertionError(f"no AT TIME ZONE here, but asked about {zones}")


async def described(**params: Any) -> Described:
    return await describe(ShapeParams(**params), lookup, no_zones)


async def refused(**params: Any) -> dict[str, Any]:
    with pytest.raises(InvalidRequest) as info:
        await described(**params)
    return info.value.errors


async def test_a_definition_is_canonical() -> None:
    """Spellings of one shape give one definition: quoting, case, column order, params."""
    a = await described(table="items", where="n > $1", params={"1": "5"}, columns="n,id")
    b = await described(
        table='"public"."items"', where="n  >  $1", params={"1": "5"}, columns="id,n"
    )
    assert a.definition == b.definition
    assert a.definition == ShapeDefinition(
        100, "public", "items", "n > CAST('5' AS int4)", ("id", "n")
    )
    assert [c.name for c in a.columns] == ["id", "n"]  # the table's order
    assert a.where is not None and a.where.source == a.definition.where
    full = await described(table="ITEMS", replica=Replica.FULL, log_mode=LogMode.CHANGES_ONLY)
    assert full.definition.columns == ("id", "n", "title") and full.where is None
    assert (full.definition.replica, full.definition.log_mode) == ("full", "changes_only")


async def test_params_without_a_where_are_ignored() -> None:
    d = await described(table="items", params={"1": "x"})
    assert d.definition == (await described(table="items")).definition


def test_a_definition_round_trips_through_json() -> None:
    d = ShapeDefinition(7, "s", "t", "a = 1", ("a", "b"), Replica.FULL, LogMode.CHANGES_ONLY)
    assert ShapeDefinition.from_json(d.to_json()) == d
    assert d.to_json()["replica"] == "full"


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        pytest.param("nope", 'Table "public"."nope" does not exist', id="unknown"),
        pytest.param("other.items", 'Table "other"."items" does not exist', id="unknown-schema"),
        pytest.param("items_view", 'Table "public"."items_view" does not exist', id="view"),
        pytest.param("Mixed", 'Table "public"."mixed" does not exist', id="unquoted-downcased"),
        pytest.param('"items"x', "", id="junk-after-quote"),
        pytest.param('"items', "", id="unterminated-quote"),
        pytest.param('""', "zero-length", id="empty-quoted"),
        pytest.param("public.", "", id="empty-name"),
        pytest.param(".items", "", id="empty-schema"),
        pytest.param("my-table", "special characters", id="unquoted-special"),
        pytest.param("items;drop", "special characters", id="unquoted-semicolon"),
        pytest.param("1items", "special characters", id="unquoted-leading-digit"),
        pytest.param("a" * 64, "too long", id="too-long"),
        pytest.param("a.b.c", "too many delimiters", id="too-many-dots"),
        pytest.param('"public"."items".x', "too many delimiters", id="too-many-dots-quoted"),
        pytest.param("public..items", "", id="double-dot"),
    ],
)
async def test_bad_table(table: str, fragment: str) -> None:
    errors = await refused(table=table)
    assert list(errors) == ["table"] and errors["table"][0], errors
    assert fragment.lower() in errors["table"][0].lower(), errors


async def test_quoted_identifiers_keep_their_case() -> None:
    for table in ('"Mixed"', 'public."Mixed"', '"public"."Mixed"'):
        assert (await described(table=table)).table.oid == 102
    for table in ("ITEMS", "public.items", '"public".items', "PUBLIC.Items"):
        assert (await described(table=table)).table.oid == 100


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        pytest.param("id,nope", "not found on the table: nope", id="unknown"),
        pytest.param('"id","Title"', "not found on the table: Title", id="quoted-case-kept"),
        pytest.param('""', "zero-length", id="empty-quoted"),
        pytest.param("id,,title", "zero-length", id="empty-between-commas"),
        pytest.param("id,", "zero-length", id="trailing-comma"),
        pytest.param("title", "must include all primary key columns, missing: id", id="no-pk"),
        pytest.param("title,n", "missing: id", id="no-pk-two-cols"),
        pytest.param("id,ti-tle", "special characters", id="unquoted-special"),
        pytest.param('"id', "", id="unterminated-quote"),
        pytest.param("id; DROP TABLE items", "", id="injection"),
    ],
)
async def test_bad_columns(columns: str, fragment: str) -> None:
    errors = await refused(table="items", columns=columns)
    assert list(errors) == ["columns"] and fragment in errors["columns"][0], errors


async def test_generated_columns_must_be_left_out() -> None:
    errors = await refused(table="gen")
    assert "Generated columns cannot be replicated" in errors["columns"][0]
    assert (await described(table="gen", columns="id")).definition.columns == ("id",)


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        pytest.param("nope = 1", "unknown reference nope", id="unknown-column"),
        pytest.param("items.nope = 1", "nope", id="unknown-qualified-column"),
        pytest.param("n + 1", "must return a boolean", id="non-boolean"),
        pytest.param("title", "must return a boolean", id="text-column"),
        pytest.param("n = ", "", id="syntax-error"),
        pytest.param("title = 1 +", "", id="dangling-operator"),
        pytest.param("pg_sleep(1) IS NULL", "", id="unsupported-function"),
        pytest.param("pg_read_file('/etc/passwd') = ''", "", id="file-read-function"),
        pytest.param("1=1) OR (1=1", "", id="paren-breakout"),
        pytest.param("n = 1; DROP TABLE items", "", id="statement-injection"),
        pytest.param("x = 1; DROP TABLE items", "", id="statement-injection-unknown-col"),
        pytest.param("id IN (SELECT id FROM items)", "", id="in-subquery"),
        pytest.param("(SELECT count(*) FROM items) > 0", "", id="scalar-subquery"),
        pytest.param("EXISTS (SELECT 1 FROM pg_authid)", "", id="exists-subquery"),
        pytest.param("now() > '2020-01-01'", "", id="now"),
        pytest.param("random() < 0.5", "", id="random"),
        pytest.param("count(*) > 1", "", id="aggregate"),
        pytest.param("n > 1 ORDER BY n", "", id="trailing-order-by"),
        pytest.param("n > 1 LIMIT 1", "", id="trailing-limit"),
        pytest.param("n > $1", "$1", id="missing-$1"),
    ],
)
async def test_bad_where(where: str, fragment: str) -> None:
    errors = await refused(table="items", where=where)
    assert list(errors) == ["where"] and errors["where"][0], errors
    assert fragment in errors["where"][0], errors


async def test_a_param_is_a_value_not_sql() -> None:
    errors = await refused(table="items", where="n > $1", params={"1": "1 OR 1=1"})
    assert list(errors) == ["where"], errors
    d = await described(table="items", where="title = $1", params={"1": "x'; DROP TABLE items"})
    assert d.where is not None and d.where.matches({"title": "x'; DROP TABLE items"})
