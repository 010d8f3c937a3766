"""A follower's position parameters (`offset`, `handle`, `cursor`) split off the prepared
decision's key (`proxy.http.positions`): the engine gets byte for byte the request the general
path sends, and the client the same answer, for follower sequences and odd query strings.

Two proxies, each in front of its own scripted engine that records every request head: one as
shipped (the prepared cache, its templates and the fast lane), one with no prepared cache at
all (`token_cache_size: 0`: every request is authorised and its engine URL built from
scratch, today's general path). Each request goes to both; the heads the two engines read,
and the answers the two clients get, must be the same bytes (`Date` aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from yarl import URL

from proxy.config.loader import build_config
from proxy.http import handlers, positions
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_upstream_client import RawServer, read_request

ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"cache-control: public, max-age=60\r\nelectric-handle: 1-2\r\nelectric-offset: 0_0\r\n"
    b"electric-server: raw\r\nContent-Length: 2\r\n\r\n[]"
)


class Recording:
    """A scripted engine: each request head it reads is kept; each gets `ANSWER`."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:
            self.heads.append(await read_request(reader))
            writer.write(ANSWER)
            await writer.drain()


@contextlib.asynccontextmanager
async def _engine(
    idp_server: Any, environ: dict[str, str], **server: Any
) -> AsyncIterator[tuple[Recording, Any, Any]]:
    """A recording engine, and two configs for it: `server` settings over the defaults, and
    the same without a prepared cache (`token_cache_size: 0`)."""
    recording = Recording()
    async with RawServer(recording.serve) as raw:
        assert raw.server is not None
        port = raw.server.sockets[0].getsockname()[1]
        configs = []
        for settings in (server, {"token_cache_size": 0}):
            config = base_config(f"http://127.0.0.1:{port}", str(idp_server.make_url("/jwks.json")))
            config["collapse"] = False
            config["cache"] = {"max_bytes": 0}
            config["server"] = {**config.get("server", {}), **settings}
            configs.append(build_config(config, environ))
        yield recording, configs[0], configs[1]


async def _ask(proxy: Any, head: bytes) -> bytes:
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        raw = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)
        if length is not None:
            raw += await reader.readexactly(int(length.group(1)))
        raw = re.sub(rb"\r\nX-Request-Id: \w+", b"\r\nX-Request-Id: -", raw)  # (made up)
        return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", raw)
    finally:
        writer.close()


def _lines(heads: list[bytes]) -> list[bytes]:
    """Request heads without their X-Request-Id (each proxy makes up its own)."""
    return [re.sub(rb"\r\nx-request-id: \w+", b"", head, flags=re.I) for head in heads]


