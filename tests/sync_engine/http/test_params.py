"""Query string (and POST body) -> ShapeRequest: Electric's answers to malformed requests.

Pure: `parse_shape_request` checks the request's form before anything looks at the catalog.
`test_bad_input.py` sends a few of these through the real engine (status, JSON body, nothing
created); here every case is checked without Postgres.
"""

from __future__ import annotations

from typing import Any

import pytest
from multidict import MultiDict

from sync_engine.errors import InvalidRequest
from sync_engine.http.errors import error_response
from sync_engine.http.limits import DEFAULT_LENGTH, MAX_LENGTH, MAX_QUERY_PARAMS
from sync_engine.http.params import ShapeRequest, parse_shape_request
from sync_engine.log.offsets import BEFORE_ALL, parse_offset
from sync_engine.shapes.definition import LogMode, Replica


def parse(params: dict[str, str] | list[tuple[str, str]], body: Any = None) -> ShapeRequest:
    items = params.items() if isinstance(params, dict) else params
    return parse_shape_request(MultiDict(items), body)


def refused(params: dict[str, str] | list[tuple[str, str]], body: Any = None) -> Any:
    """The `errors` of the 400 the request gets."""
    with pytest.raises(InvalidRequest) as info:
        parse(params, body)
    return info.value.errors


def test_a_valid_request() -> None:
    req = parse(
        {
            "table": "items",
            "offset": "-1",
            "where": "n > $1",
            "params[1]": "5",
            "columns": "id,n",
            "replica": "full",
            "log": "changes_only",
            "cursor": "42",
        }
    )
    assert req.offset == BEFORE_ALL and req.from_start and req.handle is None
    assert req.shape.table == "items" and req.shape.where == "n > $1"
    assert dict(req.shape.params) == {"1": "5"} and req.shape.columns == "id,n"
    assert req.shape.replica is Replica.FULL and req.shape.log_mode is LogMode.CHANGES_ONLY
    assert (req.live, req.live_sse, req.cursor, req.subset) == (False, False, 42, None)


def test_same_shape_same_key() -> None:
    """Requests that differ only in where they are in the log share the definition key."""
    a = parse({"table": "items", "offset": "-1", "params[2]": "b", "params[1]": "a"})
    b = parse(
        {
            "table": "items",
            "offset": "0_0",
            "handle": "h",
            "params[1]": "a",
            "params[2]": "b",
            "live": "true",
        }
    )
    assert a.shape.key() == b.shape.key()
    assert a.shape.key() != parse({"table": "items", "offset": "-1"}).shape.key()


def test_the_error_body_is_electrics() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse({"table": "items"})
    resp = error_response(info.value)
    assert resp.status == 400 and resp.headers["cache-control"] == "no-store"
    assert resp.body == b'{"message":"Invalid request","errors":{"offset":["can\'t be blank"]}}'


# -- offset, handle, live ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "params", [{"table": "items"}, {"table": "items", "offset": ""}], ids=["missing", "blank"]
)
def test_offset_is_required(params: dict[str, str]) -> None:
    assert refused(params) == {"offset": ["can't be blank"]}


@pytest.mark.parametrize(
    "offset",
    [
        "10",
        "1_2_3",
        "0_-1",
        "-1_-1",
        "-2",
        "abc",
        "1_2 ",
        " 0_0",
        "0_",
        "_0",
        "0_infinity",
        "1.5_0",
        "0x10_0",
        "1e3_0",
        "9" * 200 + "_0",
        "0_" + "9" * 200,
        "9" * 5000,
        "0_\u0663",  # (an Arabic-Indic three: `\d` and `int` read it as 3)
        "\u0967_0",  # (a Devanagari one)
        "\uff11_0",  # (a fullwidth one)
    ],
    ids=lambda o: o if len(o) < 20 else f"long-{len(o)}",
)
def test_invalid_offset_format(offset: str) -> None:
    errors = refused({"table": "items", "offset": offset, "handle": "1-2"})
    assert errors == {"offset": ["has invalid format"]}


@pytest.mark.parametrize(
    ("offset", "read"),
    [("007_03", (7, 3)), ("0" * 5000 + "_0", (0, 0)), ("0_" + "0" * 5000, (0, 0)),
     ("0" * 4999 + "7_" + "0" * 4999 + "3", (7, 3))],
    ids=["short", "tx-5000-zeros", "op-5000-zeros", "both-padded"],
)  # fmt: skip
def test_leading_zeros_are_read_past_python_int_limit(offset: str, read: tuple[int, int]) -> None:
    """Zeros in front do not make a half big (Electric's Integer.parse reads `007` as 7), and
    Python's `int()` counts them toward its 4,300-digit limit: `0_` and 5,000 zeros was a
    ValueError, a 500, once the significant-digit check let it through."""
    offset_read = parse_offset(offset)
    assert (offset_read.tx, offset_read.op) == read


