"""A shared engine request (`upstream.collapsing`, `upstream.sse`) whose answer the proxy
fails to handle.

A bug of the proxy's while making a shared answer's head (chaos seed 979: a KeyError out of
the response cache) is each waiter's 500 `internal_error`, as on the direct path, logged
when it happens; it was a 502 "the sync engine connection failed", blaming the engine, and
logged only as a task exception never retrieved.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import pytest

from proxy.errors import ProxyError
from proxy.upstream import sse
from proxy.upstream.client import UpstreamOptions
from proxy.upstream.collapsing import Flights, wait

OPTIONS = UpstreamOptions(connect_timeout=5, first_byte_timeout=5, retry_after=2, max_age_cap=60)
KEY = ("GET", "http://engine/v1/shape?table=items&offset=-1", "", "", "")


def _logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        r.levelno == logging.ERROR and r.exc_info and isinstance(r.exc_info[1], KeyError)
        for r in caplog.records
    )


def _bug(_: Any) -> NoReturn:
    raise KeyError("a bug")


class _Answer:
    closed = False

    def close(self) -> None:
        self.closed = True


async def test_a_bug_making_a_shared_answers_head_is_a_500_for_each_waiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = _Answer()

    async def open_() -> Any:
        return answer

    flights = Flights()
    flight, _ = flights.join(KEY, open_, _bug, lambda _: None)
    flights.join(KEY, open_, _bug, lambda _: None)  # a second client, collapsed on it
    for joined in (False, True):
        with pytest.raises(ProxyError) as caught:
            await wait(flight, None, OPTIONS, joined=joined)  # type: ignore[arg-type]
        assert (caught.value.status, caught.value.reason) == (500, "internal_error")
    assert answer.closed  # the engine connection is dropped
    assert _logged(caplog)
    await flights.close()


async def test_a_bug_making_a_shared_streams_head_is_a_500_for_each_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = _Answer()

    async def open_() -> Any:
        return answer

    streams = sse.SharedStreams()
    spec = sse.StreamSpec(("k",), "0_0", (0, 0, 0), 0)
    stream, _ = streams.join(spec, open_, _bug)
    streams.join(spec, open_, _bug)
    for joined in (False, True):
        with pytest.raises(ProxyError) as caught:
            await sse.serve(stream, None, spec, OPTIONS, joined=joined)  # type: ignore[arg-type]
        assert (caught.value.status, caught.value.reason) == (500, "internal_error")
    assert answer.closed
    assert _logged(caplog)
    await streams.close()