def _head(target: str, token: str | None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: proxy.test", "X-Request-Id: positions-test-0001"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


#: Shapes a follower may follow (the rest of its query), under `base_config`'s policy.
_SHAPES = [
    "table=items",
    "table=items&live=true",
    "table=items&columns=id,title",
    "table=items&where=title%20%3D%20%241&params%5B1%5D=t%25x",
    "table=items&where=title+like+%27a%25%27&live=true",
    "table=items&log=changes_only&live=1",
    "live=true&table=items&replica=full",
    "table=notes",
    "table=items&expired_handle=9-9&cache-buster=123",
]
_GOOD_OFFSETS = ["-1", "-1_0", "now", "0_0", "0_inf", "26800584_4", "1_0", "9999999999999999999_0"]
_ODD_OFFSETS = [
    "", "01_0", "1_02", "10", "1_2_3", "0_-1", "1_2 ", "18446744073709551616_0", "1_4611686018427387904",
    "%31_0", "1%5F0", "now%20", "-2", "1_INF", "+1_0", "1_0%00",
]  # fmt: skip
_GOOD_HANDLES = ["38083685-1729874417404123", "1-2", "h_1", "x" * 128]
_ODD_HANDLES = ["", "h%2D1", "h.1", "h~1", "x" * 129, "h+1", "%00", "h/1", "h%20"]
_GOOD_CURSORS = ["", "0", "1674440", "9" * 18]
_ODD_CURSORS = ["9" * 19, "abc", "-1", "1%30", " 1"]


def _query(rng: random.Random, shape: str, odd: bool) -> str:
    """A follower's query for `shape`: mostly what Electric's client sends, some odd."""
    parts = shape.split("&")
    offset = rng.choice(_ODD_OFFSETS if odd and rng.random() < 0.4 else _GOOD_OFFSETS)
    if rng.random() < 0.97:
        parts.append(f"offset={offset}")
    if rng.random() < 0.8:
        handle = rng.choice(_ODD_HANDLES if odd and rng.random() < 0.4 else _GOOD_HANDLES)
        parts.append(f"handle={handle}")
    if rng.random() < 0.6:
        cursor = rng.choice(_ODD_CURSORS if odd and rng.random() < 0.4 else _GOOD_CURSORS)
        parts.append(f"cursor={cursor}")
    if odd:
        oddity = rng.randrange(9)
        if oddity == 0:
            parts.append(f"offset={rng.choice(_GOOD_OFFSETS)}")  # repeated
        elif oddity == 1:
            parts.append(f"%6Fffset={rng.choice(_GOOD_OFFSETS)}")  # another spelling
        elif oddity == 2:
            parts.append(rng.choice(["offset", "handle", "cursor"]))  # bare
        elif oddity == 3:
            parts.append(f"handle={rng.choice(_GOOD_HANDLES)}")
        elif oddity == 4:
            parts.append("")  # an empty part
        elif oddity == 5:
            parts.append(f"hand%6Ce={rng.choice(_GOOD_HANDLES)}")
        elif oddity == 6:
            parts.append("offset_x=1&xoffset=2&cursor_=3")
    if rng.random() < 0.5:
        rng.shuffle(parts)
    return "&".join(parts)


def test_split_reads_the_query_as_its_decoding_does() -> None:
    """What `split` takes off is what the decoded query holds for those names, and nothing of
    the rest decodes to one of them."""
    rng = random.Random(7)
    splits = 0
    for _ in range(20_000):
        query = _query(rng, rng.choice(_SHAPES), rng.random() < 0.5)
        found = positions.split(query)
        pairs = list(URL.build(query_string=query, encoded=True).query.items())
        if found is None:
            continue
        splits += 1
        rest, kind, values = found
        named = [(name, value) for name, value in pairs if name in positions.POSITIONS]
        flags = kind.partition(":")[2]
        names = ["offset"] + ["handle"] * ("h" in flags) + ["cursor"] * ("c" in flags)
        assert len(named) == len({name for name, _ in named}), query
        assert dict(named) == dict(zip(names, values, strict=True)), query
        others = [(name, value) for name, value in pairs if name not in positions.POSITIONS]
        assert list(URL.build(query_string=rest, encoded=True).query.items()) == others, query
    assert splits > 5_000


@pytest.mark.parametrize("seed", range(3))
async def test_the_engine_gets_what_the_general_path_sends_for_followers_and_odd_queries(
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    seed: int,
) -> None:
    rng = random.Random(seed)
    async with _engine(idp_server, environ) as (engine, ours_config, plain_config):
        proxy = await make_proxy(ours_config)
        general = await make_proxy(plain_config)
        tokens = [
            proxy.tokens.make(sub="alice", org_id="org-1"),
            proxy.tokens.make(sub="bob", org_id="org-2"),
            proxy.tokens.make(sub="root", role="admin"),
            None,
        ]
        # Followers: a shape and a token each, asking again and again with new positions
        # (mostly as Electric's client does; some odd), interleaved.
        followers = [(rng.choice(_SHAPES), rng.choice(tokens)) for _ in range(12)]
        forwarded = 0
        for step in range(240):
            shape, token = rng.choice(followers)
            query = _query(rng, shape, odd=rng.random() < 0.3)
            head = _head(f"/v1/shape?{query}", token)
            before = len(engine.heads)
            answers = [await _ask(proxy, head)]
            middle = len(engine.heads)
            answers.append(await _ask(general, head))
            assert answers[0] == answers[1], (step, query, answers)
            sent = (_lines(engine.heads[before:middle]), _lines(engine.heads[middle:]))
            assert sent[0] == sent[1], (step, query)
            forwarded += len(sent[0])
        assert forwarded > 60
        # The repeated kinds of position were answered from their templates on the fast lane.
        assert len(fast_lane_taken) > 20


async def test_a_followers_new_offsets_are_one_prepared_entry_on_the_fast_lane(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, fast_lane_taken: list[str]
) -> None:
    """Every request of a live follower names a new offset and cursor: each was a one-shot
    prepared entry (~4.5 KB, up to `token_cache_size` of them) that no later request hit, and
    none took the fast lane. Now the follower's requests share one entry and take the lane.
    (On the old code: 50 entries, none of the 49 repeats on the fast lane.)"""
    async with _engine(idp_server, environ) as (engine, config, _):
        proxy = await make_proxy(config)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        for i in range(50):
            reply = await proxy.get(
                f"/v1/shape?cursor={1000 + i}&handle=5-6&live=true&offset={i + 1}_{i % 3}"
                "&table=items",
                token=alice,
            )
            assert reply.status == 200
        (entry,) = proxy.app.lane[0].current.prepared.values()
        assert len(fast_lane_taken) == 49
        # Only its templates: no first request's URL, text or line besides (review 17:27).
        assert (str(entry.url), entry.url_text, entry.request_line) == ("", "", "")
        assert entry.line_template.count("%s") == 3
        lines = [head.split(b"\r\n")[0] for head in engine.heads]
        assert lines[-1].startswith(b"GET /v1/shape?table=items&where=org_id+=+$1&params[1]=org-1&")
        assert b"&offset=50_1&handle=5-6&live=true&cursor=1049&source_id=src-1&secret=" in lines[-1]
        assert len(set(lines)) == 50


async def test_two_users_never_share_a_prepared_entry(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, fast_lane_taken: list[str]
) -> None:
    """Alice's and Bob's followers asking the same queries in turn: each engine request
    carries its own user's filter, never the other's (the entry is keyed by the token)."""
    async with _engine(idp_server, environ) as (engine, config, _):
        proxy = await make_proxy(config)
        users = {
            "org-1": proxy.tokens.make(sub="alice", org_id="org-1"),
            "org-2": proxy.tokens.make(sub="bob", org_id="org-2"),
        }
        for i in range(30):
            for org, token in users.items():
                query = f"table=items&offset={i}_0&handle=1-2&live=true&cursor={i}"
                assert (await proxy.get(f"/v1/shape?{query}", token=token)).status == 200
                line = engine.heads[-1].split(b"\r\n")[0]
                assert f"params[1]={org}&".encode() in line, line
                assert f"offset={i}_0&handle=1-2&live=true&cursor={i}&".encode() in line
        assert len(proxy.app.lane[0].current.prepared) == 2
        assert len(fast_lane_taken) == 58


async def test_the_same_follower_query_is_one_decision_object_however_many_hold_it(
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Live followers of a shape at its tip all ask the same query; each held request kept
    its own copy of the decision made from the template (its engine URL and request line,
    ~1.3 KB a held long-poll: S2's memory per held request went from 7.4 to 8.7 KB). The
    same query is now the same decision object (`Runtime.instances`); another cursor is
    another. (Fails on 9235ce6a: four objects.)"""
    seen: list[Any] = []
    target_of = handlers.target_of

    def spy(prepared: Any, *args: Any) -> Any:
        seen.append(prepared)
        return target_of(prepared, *args)

    monkeypatch.setattr(handlers, "target_of", spy)
    async with _engine(idp_server, environ) as (engine, config, _):
        proxy = await make_proxy(config, fast_lane=False)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        query = "/v1/shape?cursor=7&handle=5-6&live=true&offset=3_1&table=items"
        for target in (query, query, query, query.replace("cursor=7", "cursor=8")):
            assert (await proxy.get(target, token=alice)).status == 200
        assert len(seen) == 4
        assert seen[0] is seen[1] is seen[2]
        assert seen[3] is not seen[0]
        assert seen[3].url_text == seen[0].url_text.replace("cursor=7", "cursor=8")
        assert b"cursor=8&" in engine.heads[-1]