@pytest.mark.parametrize("offset", ["0_0", "0_inf", "26800584_4"])
@pytest.mark.parametrize("handle", [None, ""], ids=["missing", "blank"])
def test_real_offset_needs_a_handle(offset: str, handle: str | None) -> None:
    params = {"table": "items", "offset": offset}
    if handle is not None:
        params["handle"] = handle
    assert refused(params) == {"handle": ["can't be blank when offset != -1"]}


def test_a_handle_with_minus_1_or_now_is_ignored() -> None:
    assert parse({"table": "items", "offset": "-1", "handle": "1-2"}).handle is None
    assert parse({"table": "items", "offset": "now", "handle": "1-2"}).handle is None


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"offset": "-1", "live": "true"}, "live", "can't be true when offset == -1"),
        ({"offset": "-1", "live": ""}, "live", "can't be true when offset == -1"),
        ({"offset": "now", "live": "true"}, "live", "can't be true when offset is 'now'"),
        ({"offset": "now", "live": "1"}, "live", "can't be true when offset is 'now'"),
        (
            {"offset": "-1", "live_sse": "true"},
            "live_sse",
            "can't be true unless live is also true",
        ),
        (
            {"offset": "0_0", "handle": "h", "live_sse": "true"},
            "live_sse",
            "can't be true unless live is also true",
        ),
        (
            {"offset": "0_0", "handle": "h", "live": "false", "live_sse": "true"},
            "live_sse",
            "can't be true unless live is also true",
        ),
        (
            {"offset": "0_0", "handle": "h", "experimental_live_sse": "true"},
            "live_sse",
            "can't be true unless live is also true",
        ),
    ],
    ids=[
        "live-with-minus-1",
        "bare-live-with-minus-1",
        "live-with-now",
        "live=1-with-now",
        "sse-with-minus-1-no-live",
        "sse-without-live",
        "sse-with-live-false",
        "experimental-sse-without-live",
    ],
)
def test_live_flag_conflicts(params: dict[str, str], field: str, message: str) -> None:
    assert refused({"table": "items", **params}) == {field: [message]}


@pytest.mark.parametrize(
    ("value", "live"), [("true", True), ("1", True), ("", True), ("false", False)]
)
def test_flags_are_true_unless_false(value: str, live: bool) -> None:
    assert parse({"table": "items", "offset": "0_0", "handle": "h", "live": value}).live is live


@pytest.mark.parametrize("cursor", ["", "abc", "-5", "9" * 19])
def test_an_odd_cursor_is_zero(cursor: str) -> None:
    assert parse({"table": "items", "offset": "-1", "cursor": cursor}).cursor == 0


# -- definition parameters --------------------------------------------------------------------


@pytest.mark.parametrize("table", [None, ""], ids=["missing", "blank"])
def test_table_is_required(table: str | None) -> None:
    params = {"offset": "-1"} if table is None else {"offset": "-1", "table": table}
    assert refused(params) == {"table": ["can't be blank"]}


