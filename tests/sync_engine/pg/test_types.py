"""PgType: one spelling of a Postgres type, whatever the catalog or a message calls it."""

from __future__ import annotations

import pytest

from sync_engine.pg import values as pgv
from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.types import INT4, TEXT, UNKNOWN, PgType


def column(type_name: str, elem: str | None = None, kind: str = "b") -> ColumnInfo:
    return ColumnInfo("c", 1, 0, type_name, elem, kind, -1, 1 if elem else 0, False, None)


def test_a_column_type_reads_the_same_from_the_catalog_and_from_a_clause() -> None:
    assert column("int4").pg_type == INT4
    assert column("_int4", elem="int4").pg_type == INT4.array_of()
    assert column("mood", kind="e").pg_type == PgType("mood", enum=True)
    assert column("_mood", elem="mood", kind="e").pg_type == PgType("mood", array=True, enum=True)


def test_an_enum_named_like_a_builtin_type_stays_an_enum() -> None:
    assert column("text", kind="e").pg_type != TEXT
    assert column("_user", elem="_user", kind="e").pg_type.name == "_user"


def test_element_and_array_of_are_inverse() -> None:
    mood = PgType("mood", enum=True)
    assert mood.array_of().element == mood
    assert INT4.element is INT4
    assert INT4.array_of().array and not INT4.array_of().element.array


def test_sql_names_are_postgres_message_names() -> None:
    assert INT4.sql_name == "integer"
    assert INT4.array_of().sql_name == "integer[]"
    assert PgType("timestamptz").sql_name == "timestamp with time zone"
    assert PgType("int4", enum=True).sql_name == "int4"  # an enum is called by its own name
    assert str(PgType("varchar").array_of()) == "character varying[]"
    assert UNKNOWN.sql_name == "unknown"


def test_types_are_values() -> None:
    assert PgType("int4") == INT4 and hash(PgType("int4")) == hash(INT4)
    assert {INT4: 1}[PgType("int4")] == 1


def test_parsers_follow_the_type_not_its_spelling() -> None:
    assert pgv.output_parser(INT4)("42") == 42
    assert pgv.output_parser(INT4.array_of())("{1,NULL,3}") == (1, None, 3)
    mood = PgType("mood", enum=True)
    assert pgv.output_parser(mood)("happy") == "happy"
    assert pgv.output_parser(mood.array_of())('{happy,"so so"}') == ("happy", "so so")
    assert pgv.output_parser(PgType("some_domain"))("x y") == "x y"
    assert pgv.input_parser(INT4)(" 7 ") == 7


@pytest.mark.parametrize(
    ("pg_type", "text", "message"),
    [
        (INT4, "abc", 'invalid input syntax for type integer: "abc"'),
        (PgType("int2"), "40000", 'value "40000" is out of range for type smallint'),
        (PgType("bool"), "o", 'invalid input syntax for type boolean: "o"'),
        (INT4.array_of(), "[1:2]{1,2}", 'invalid input syntax for type integer[]: "[1:2]{1,2}"'),
    ],
)
def test_input_errors_name_the_type_as_postgres_does(
    pg_type: PgType, text: str, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        pgv.input_parser(pg_type)(text)
    assert str(info.value) == message


def test_int_range_check() -> None:
    check = pgv.int_range_check(PgType("int2"))
    assert check(32767) == 32767
    with pytest.raises(ValueError, match=r"^smallint out of range$"):
        check(32768)
