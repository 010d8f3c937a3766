"""The transparency fuzz's requests under a restrictive policy: nothing the member may not see.

The generator of test_transparency_fuzz_real.py (repeated parameters with other values, odd
spellings and escapes of names and values, POST bodies beside URL subsets, SSE, HEAD,
DELETE...) sent through the proxy with a member's token under the base policy (members see
`items` rows of their org, columns id, org_id, title; nothing of `other`): every answer is a
refusal or rows of the member's org and columns only. The proxy rebuilds the engine's URL
from what it checked, so the engine can read nothing else; a parse that differed between
the check and the send (the first value checked, the last one sent) would show here.
Real path: proxy -> `sync-engine` -> Postgres. `PROXY_TRANSPARENCY_FUZZ_SEEDS` sweeps seeds.
"""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_transparency_fuzz_real import ROUNDS, SEEDS, _request
from tests.support.engine_process import EngineProcess

#: The member's columns, and its org's rows (odd ids).
SHOWN = {"id", "org_id", "title"}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        'CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, "Mixed" int)',
        "INSERT INTO items VALUES (1, 'org-a', 'a1', 1), (2, 'org-b', 'b1', 2), "
        "(3, 'org-a', NULL, NULL)",
        "CREATE TABLE other (k text PRIMARY KEY, v jsonb)",
        """INSERT INTO other VALUES ('x', '{"a": 1}')""",
        args=("--long-poll-timeout", "1", "--sse-timeout", "1", "--allow-delete"),
    )


def _values(body: bytes, event_stream: bool) -> list[Any]:
    """Every row value in an answer (a log, a subset's data, or SSE events)."""
    if event_stream:
        messages = [
            json.loads(line[5:])
            for line in body.decode("utf-8", "replace").splitlines()
            if line.startswith("data:")
        ]
    else:
        try:
            answer = json.loads(body)
        except ValueError:
            return []
        messages = answer["data"] if isinstance(answer, dict) and "data" in answer else answer
    if not isinstance(messages, list):
        return []
    return [m["value"] for m in messages if isinstance(m, dict) and "value" in m]


async def test_fuzzed_requests_never_show_a_member_more_than_its_rows(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    member = config["tables"]["items"]["allow"][1]
    member.update(subset=True, sse=True, delete=True)
    config["cors"] = {"allow_origins": ["*"]}
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make(sub="alice", org_id="org-a")
    base = str(proxy.client.make_url("")).rstrip("/")
    leaks = []
    served = 0  # (answers with rows: the fuzz reaches the engine)
    handles: list[str] = []
    async with aiohttp.ClientSession() as session:
        for seed in SEEDS:
            rng = random.Random(seed)
            for n in range(ROUNDS):
                req = _request(rng, handles, [])
                req["headers"]["Authorization"] = f"Bearer {token}"
                if req["method"] == "DELETE":
                    req["method"] = "GET"  # (a DELETE changes what the next requests see)
                if rng.random() < 0.7:
                    # Mostly servable: the table and offset given again last (which the
                    # engine reads), over whatever the generator drew before them.
                    tail = "table=items&offset=-1"
                    req["query"] = f"{req['query']}&{tail}" if req["query"] else tail
                path = "/v1/shape" + (f"?{req['query']}" if req["query"] else "")
                try:
                    async with session.request(
                        req["method"],
                        URL(base + path, encoded=True),
                        headers=req["headers"],
                        data=req["body"],
                        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                    ) as resp:
                        body = await resp.read()
                        status, headers = resp.status, resp.headers
                except aiohttp.ClientResponseError:
                    continue  # (a HEAD refused for its request line: a body, no rows)
                handle = headers.get("electric-handle")
                if handle and handle not in handles:
                    handles.append(handle)
                if status >= 300 or "content-encoding" in headers:
                    continue
                stream = headers.get("content-type", "").startswith("text/event-stream")
                values = _values(body, stream)
                served += bool(values)
                for value in values:
                    if not set(value) <= SHOWN or value.get("id") not in ("1", "3", None):
                        leaks.append((seed, n, req["method"], req["query"][:300], value))
                    elif "id" not in value and value.get("org_id", "org-a") != "org-a":
                        leaks.append((seed, n, req["method"], req["query"][:300], value))
    for leak in leaks[:10]:
        print("LEAK", leak)
    assert leaks == []
    print("SERVED", served)
    assert served >= len(SEEDS) * ROUNDS // 25, served
