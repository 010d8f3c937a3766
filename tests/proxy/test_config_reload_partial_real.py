"""A config file rewritten in place is never loaded half-written (attack 15:06).

An operator's in-place rewrite (`scp` over a slow link, `envsubst < t > proxy.yaml`, an
editor) leaves a prefix of the file on disk between its writes, and a prefix is often a
valid, *wider* config: here the `member` rule cut before its `columns:` line shows every
column, `salary` too. The old poll loaded whatever was on disk at its tick, and the proxy
served the hidden column until the next tick. Now a polled reload loads the file only once
it has stayed unchanged for a whole `server.reload_interval` (the guarantee: a writer that
never pauses that long is never loaded half-way), and no reload (SIGHUP's neither) loads a
file that changed while it was read. A complete file renamed over the path is picked up.

Real path: the proxy app with its own poll loop -> `sync-engine` -> Postgres. On the old
code `test_an_in_place_rewrite_never_serves_its_prefix` failed: `salary` served.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import proxy.runtime as runtime_module
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

INTERVAL = 0.5
#: The writer's pause between two writes: well under the interval (the guarantee's bound).
PAUSE = 0.1
SHAPE = "/v1/shape?table=items&offset=-1"
RULE = """\
tables:
  items:
    allow:
      - name: member
        where: "org_id = {{org_id}}"
"""
COLUMNS = "        columns: [id, org_id, title]\n"


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, salary int)",
        "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-b' ELSE 'org-a' END,"
        " 't' || i, i * 100 FROM generate_series(1, 6) i",
    )


async def _start(engine: EngineProcess, proxy_from_yaml: Any) -> tuple[Any, str, str, Path]:
    """The proxy from `tmp_path/proxy.yaml` (polled every `INTERVAL`): the file's `upstream`,
    `issuers` and `server` part, and the path."""
    config = base_config(engine.url, proxy_from_yaml.jwks_url)
    del config["tables"], config["shapes"]
    config["upstream"].update(first_byte_timeout=10)
    config["server"] = {"reload_interval": INTERVAL}
    head = yaml.safe_dump(config)
    proxy = await proxy_from_yaml(head + RULE + COLUMNS)
    token = proxy.tokens.make(org_id="org-a")
    reply = await proxy.get(SHAPE, token=token)
    assert reply.status == 200, reply.body
    assert set(json.loads(reply.headers["electric-schema"])) == {"id", "org_id", "title"}
    return proxy, token, head, proxy.path


async def test_an_in_place_rewrite_never_serves_its_prefix(
    engine: EngineProcess,
    proxy_from_yaml: Any,
) -> None:
    proxy, token, head, path = await _start(engine, proxy_from_yaml)
    # The same file again, written in place in pieces: the first ends after the rule's
    # `where:` (a valid config showing every column), then comment lines, then `columns:`.
    pieces = [head + RULE] + [f"# {i}\n" for i in range(12)] + [COLUMNS]
    assert yaml.safe_load(pieces[0])["tables"]["items"]["allow"][0].get("columns") is None
    served: list[bytes] = []
    writing = True

    async def read_all_the_while() -> int:
        count = 0
        while writing:
            reply = await proxy.get(SHAPE, token=token)
            count += 1
            if reply.status == 200 and b"salary" in reply.body:
                served.append(reply.body)
            await asyncio.sleep(0.01)
        return count

    reader = asyncio.create_task(read_all_the_while())
    written: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        for piece in pieces:
            os.write(fd, piece.encode())
            written.append(time.monotonic())
            await asyncio.sleep(PAUSE)
    finally:
        os.close(fd)
    await asyncio.sleep(3 * INTERVAL)  # (what the old code loaded would be in force now)
    writing = False
    reads = await reader
    assert reads > 10
    gaps = [b - a for a, b in itertools.pairwise(written)]
    if served and max(gaps) >= INTERVAL:
        pytest.skip(f"the writer paused {max(gaps):.2f} s (a loaded machine): beyond the bound")
    assert served == [], served[0][:300]
    assert path.read_text() == "".join(pieces)
    reply = await proxy.get(SHAPE, token=token)
    assert set(json.loads(reply.headers["electric-schema"])) == {"id", "org_id", "title"}


async def test_a_renamed_complete_file_is_picked_up(
    engine: EngineProcess,
    proxy_from_yaml: Any,
) -> None:
    proxy, token, head, path = await _start(engine, proxy_from_yaml)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(head + RULE + "        columns: [id, org_id]\n")
    os.replace(tmp, path)

    async def narrowed() -> bool:
        reply = await proxy.get(SHAPE, token=token)
        return set(json.loads(reply.headers["electric-schema"])) == {"id", "org_id"}

    await wait_until_async(narrowed, message="the renamed config in force")


async def test_no_reload_loads_a_file_changing_while_it_is_read(
    engine: EngineProcess,
    proxy_from_yaml: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGHUP's reload (`reload()`, immediate) reads a file a writer appends to meanwhile:
    it is not loaded (a warning says why); once the writer is done the poll loads it."""
    proxy, token, head, path = await _start(engine, proxy_from_yaml)
    path.write_text(head + RULE)  # (a prefix: every column)
    read = runtime_module.read_regular_file

    def written_to_while_read(file: str | Path, max_bytes: int, what: str) -> bytes:
        raw = read(file, max_bytes, what)
        if Path(file) == path and not raw.endswith(COLUMNS.encode()):
            with open(path, "a") as f:
                f.write(COLUMNS)  # (the writer's last piece lands during the read)
        return raw

    monkeypatch.setattr(runtime_module, "read_regular_file", written_to_while_read)
    holder = proxy.app.holder
    assert holder.reload() is False
    reply = await proxy.get(SHAPE, token=token)
    assert set(json.loads(reply.headers["electric-schema"])) == {"id", "org_id", "title"}
    assert b"salary" not in reply.body
    monkeypatch.undo()
    assert path.read_text() == head + RULE + COLUMNS
    reloads = holder._metrics.config_reloads
    await wait_until_async(
        lambda: reloads.labels(result="ok")._value.get() >= 1, message="the poll's reload"
    )
    assert reloads.labels(result="changing")._value.get() == 1
