"""Answers outside the shape query itself, through the proxy as from the engine (real engine,
real Postgres, `config/examples/open.yaml`).

Found by sending the same raw requests to both:
- `/v1/shape/` is the engine's second shape route (Electric's router ignores the trailing
  slash too); the proxy answered 404, so a client configured with that URL synced direct
  and failed through the proxy. Served now, under the same policy (`test_policy_applies`).
  So is every other spelling Electric's router reads as a route, as the engine (59c79ae9)
  reads them: `/v1//shape`, `//v1/shape`, `/v1/%73hape`, `/v1/health/` (the proxy's 404s).
- The engine puts CORS headers (and `electric-server`) on every answer; the proxy only on
  shape answers, so a browser could not read `/v1/health`, or a 404, through it.
- A POST subset body may be as large as the engine reads (8 MiB: a long `= ANY($1)` list);
  the open config kept the proxy's 64 KiB default, a 413 where the engine answers.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import psycopg
from multidict import CIMultiDict
from yarl import URL

from proxy.config.loader import build_config
from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.proxy_fakes import base_config
from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess

ORIGIN = "https://app.example.com"
#: What a browser needs to read an answer and what the engine says it may do there; and
#: `Vary` (an answer naming the caller's Origin varies with it: a shared cache keyed without
#: it handed one origin's answer to another; the proxy's `GET /` had none).
CORS = (
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "electric-server",
    "vary",
)


# One engine for the module's tests (each started its own: ~2 s apiece in CI); what they write is
# a row no policy here shows (`org-c`); every comparison reads the engine and the proxy at the
# same moment.
engine_secret, engine = shared_engine_fixtures(
    "parity",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a'), (2, 'org-b', 'b')",
    args=("--long-poll-timeout", "1"),
)


async def _get(url: str | URL, headers: Any = None) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers or {}, allow_redirects=False) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


async def _open_proxy(engine: EngineProcess, engine_secret: str, make_proxy: Any) -> str:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    return str(proxy.client.make_url("")).rstrip("/")


#: Spellings of the routes' paths, read as Electric's router reads them (segments split on
#: `/`, empty ones dropped, each percent-decoded): the first ones are the shape route, the
#: next ones no route (404), the last the health route. Electric's router and the engine
#: (59c79ae9) serve `/v1//shape` and `/v1/%73hape`; the proxy answered them 404.
SHAPE_SPELLINGS = ("/v1/shape/", "/v1//shape", "//v1/shape", "/v1/%73hape", "/v1/shape//")
NO_ROUTE = ("/v1/shape%2F", "/v1%2Fshape", "/v1/./shape", "/v1/Shape", "/v1/shape/x")
HEALTH_SPELLINGS = ("/v1/health/", "/v1//health", "/v1/%68ealth")


async def test_every_spelling_of_a_route_as_the_engine(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    base = await _open_proxy(engine, engine_secret, make_proxy)
    wrong = []
    for path in SHAPE_SPELLINGS + NO_ROUTE:
        for query in ("table=items&offset=-1", "offset=-1", "table=items&offset=-1&where=id>1"):
            e_status, e_headers, e_body = await _get(
                URL(f"{engine.url}{path}?secret={engine_secret}&{query}", encoded=True)
            )
            p_status, p_headers, p_body = await _get(URL(f"{base}{path}?{query}", encoded=True))
            if (p_status, p_body) != (e_status, e_body):
                wrong.append((path, query, e_status, p_status, p_body[:80]))
                continue
            if e_status == 200:
                assert p_headers["electric-handle"] == e_headers["electric-handle"]
                handle, offset = p_headers["electric-handle"], p_headers["electric-offset"]
                next_query = query.replace("offset=-1", f"offset={offset}")
                status, headers, _ = await _get(
                    URL(f"{base}{path}?{next_query}&handle={handle}", encoded=True)
                )
                assert status == 200 and "electric-up-to-date" in headers
    for path in HEALTH_SPELLINGS:
        e_status, _, e_body = await _get(URL(f"{engine.url}{path}", encoded=True))
        p_status, _, p_body = await _get(URL(f"{base}{path}", encoded=True))
        if (p_status, p_body) != (e_status, e_body):
            wrong.append((path, "", e_status, p_status, p_body[:80]))
    assert not wrong


async def test_policy_applies_on_every_spelling_of_the_shape_route(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    for path in ("/v1/shape", *SHAPE_SPELLINGS):
        reply = await proxy.raw_get(f"{path}?table=items&offset=-1", member)
        assert reply.status == 200, (path, reply.body)
        assert [m["value"] for m in reply.json() if "value" in m] == [
            {"id": "1", "org_id": "org-a", "title": "a"}
        ], path
        assert (await proxy.raw_get(f"{path}?table=items&offset=-1", "x")).status == 401
        reply = await proxy.raw_get(f"{path}?table=items&offset=-1&columns=salary", member)
        assert reply.status == 403, path


async def test_cors_on_every_answer_as_the_engine(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    base = await _open_proxy(engine, engine_secret, make_proxy)
    # (the proxy names the engine in `electric-server` once the engine has answered it)
    assert (await _get(f"{base}/v1/shape?table=items&offset=-1"))[0] == 200
    two = CIMultiDict([("Origin", ORIGIN), ("Origin", "https://other.example")])
    for path in (
        "/",
        "/v1/health",
        "/v1/nosuch",
        "/v1/shape/x",
        "/v1//shape?table=items&offset=-1",
        "/v1/%73hape?table=items&offset=-1",
        "/v1/shape%2F?table=items&offset=-1",
        "/v1//health",
        "/v1/shape?table=items&offset=-1",
    ):
        for origin in (ORIGIN, None, two):
            # (two Origin headers: the engine answers `*`, the proxy echoed the first)
            headers = origin if isinstance(origin, CIMultiDict) else {"Origin": origin or ""}
            if origin is None:
                headers = {}
            secret = f"&secret={engine_secret}" if "?" in path else ""
            e_status, e_headers, _ = await _get(
                URL(engine.url + path + secret, encoded=True), headers
            )
            p_status, p_headers, _ = await _get(URL(base + path, encoded=True), headers)
            assert p_status == e_status, path
            for name in CORS:
                assert p_headers.get(name) == e_headers.get(name), (path, origin, name)


async def test_post_bodies_up_to_the_engines_limit(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    base = await _open_proxy(engine, engine_secret, make_proxy)
    # (the engine takes params of up to 64 K characters each: three make a ~150 KB body)
    lists = [",".join(str(i) for i in range(n, n + 50_000, 7)) for n in (0, 1, 2)]
    params = ", ".join(f'"{k}": "{{{ids}}}"' for k, ids in enumerate(lists, 1))
    bodies = [
        b'{"where": "id = ANY($1) OR id = ANY($2) OR id = ANY($3)", "params": {'
        + params.encode()
        + b"}}",
        b'{"where": "' + b"x" * 70_000 + b'"}',  # the engine's own 400 (where over 64 KiB)
        b'{"where": "' + b"x" * (9 * 1024 * 1024) + b'"}',  # over the engine's 8 MiB: 413
    ]
    statuses = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            answers = []
            for url in (
                f"{engine.url}/v1/shape?table=items&offset=-1&secret={engine_secret}",
                f"{base}/v1/shape?table=items&offset=-1",
            ):
                headers = {"Content-Type": "application/json"}
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    if isinstance(answer, dict):
                        answer.pop("code", None)
                        answer.pop("metadata", None)  # (snapshot marks differ per request)
                        for message in answer.get("data", []):
                            message["headers"].pop("snapshot_mark", None)
                    answers.append((resp.status, answer))
            assert answers[1] == answers[0], (len(body), answers[1])
            statuses.append(answers[0][0])
    assert statuses == [200, 400, 413]


async def _sse_head(url: str) -> Any:
    """An SSE answer's headers (the stream itself is left at once)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Accept": "text/event-stream"}) as resp,
    ):
        assert resp.status == 200
        return resp.headers


