from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.auth.bearer import bearer_token, refuse_token_in_query
from proxy.errors import BadShapeRequest, Unauthenticated


def test_bearer_token_from_header_case_insensitive() -> None:
    assert bearer_token(CIMultiDict({"authorization": "bearer abc.def.ghi"})) == "abc.def.ghi"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing_token"),
        ("Basic dXNlcjpwYXNz", "invalid_token"),
        ("Bearer ", "invalid_token"),
        ("Bearer a b", "invalid_token"),
        ("Bearer " + "x" * 20000, "invalid_token"),
    ],
)
def test_bearer_token_refusals(value: str | None, reason: str) -> None:
    headers = CIMultiDict({} if value is None else {"Authorization": value})
    with pytest.raises(Unauthenticated) as info:
        bearer_token(headers)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "items",
    [
        [("token", "x")],
        [("access_token", "x")],
        [("Authorization", "x")],
        [("cursor", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln")],
    ],
)
def test_token_in_query_refused(items: list[tuple[str, str]]) -> None:
    with pytest.raises(BadShapeRequest) as info:
        refuse_token_in_query(items)
    assert info.value.reason == "token_in_query"


def test_ordinary_query_accepted() -> None:
    refuse_token_in_query([("table", "items"), ("offset", "-1"), ("where", "a = 'eyJ'")])
