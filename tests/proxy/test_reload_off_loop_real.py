"""A reload loads its config off the event loop: requests are answered meanwhile.

A reload (the file poll, SIGHUP) read, parsed, validated and compiled the config on the
event loop. 3.8 KB of YAML aliases expand to 10,000 rules, 20 s to load here, and every
request waited that long (config probe, MEDIUM; a large legitimate policy stalls it too).
Now only the swap runs on the loop. The load is held back here (its `load_config` waits
for the test), so the check is an event, not a timing: a shape request is answered while
the reload's load is still under way, then the reload completes and applies.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import proxy.runtime as runtime_module
from tests.proxy.real_proxies import ITEMS_SQL, items_config
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

SHAPE = "/v1/shape?table=items&offset=-1"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(*ITEMS_SQL)


async def test_requests_are_answered_while_a_reload_loads(
    engine: EngineProcess,
    idp_server: Any,
    reloadable_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await reloadable_proxy(items_config(engine, idp_server, reload_interval=0.2))
    token = proxy.tokens.make()
    assert (await proxy.get(SHAPE, token=token)).status == 200
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    load = runtime_module.load_config

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(15)  # (on the loop, as before, this blocks every request for 15 s)
        try:
            return load(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(runtime_module, "load_config", slow_load)
    proxy.withdraw("admin")
    proxy.write_config()  # (the poll picks it up)
    await asyncio.to_thread(entered.wait, 30)
    reply = await proxy.get(SHAPE, token=token)
    answered_while_loading = not finished.is_set()
    release.set()
    assert reply.status == 200
    assert answered_while_loading, "the request waited for the reload's load"
    reloads = proxy.app.holder._metrics.config_reloads
    await wait_until_async(lambda: reloads.labels(result="ok")._value.get() >= 1)
    admin = proxy.tokens.make(role="admin")
    assert (await proxy.get(SHAPE, token=admin)).status == 403  # (the new config applies)


async def test_the_file_poll_goes_on_after_a_reload_that_crashed(
    engine: EngineProcess,
    idp_server: Any,
    reloadable_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load that raised anything but a config error (a RecursionError from the YAML
    parser, then) ended the poll's task for good: a later edit, a revocation, was never
    loaded, and /healthz said all was well (config probe, MEDIUM). Now it is a failed
    reload, shown, and the next edit loads."""
    proxy = await reloadable_proxy(items_config(engine, idp_server, reload_interval=0.2))
    admin = proxy.tokens.make(role="admin")
    assert (await proxy.get(SHAPE, token=admin)).status == 200
    load = runtime_module.load_config
    calls: list[int] = []

    def crashing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RecursionError("maximum recursion depth exceeded")
        return load(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "load_config", crashing)
    proxy.config["server"]["reload_interval"] = 0.2
    proxy.config["tables"]["items"]["allow"][1]["columns"] = ["id", "title"]
    proxy.write_config()
    await wait_until_async(lambda: proxy.app.holder.last_error is not None, timeout=30)
    assert "RecursionError" in (await proxy.get("/healthz")).json()["config_error"]
    proxy.withdraw("admin")  # the revocation, written after
    proxy.write_config()
    reloads = proxy.app.holder._metrics.config_reloads
    await wait_until_async(lambda: reloads.labels(result="ok")._value.get() >= 1, timeout=30)
    assert (await proxy.get(SHAPE, token=admin)).status == 403
    assert (await proxy.get("/healthz")).json()["config_error"] is None