async def test_an_sse_answers_etag_as_the_engines(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """The engine's SSE ETag names the log's end when the stream opened
    (`handle:offset:max(offset, log end):time`); the proxy's named the client's offset twice."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    status, headers, _ = await _get(f"{base}/v1/shape?table=items&offset=-1")
    handle, start = headers["electric-handle"], headers["electric-offset"]
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (3, 'org-c', 'c')")  # (no policy here shows it)
    for _ in range(30):  # (until the change is in the shape's log: 1 s long-polls)
        status, headers, _ = await _get(
            f"{base}/v1/shape?table=items&offset={start}&handle={handle}&live=true"
        )
        if headers["electric-offset"] != start:
            break
    end = headers["electric-offset"]
    assert end != start
    for offset in (start, end):
        query = f"table=items&offset={offset}&handle={handle}&live=true&live_sse=true"
        direct = await _sse_head(f"{engine.url}/v1/shape?{query}&secret={engine_secret}")
        proxied = await _sse_head(f"{base}/v1/shape?{query}")
        assert proxied["etag"].rsplit(":", 1)[0] == direct["etag"].rsplit(":", 1)[0], offset


async def test_head_on_health_and_root_as_the_engine(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """The engine's GET routes answer HEAD (aiohttp's), as load balancers and monitors probe
    health; the proxy answered 405 on `/v1/health` and `/`."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/health", "/"):
            answers = []
            for url in (engine.url + path, base + path):
                async with session.head(url) as resp:
                    answers.append((resp.status, await resp.read()))
            assert answers[1] == answers[0] == (200, b""), path