@pytest.mark.parametrize(
    ("first", "last", "read"),
    [
        (("table", "other"), ("table", "items"), lambda r: r.shape.table == "items"),
        (("offset", "0_0"), ("offset", "-1"), lambda r: r.from_start and r.handle is None),
        (("where", "n > 1"), ("where", "n < 1"), lambda r: r.shape.where == "n < 1"),
        (("columns", "id"), ("columns", "id,n"), lambda r: r.shape.columns == "id,n"),
        (("replica", "weird"), ("replica", "full"), lambda r: r.shape.replica is Replica.FULL),
        (
            ("log", "full"),
            ("log", "changes_only"),
            lambda r: r.shape.log_mode is LogMode.CHANGES_ONLY,
        ),
        (("live", "true"), ("live", "false"), lambda r: r.live is False),
        (("cursor", "7"), ("cursor", "42"), lambda r: r.cursor == 42),
        (("table", "it\x00ems"), ("table", "items"), lambda r: r.shape.table == "items"),
        (("params[1]", "a"), ("params[1]", "b"), lambda r: dict(r.shape.params) == {"1": "b"}),
        (
            ("subset__where", "n > 1"),
            ("subset__where", "n < 1"),
            lambda r: r.subset is not None and r.subset.where == "n < 1",
        ),
        (
            ("subset__params[1]", "a"),
            ("subset__params[1]", "b"),
            lambda r: r.subset is not None and dict(r.subset.params) == {"1": "b"},
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else "",
)
def test_a_repeated_parameter_takes_its_last_value(
    first: tuple[str, str], last: tuple[str, str], read: Any
) -> None:
    """As Plug decodes a query string (Electric's server): the last value wins, and the one
    it replaces is not read (not even for a NUL byte); the proxy reads them the same way."""
    base = [("table", "items"), ("offset", "-1")]
    base = [(k, v) for k, v in base if k != first[0]]
    assert read(parse([*base, first, last]))


def test_the_last_value_is_the_one_checked() -> None:
    bad_last = [("table", "items"), ("offset", "-1"), ("replica", "full"), ("replica", "weird")]
    assert refused(bad_last) == {"replica": ["is invalid"]}
    nul_last = [("offset", "-1"), ("table", "items"), ("table", "it\x00ems")]
    assert refused(nul_last) == {"table": ["must not contain NUL bytes"]}


@pytest.mark.parametrize(
    "params",
    [{"replica": "weird"}, {"replica": "FULL"}, {"log": "weird"}, {"log": "changes"}],
    ids=["replica=weird", "replica=FULL", "log=weird", "log=changes"],
)
def test_bad_enum_params(params: dict[str, str]) -> None:
    errors = refused({"table": "items", "offset": "-1", **params})
    assert errors == {next(iter(params)): ["is invalid"]}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        pytest.param({"params[2]": "1"}, "sequentially", id="starts-at-2"),
        pytest.param({"params[0]": "1"}, "sequentially", id="starts-at-0"),
        pytest.param({"params[1]": "1", "params[3]": "3"}, "sequentially", id="gap"),
        pytest.param({"params[a]": "1"}, "numbers", id="non-numeric-key"),
        pytest.param({"params[]": "1"}, "numbers", id="empty-key"),
        # (a number to Electric's Integer.parse, out of sequence)
        pytest.param({"params[-1]": "1"}, "sequentially", id="negative-key"),
    ],
)
def test_bad_params(params: dict[str, str], fragment: str) -> None:
    errors = refused({"table": "items", "offset": "-1", "where": "n > $1", **params})
    assert list(errors) == ["params"] and fragment in errors["params"][0], errors


@pytest.mark.parametrize("value", ['{"1": "1"}', "x", "1"], ids=["json", "word", "digit"])
def test_a_bare_params_string_is_invalid_in_electrics_words(value: str) -> None:
    """Electric's `params` field is a map (`field(:params, {:map, :string})` in
    Api.Params): a string does not cast, and Ecto says "is invalid"."""
    errors = refused({"table": "items", "offset": "-1", "where": "n > $1", "params": value})
    assert errors == {"params": ["is invalid"]}


@pytest.mark.parametrize("value", ["", " "], ids=["empty", "blank"])
def test_an_empty_params_is_no_params(value: str) -> None:
    """Ecto treats an empty (or blank) value as absent: the field keeps its default `%{}`."""
    req = parse({"table": "items", "offset": "-1", "params": value})
    assert dict(req.shape.params) == {}


def test_params_numbered_with_leading_zeros_are_kept_as_given() -> None:
    """As Electric: `01` passes the numbering check (Integer.parse) but stays `01`, so a
    `$1` is not given its value (test_param_keys.py: the where's 400)."""
    req = parse({"table": "items", "offset": "-1", "params[01]": "a", "params[2]": "b"})
    assert dict(req.shape.params) == {"01": "a", "2": "b"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"table": "it\x00ems"}, "table"),
        ({"where": "n = 1\x00"}, "where"),
        ({"params[1]": "a\x00"}, "params"),
        ({"subset__where": "n = 1\x00"}, "subset__where"),
    ],
)
def test_nul_bytes_are_refused(params: dict[str, str], field: str) -> None:
    errors = refused({"table": "items", "offset": "-1", **params})
    assert errors == {field: ["must not contain NUL bytes"]}


# -- limits -----------------------------------------------------------------------------------


