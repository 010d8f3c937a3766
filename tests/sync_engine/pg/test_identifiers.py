"""`table` and `columns` parameters parsed as Postgres identifiers, with Electric's messages
(pure: the HTTP tests check the same rules against a real table)."""

from __future__ import annotations

import pytest

from sync_engine.pg.identifiers import InvalidIdentifier, parse_columns, parse_relation


@pytest.mark.parametrize(
    ("text", "relation"),
    [
        ("items", ("public", "items")),
        ("ITEMS", ("public", "items")),
        ("PUBLIC.Items", ("public", "items")),
        ('"Mixed"', ("public", "Mixed")),
        ('public."Mixed"', ("public", "Mixed")),
        ('"S"."It.ems"', ("S", "It.ems")),
        ('"a""b"', ("public", 'a"b')),
        (" items ", ("public", "items")),
        ("_x$1", ("public", "_x$1")),
    ],
)
def test_relations(text: str, relation: tuple[str, str]) -> None:
    assert parse_relation(text) == relation


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.b.c", "Invalid relation identifier, too many delimiters: a.b.c"),
        ('"items', 'Invalid identifier, unterminated quote: "items'),
        ('"items"x', 'Invalid identifier: "items"x'),
        ('""', "Invalid zero-length delimited identifier"),
        ("1items", "Invalid unquoted identifier contains special characters: 1items"),
        ("it-ems", "Invalid unquoted identifier contains special characters: it-ems"),
        ("tablé", "Invalid unquoted identifier contains special characters: tablé"),
        ("x" * 64, "Identifier is too long (max length is 63)"),
        ('"' + "é" * 32 + '"', "Identifier is too long (max length is 63)"),
    ],
)
def test_bad_relations(text: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        parse_relation(text)
    assert str(info.value) == message


def test_the_longest_identifier_fits() -> None:
    assert parse_relation("x" * 63) == ("public", "x" * 63)


def test_columns() -> None:
    assert parse_columns("id,title") == ["id", "title"]
    assert parse_columns('"id", "Title" ,done') == ["id", "Title", "done"]
    assert parse_columns('"a,b"') == ["a,b"]


@pytest.mark.parametrize("text", ["id,", ",id", "id,,title", '"id"title'])
def test_bad_columns(text: str) -> None:
    with pytest.raises(InvalidIdentifier):
        parse_columns(text)
