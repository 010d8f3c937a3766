"""A POST body's `Content-Encoding`, read by the engine's server (sync_engine/http/server.py)
as the proxy reads it (proxy/http/handlers.py `_read_body`): gzip (and `x-gzip`, RFC 9110
8.4.1.3) and deflate decoded, bounded; a body that is not one whole stream in its coding a 400
"Malformed request body"; another coding a 415. aiohttp's own decoder read a gzip body cut
short as a shorter (even empty) body: the whole shape served where the client asked for a
subset."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest

from tests.sync_engine.engine_harness import Engine

TARGET = "/v1/shape?table=items&offset=-1"
BODY = orjson.dumps({"where": "id > 2"})


def make_items(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1'), (2, 't2'), (3, 't3')")


async def post(engine: Engine, coding: str, data: bytes) -> tuple[int, Any]:
    headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
    async with engine.client.post(TARGET, data=data, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, orjson.loads(await resp.read())


def rows(answer: Any) -> list[str]:
    """The keys of a subset's rows (`{"metadata", "data"}`) or of a log's messages."""
    messages = answer["data"] if isinstance(answer, dict) else answer
    return sorted(m["key"] for m in messages if "key" in m)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        ("gzip", gzip.compress(BODY)),
        ("GZIP", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        (" gzip ", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("deflate", _raw_deflate(BODY)),
        ("identity", BODY),
    ],
    ids=["gzip", "GZIP", "x-gzip", "padded", "deflate", "raw-deflate", "identity"],
)
async def test_a_compressed_body_is_decoded(engine: Engine, coding: str, data: bytes) -> None:
    make_items(engine)
    status, answer = await post(engine, coding, data)
    assert status == 200, answer
    assert rows(answer) == ['"public"."items"/"3"'], answer


@pytest.mark.parametrize(
    "data",
    [
        b"\x1f\x8b\x08\x00",  # a gzip header's first bytes, and nothing more
        gzip.compress(BODY)[:-6],  # cut short in its trailer
        gzip.compress(BODY)[:12],  # cut short in its data
        gzip.compress(BODY) + b"trailing",
        b"not gzip at all",
    ],
    ids=["header-only", "no-trailer", "half", "trailing", "not-gzip"],
)
async def test_a_body_not_whole_in_its_coding_is_a_400(engine: Engine, data: bytes) -> None:
    """Never read as the body it decodes to so far: a cut-short body was an empty one, and
    the whole shape was served where the client asked for `id > 2`."""
    make_items(engine)
    status, answer = await post(engine, "gzip", data)
    assert (status, answer) == (400, {"message": "Malformed request body"})
    # the engine is fine after it
    status, answer = await post(engine, "gzip", gzip.compress(BODY))
    assert status == 200 and rows(answer) == ['"public"."items"/"3"']


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, identity", "compress"])
async def test_a_body_in_another_coding_is_a_415(engine: Engine, coding: str) -> None:
    """As the proxy answers: the engine decodes gzip and deflate only (`br` was a 400
    "Malformed HTTP request" from the parser, `gzip, identity` read as plain JSON)."""
    make_items(engine)
    headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
    async with engine.client.post(TARGET, data=BODY, headers=headers) as resp:
        # not cacheable, as every other error answer (and the proxy's 415)
        assert resp.headers["cache-control"] == "no-store"
        assert resp.headers["surrogate-control"] == "no-store"
    status, answer = await post(engine, coding, BODY)
    assert status == 415
    assert answer == {
        "message": "Unsupported Content-Encoding: a request body may be gzip, deflate or identity"
    }


async def test_a_compressed_bomb_is_a_413(engine: Engine) -> None:
    """9 KB sent, 9 MiB once decoded: refused at the body limit, never decoded whole."""
    make_items(engine)
    data = gzip.compress(b'{"where": "' + b" " * (9 * 1024 * 1024) + b'"}')
    assert len(data) < 20_000
    status, answer = await post(engine, "gzip", data)
    assert status == 413, answer
