"""A body-less shape request's parameters are parsed once per raw query string
(`ShapeView._parse`): a repeat gets the same `ShapeRequest` without parsing again; a query
that failed is checked again (and refused the same way); a request with a body is always
parsed; the kept ones are bounded. The answers themselves are covered, byte for byte, by the
params and parity tests (tests/sync_engine/http/test_params.py and the proxy's)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from sync_engine.errors import InvalidRequest
from sync_engine.http import params as params_module
from sync_engine.http import shape as shape_module
from sync_engine.http.shape import ShapeView
from tests.sync_engine.engine_harness import SETTINGS


def _view() -> ShapeView:
    async def find_source(request: Any) -> Any:
        raise AssertionError("not used")

    return ShapeView(SETTINGS, find_source)


def test_a_repeated_query_is_parsed_once_and_a_bad_one_every_time(monkeypatch: Any) -> None:
    calls: list[str] = []
    real = params_module.parse_shape_request

    def counting(query: Any, body: Any = None) -> Any:
        calls.append(str(query.get("offset")))
        return real(query, body)

    monkeypatch.setattr(shape_module, "parse_shape_request", counting)
    view = _view()
    good = "/v1/shape?table=items&offset=0_inf&handle=1-2"
    first = view._parse(make_mocked_request("GET", good), None)
    again = view._parse(make_mocked_request("GET", good), None)
    assert again is first and calls == ["0_inf"]
    assert (first.offset is not None and str(first.offset), first.handle) == ("0_inf", "1-2")

    other = view._parse(make_mocked_request("GET", good + "&live=true"), None)
    assert other.live and not first.live and len(calls) == 2

    bad = "/v1/shape?table=items&offset=0_x&handle=1-2"
    for _ in range(2):
        with pytest.raises(InvalidRequest) as refused:
            view._parse(make_mocked_request("GET", bad), None)
        assert refused.value.errors == {"offset": ["has invalid format"]}
    assert len(calls) == 4  # (checked each time)
    with pytest.raises(InvalidRequest):  # (not UTF-8: refused before parsing, each time)
        view._parse(make_mocked_request("GET", "/v1/shape?table=%ff&offset=-1"), None)

    body = {"where": "id = 1"}
    for _ in range(2):
        withbody = view._parse(make_mocked_request("POST", good), body)
        assert withbody.subset is not None and withbody.subset.where == "id = 1"
    assert len(calls) == 6


def test_the_kept_queries_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(shape_module, "PARSED_MAX", 8)
    view = _view()
    for i in range(20):
        view._parse(
            make_mocked_request("GET", f"/v1/shape?table=items&offset=0_{i}&handle=h"), None
        )
    assert len(view._parsed) == 8
    long = "/v1/shape?table=items&offset=-1&where=" + "x" * shape_module.PARSED_KEY_MAX
    view._parse(make_mocked_request("GET", long), None)
    assert len(view._parsed) == 8 and not any(k.endswith("x") for k in view._parsed)
