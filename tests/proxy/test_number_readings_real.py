"""Every number the proxy reads or checks (`offset`, `cursor`, `subset__limit`,
`subset__offset`, the keys of `params[n]` and `subset__params[n]`, the values of
`subset__params`, a POST body's `limit`, `offset` and `params`), each written in the ways a
number can be (signs, zeros, spaces, underscores, exponents, `NaN`, `Infinity`, non-ASCII
digits, 5,000 digits: Python's `int()` refuses more than 4,300), sent straight to the engine
and through the proxy under the open policy, and through a named shape (the engine's same
request naming its table): the same status and body, a 400 in the engine's words, never a
500.

Real path: proxy -> `sync-engine` -> PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from typing import Any

import aiohttp
from yarl import URL

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.real_proxies import open_config
from tests.proxy.test_transparency_fuzz_real import _comparable
from tests.support.engine_process import EngineProcess

HUGE = "9" * 5000
#: More digits than a double holds: bound as written, it selects its row (as a double, none).
FRACTION = "123456789012345678901234567890.000000000000000000001"
engine_secret, engine = shared_engine_fixtures(
    "numbers",
    "CREATE TABLE items (id int PRIMARY KEY, title text, n numeric)",
    f"INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2), (5, 'e', 5), (7, 'x', {FRACTION})",
    args=("--long-poll-timeout", "1"),
)

#: Numbers as text: each is put into the URL percent-encoded, and as JSON text where valid.
TEXTS = [
    "5", "+5", "-5", "-0", "+0", "0", "00005", " 5", "5 ", "5\t", "1_0", "1e3", "1E3", "1e400",
    "-1e400", "1.0", "1.5", ".5", "5.", "NaN", "nan", "Infinity", "-Infinity", "inf", "0x10",
    "\u0665", "\uff15", "", "+", "-", "++5", "--5", "+-5", HUGE, "-" + HUGE, "0" * 5000 + "5",
    "9223372036854775807", "9223372036854775808", "-9223372036854775809",
    "18446744073709551615", "18446744073709551616", "4294967296",
]  # fmt: skip
#: Numbers as raw JSON (a POST body's values, `subset__params`' text).
JSON_NUMBERS = [
    "5", "-0", "0", "-5", "5.0", "1e3", "1e400", "-1e400", "1.5", "NaN", "Infinity", HUGE,
    "0" + "5", "9223372036854775808", '"5"', '" 5"', '"1_0"', '"+5"', "true", "null",
    '"' + HUGE + '"', "1e-400", FRACTION, "1" + "0" * 400,
]  # fmt: skip


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _gets() -> list[str]:
    """Query strings (after `/v1/shape?table=items&`)."""
    queries = []
    for text in TEXTS:
        v = _q(text)
        queries += [
            f"offset={v}",
            f"offset={v}_0&handle=h",
            f"offset=0_{v}&handle=h",
            f"offset=-1&cursor={v}",
            f"offset=-1&subset__order_by=id&subset__limit={v}",
            f"offset=-1&subset__order_by=id&subset__offset={v}",
            f"offset=-1&subset__limit={v}",
            f"offset=-1&where=id%3D%241&params%5B{v}%5D=1",
            f"offset=-1&where=id%3D%241&params[{v}]=1",
            f"offset=-1&where=id%3D%241&params%5B1%5D={v}",
            f"offset=-1&subset__where=id%3D%241&subset__params%5B{v}%5D=1",
            f"offset=-1&subset__where=id%3D%241&subset__params%5B1%5D={v}",
        ]
    for raw in JSON_NUMBERS:
        keyed = _q('{"1": ' + raw + "}")
        queries += [
            f"offset=-1&subset__where=id%3D%241&subset__params={keyed}",
            f"offset=-1&subset__where=id%3D%241&subset__params={_q('[' + raw + ']')}",
            f"offset=-1&subset__where=true&subset__params={_q(raw)}",
            f"offset=-1&subset__where=n%3D%241&subset__params={keyed}",
        ]
    return queries


def _posts() -> list[bytes]:
    bodies = []
    for raw in JSON_NUMBERS:
        bodies += [
            b'{"order_by": "id", "limit": %s}' % raw.encode(),
            b'{"order_by": "id", "offset": %s}' % raw.encode(),
            b'{"where": "id = $1", "params": {"1": %s}}' % raw.encode(),
            b'{"where": "id = $1", "params": %s}' % raw.encode(),
            b'{"where": "n = $1", "params": {"1": %s}}' % raw.encode(),
            b'{"subset": {"order_by": "id", "limit": %s}}' % raw.encode(),
        ]
    return bodies


async def _answer(session: aiohttp.ClientSession, method: str, url: str, body: bytes | None) -> Any:
    async with session.request(
        method,
        URL(url, encoded=True),
        data=body,
        headers={"Content-Type": "application/json"} if body is not None else {},
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
    ) as resp:
        raw = await asyncio.wait_for(resp.read(), 30)
        # (a subset's snapshot metadata moves with whatever else writes WAL meanwhile)
        raw = re.sub(rb'"metadata":\{[^}]*\}', b'"metadata":{}', raw)
        return _comparable(resp.status, resp.headers, raw, method)


Case = tuple[str, str, str, bytes | None]


def _cases() -> list[Case]:
    """(method, the engine's target, the proxy's, body): each query and body straight and
    through the proxy, and through the named shape `all-items` (where it takes it: no shape
    where or params)."""
    cases: list[Case] = []
    for query in _gets():
        direct = f"/v1/shape?table=items&{query}"
        cases.append(("GET", direct, direct, None))
        if "where" not in query.partition("subset__")[0]:
            cases.append(("GET", direct, f"/shapes/all-items?{query}", None))
    post = "/v1/shape?table=items&offset=-1"
    for body in _posts():
        cases.append(("POST", post, post, body))
        cases.append(("POST", post, "/shapes/all-items?offset=-1", body))
    return cases


def _huge(case: Case) -> bool:
    """A case with a number of more digits than Python's `int()` reads (4,300)."""
    text = case[1] + case[2] + (case[3] or b"").decode()
    return "0" * 4301 in text or "9" * 4301 in text


