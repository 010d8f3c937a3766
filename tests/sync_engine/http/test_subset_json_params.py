"""Subset params given as JSON scalars are bound as Electric binds them (attack 02:00).

Electric's `JsonOrMapStringParams.cast` turns each value into text with Elixir's `to_string`:
`true` -> "true", `false` -> "false", `null` -> "". The engine wrote Python's `str` ("True"),
so `title = $1` with `{"1": true}` matched other rows than on Electric, and other rows than
through the proxy, which forwards "true": a client could tell the two apart.
"""

from __future__ import annotations

import json

import pytest
from multidict import MultiDict

from proxy.http.params import parse_post_request
from proxy.policy.evaluate import subset_body
from sync_engine.http.params import parse_json_body, parse_shape_request

_QUERY = [("table", "items"), ("offset", "-1")]


@pytest.mark.parametrize(
    ("value", "text"), [(True, "true"), (False, "false"), (None, ""), (5, "5"), ("x", "x")]
)
def test_a_json_scalar_param_is_electrics_text(value: object, text: str) -> None:
    body = {"where": "title = $1", "params": {"1": value}}
    engine = parse_shape_request(MultiDict(_QUERY), body)
    assert engine.subset is not None
    assert dict(engine.subset.params) == {"1": text}
    # the same as GET `subset__params` (JSON text)
    url = parse_shape_request(MultiDict([*_QUERY, ("subset__params", json.dumps({"1": value}))]))
    assert url.subset is not None and dict(url.subset.params) == {"1": text}


@pytest.mark.parametrize("value", [True, False, None, 5, 1.5, "x"])
def test_through_the_proxy_the_engine_binds_the_same_text(value: object) -> None:
    body = {"where": "title = $1", "params": {"1": value}}
    direct = parse_shape_request(MultiDict(_QUERY), body)
    proxied = parse_post_request(_QUERY, body)
    assert proxied.subset is not None
    forwarded = json.loads(subset_body(proxied.subset))
    via_proxy = parse_shape_request(MultiDict(_QUERY), forwarded)
    assert direct.subset is not None and via_proxy.subset is not None
    assert dict(via_proxy.subset.params) == dict(direct.subset.params)


BIG = 123456789012345678901234567890


@pytest.mark.parametrize("where", ["top", "subset"])
def test_an_integer_beyond_64_bits_binds_its_digits(where: str) -> None:
    """As Electric (Jason) binds it; orjson read it as a float (`1.2345678901234568e+29`):
    `n = $1` on a numeric column missed the row (attack 02:12)."""
    subset = {"where": "n = $1", "params": {"1": BIG, "2": 1.5}}
    raw = json.dumps(subset if where == "top" else {"subset": subset}).encode()
    body = parse_json_body(raw)
    assert body is not None
    request = parse_shape_request(MultiDict(_QUERY), body)
    assert request.subset is not None
    assert dict(request.subset.params) == {"1": str(BIG), "2": "1.5"}
    url = parse_shape_request(MultiDict([*_QUERY, ("subset__params", json.dumps({"1": BIG}))]))
    assert url.subset is not None and dict(url.subset.params) == {"1": str(BIG)}
