"""A subset request whose parameter name is percent-encoded (`subset%5F%5Fwhere`,
`%73ubset__limit`) is a subset to the proxy and the engine (aiohttp decodes names), so the
TLS front (config/front, real nginx) must route it as one: to the location that waits for a
subset's snapshot (320 s), not the general one (90 s, here shortened to 1 s) whose 504 cut a
slow but legitimate subset short. A name that does not decode to `subset__...` stays a plain
request (the 504 here).

    client -> the TLS front (config/front, real nginx) -> a stand-in answering 3 s late
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from yarl import URL

from tests.browser.test_front_subset_wait import slow_front

#: Names that decode to `subset__<name>`: routed as a subset (each a 504 on the old map).
ENCODED = [
    "subset%5F%5Fwhere=id%3E1",
    "subset%5f%5fwhere=id%3E1",
    "subset_%5Flimit=2&subset__order_by=id",
    "%73ubset__where=id%3E1",
    "%73%75%62%73%65%74%5F%5Forder_by=id",
    "sub%73et__params%5B1%5D=1",
    "a=1&subset%5F%5Foffset=1",
    "subset%5F_",
]
#: Names that do not: plain requests.
PLAIN = ["subsetx__where=1", "xsubset__where=1", "Subset__where=1", "s%75bset_=1", "subset%5F=1"]


#: The status of each, past a tier whose general read timeout is short.
EXPECTED = {**dict.fromkeys(ENCODED, 200), **dict.fromkeys(PLAIN, 504)}


async def routes(session: aiohttp.ClientSession, base: str) -> dict[str, int]:
    """The status of each of `ENCODED` and `PLAIN` added to `base` (a shape URL)."""
    base += "&offset=0_0&handle=1-2"
    routed = {}
    for query in ENCODED + PLAIN:
        async with session.get(URL(f"{base}&{query}", encoded=True)) as r:
            routed[query] = r.status
    return routed


async def test_percent_encoded_subset_names_are_routed_as_subsets(tmp_path: Path) -> None:
    """On the old map each of `ENCODED` was the front's 504 (a subset's wait cut at 90 s)."""
    async with slow_front(tmp_path) as front:
        assert await routes(front.session, f"{front.base}/v1/shape?table=items") == EXPECTED