async def _differences(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, cases: list[Case]
) -> list[Any]:
    named = {"all-items": {"table": "items", "allow": [
        {"anonymous": True, "all_rows": True, "subset": True, "client_where": "passthrough"}
    ]}}  # fmt: skip
    proxy = await make_proxy(open_config(engine.url, engine_secret, shapes=named))
    base = str(proxy.client.make_url("")).rstrip("/")
    differences = []
    room = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as session:

        async def compare(method: str, direct: str, through: str, body: bytes | None) -> None:
            async with room:
                expected = await _answer(
                    session, method, f"{engine.url}{direct}&secret={engine_secret}", body
                )
                got = await _answer(session, method, base + through, body)
            if got != expected or expected[0] >= 500:
                differences.append((method, through[:120], (body or b"")[:80], expected, got))

        await asyncio.gather(*(compare(*case) for case in cases))
    for method, target, body, expected, got in differences:
        print("DIFFERENCE", method, target, body)
        print("  engine:", str(expected)[:400])
        print("  proxy: ", str(got)[:400])
    return differences


async def test_numbers_are_read_as_the_engine_reads_them(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """1,259 cases (the 31-digit fraction against a numeric column: the rows of the number
    as written once the engine binds it so, w-inputs 8defa1d8; the proxy forwards the
    engine's own reading of the params). On f8eecd37's parent 89 of the first 1,139 differed, all through the named shape, where the
    proxy read the numbers itself: `subset__limit=%205`, `1_0`, `\u0665`, `\uff15`, `5%09`
    served (the engine: "is invalid"), `subset__limit=0` "must be greater than or equal to
    1" (the engine: "must be greater than 0")."""
    cases = [case for case in _cases() if not _huge(case)]
    assert await _differences(engine, engine_secret, make_proxy, cases) == []


async def test_numbers_of_thousands_of_digits_are_a_400(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """A 5,000-digit offset, subset limit or offset (URL or POST body): the engine's 400
    through the proxy too, never a 500 (both were 500s before w-inputs ce285d8b and the
    lead's leading-zeros fix in parse_offset)."""
    cases = [case for case in _cases() if _huge(case)]
    assert await _differences(engine, engine_secret, make_proxy, cases) == []
