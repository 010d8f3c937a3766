"""A parameter whose value is whitespace only is absent, as in Electric.

Electric casts its parameters with Ecto's `cast/4`, whose default empty values are
`Ecto.Type.empty_trimmed_string?` (`String.trim_leading(value) == ""`, over Unicode's
White_Space): `where=%20` is no where, `offset=%20` "can't be blank".
The engine took only the empty string for absent: `where=%20` was a syntax error,
`replica=%20` "is invalid", `subset__limit=%20` too. (`live` and `live_sse` are not
Ecto's empty values: Electric's plug makes them booleans first, `value != "false"`.)
"""

from __future__ import annotations

import pytest

from tests.sync_engine.engine_harness import Engine

#: Whitespace only, as Elixir's `String.trim_leading` sees it (NBSP and the ideographic
#: space are White_Space too).
BLANKS = [" ", "\t\n", "\u00a0", "\u3000 "]


def _items(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 'a'), (2, 'b')")


@pytest.mark.parametrize("blank", BLANKS, ids=["space", "tab-newline", "nbsp", "ideographic"])
async def test_a_blank_parameter_is_absent(engine: Engine, blank: str) -> None:
    _items(engine)
    status, h, plain = await engine.get(table="items", offset="-1")
    assert status == 200
    handle = h["electric-handle"]
    keys = sorted(m["key"] for m in plain if "key" in m)
    for name in ("where", "columns", "replica", "log", "handle"):
        status, h, body = await engine.get(table="items", offset="-1", **{name: blank})
        assert status == 200, (name, body)
        assert h["electric-handle"] == handle, name  # (the same shape as without it)
        assert sorted(m["key"] for m in body if "key" in m) == keys, name
    # (live is a boolean before Ecto sees it in Electric's plug, `value != "false"`: true)
    status, _, body = await engine.get(table="items", offset="-1", live=blank)
    assert (status, body["errors"]) == (400, {"live": ["can't be true when offset == -1"]})
    # offset and table are required: blank is "can't be blank", in Electric's words
    status, _, body = await engine.get(table="items", offset=blank)
    assert (status, body["errors"]) == (400, {"offset": ["can't be blank"]})
    status, _, body = await engine.get(table=blank, offset="-1")
    assert (status, body["errors"]) == (400, {"table": ["can't be blank"]})
    # a blank handle with a real offset is no handle
    status, h, _ = await engine.get(table="items", offset="-1")
    status, _, body = await engine.get(table="items", offset=h["electric-offset"], handle=blank)
    assert (status, body["errors"]) == (400, {"handle": ["can't be blank when offset != -1"]})
    # subset fields: a blank where, limit, offset or params is absent
    for name in ("subset__where", "subset__limit", "subset__offset", "subset__params"):
        status, _, body = await engine.get(
            table="items", offset="-1", handle=handle, subset__order_by="id", **{name: blank}
        )
        assert status == 200, (name, body)
        assert sorted(m["key"] for m in body["data"]) == keys, name


async def test_other_spaces_are_not_blank(engine: Engine) -> None:
    """U+001C (Python's `str.strip` takes it for space; Unicode and Elixir do not) and a
    value with something besides spaces are kept as sent."""
    _items(engine)
    status, _, body = await engine.get(table="items", offset="-1", replica="\x1c")
    assert (status, body["errors"]) == (400, {"replica": ["is invalid"]})
    status, _, body = await engine.get(table="items", offset="-1", where=" id = 1 ")
    assert status == 200
    assert [m["key"] for m in body if "key" in m] == ['"public"."items"/"1"']
