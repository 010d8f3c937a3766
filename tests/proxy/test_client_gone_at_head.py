"""A client gone just as its streamed answer's head is about to go out is a 499
`client_disconnected`, not a 500.

`Forwarder.relay` wrote the head (`StreamResponse.prepare`) outside the `try` that turns a
client gone mid-body into `client_gone`: a client whose connection was already closing
(`transport.is_closing()`, before `connection_lost` ran) when its engine answer's headers came
made `prepare` raise `ConnectionResetError`, which the app logged as an unexpected error with
its traceback and counted as a proxy 500 `internal_error` (suites 16:50, LOW: Electric's
client aborting a held SSE request to fetch a subset, 2 runs in 5). Fails on d4450629.

The race is made deterministic: the proxy-side client connection is closed just before the
engine answer is relayed (as if the client's FIN had been read a moment before).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from proxy.config.loader import build_config
from proxy.upstream.forward import Forwarder
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_upstream_client import RawServer, read_request

CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=60\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
)


async def test_a_client_gone_as_its_head_goes_out_is_client_gone_not_a_500(
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(CHUNKED)
            await writer.drain()

    relay = Forwarder.relay

    async def closing_first(self: Forwarder, request: Any, *args: Any) -> Any:
        request.transport.close()  # (closing now; `connection_lost` runs on a later turn)
        return await relay(self, request, *args)

    monkeypatch.setattr(Forwarder, "relay", closing_first)
    async with RawServer(serve) as raw:
        assert raw.server is not None
        port = raw.server.sockets[0].getsockname()[1]
        config = base_config(f"http://127.0.0.1:{port}", str(idp_server.make_url("/jwks.json")))
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
        proxy = await make_proxy(build_config(config, environ), fast_lane=False)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        caplog.set_level(logging.INFO)
        with pytest.raises(Exception):  # noqa: B017 (the client sees its connection close)
            await proxy.get("/v1/shape?table=items&offset=-1", token=alice)
        await asyncio.sleep(0.2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    access = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert access and all(" 500" not in line for line in access), access