def test_limits() -> None:
    too_long_table = "t" * (MAX_LENGTH["table"] + 1)
    assert refused({"table": too_long_table, "offset": "-1"}) == {
        "table": [f"is too long (the limit is {MAX_LENGTH['table']} characters)"]
    }
    where = "x" * (DEFAULT_LENGTH + 1)
    assert refused({"table": "items", "offset": "-1", "where": where}) == {
        "where": [f"is too long (the limit is {DEFAULT_LENGTH} characters)"]
    }
    many = [("table", "items"), ("offset", "-1")] + [
        (f"x{i}", "1") for i in range(MAX_QUERY_PARAMS)
    ]
    assert list(refused(many)) == ["query"]


# -- subsets ----------------------------------------------------------------------------------


def test_a_subset_from_the_query_and_from_a_body() -> None:
    req = parse(
        {
            "table": "items",
            "offset": "-1",
            "subset__where": "n > $1",
            "subset__params": '{"1": "5"}',
            "subset__order_by": "n",
            "subset__limit": "10",
            "subset__offset": "2",
        }
    )
    assert req.subset is not None
    assert (req.subset.where, dict(req.subset.params), req.subset.order_by) == (
        "n > $1",
        {"1": "5"},
        "n",
    )
    assert (req.subset.limit, req.subset.offset) == (10, 2)
    posted = parse(
        {"table": "items", "offset": "-1"},
        {"where": "n > $1", "params": {"1": 5}, "order_by": "n", "limit": 10},
    )
    assert posted.subset is not None and dict(posted.subset.params) == {"1": "5"}


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"limit": 0, "order_by": "n"}, "limit", "must be greater than 0"),
        ({"offset": -1, "order_by": "n"}, "offset", "greater than or equal to 0"),
        ({"limit": "x", "order_by": "n"}, "limit", "is invalid"),
        ({"limit": True, "order_by": "n"}, "limit", "is invalid"),
        ({"limit": 5}, "order_by", "required"),
        ({"where": 5}, "where", "is invalid"),
        ({"params": "x"}, "params", "params must be valid JSON"),
        ({"params": "5"}, "params", "params must be a JSON object"),
        ({"params": 5}, "params", "is invalid"),
        ({"params": True}, "params", "is invalid"),
        ({"params": [5]}, "params", "is invalid"),  # (Ecto's cast of a list: no map)
        ({"params": []}, "params", "is invalid"),
        ({"params": "[5]"}, "params", "params must be a JSON object"),
        ({"params": {"1": [1]}}, "params", "values must be"),
        ({"limit": 2**63, "order_by": "n"}, "limit", "less than or equal to"),
    ],
)
def test_bad_subsets(body: dict[str, Any], field: str, fragment: str) -> None:
    errors = refused({"table": "items", "offset": "-1"}, body)
    assert list(errors) == ["subset"] and list(errors["subset"]) == [field], errors
    assert fragment in errors["subset"][field][0], errors


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nojson", "params must be valid JSON"),
        ("{", "params must be valid JSON"),
        ("5", "params must be a JSON object"),
        ('"a"', "params must be a JSON object"),
        ("null", "params must be a JSON object"),
        ("[5]", "params must be a JSON object"),
        ('["a", "b"]', "params must be a JSON object"),
        ("[]", "params must be a JSON object"),
    ],
)
def test_subset_params_json_is_refused_in_electrics_words(value: str, message: str) -> None:
    """Electric's SubsetParams `params` (JsonOrMapStringParams) decodes a string as JSON:
    "params must be valid JSON" when it is not JSON, "params must be a JSON object" when it
    decodes to anything else, a list included (the engine once read `[5]` as `$1 = 5`)."""
    errors = refused({"table": "items", "offset": "-1", "subset__where": "n > $1",
                      "subset__params": value})  # fmt: skip
    assert errors == {"subset": {"params": [message]}}


def test_subset_limit_below_one_in_electrics_words() -> None:
    """Electric validates `limit` with greater_than: 0; Ecto says "must be greater than 0"."""
    for limit in ("0", "-5"):
        errors = refused({"table": "items", "offset": "-1", "subset__order_by": "n",
                          "subset__limit": limit})  # fmt: skip
        assert errors == {"subset": {"limit": ["must be greater than 0"]}}


def test_subset_params_as_a_json_string_in_the_body_or_empty_in_the_query() -> None:
    """A JSON object given as a string is decoded (in the body as in the query); an empty
    `subset__params=` is Ecto's empty value: no params."""
    req = parse({"table": "items", "offset": "-1"}, {"where": "n > $1", "params": '{"1": "5"}'})
    assert req.subset is not None and dict(req.subset.params) == {"1": "5"}
    req = parse({"table": "items", "offset": "-1", "subset__where": "n > 1", "subset__params": ""})
    assert req.subset is not None and dict(req.subset.params) == {}
