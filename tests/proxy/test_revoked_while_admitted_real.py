"""A request authorised just before a reload that withdraws its rule, and still waiting to be
let through to the engine (a free engine connection: `limits.pool_wait`, up to 5 s by
default) when the reload lands, is authorised again under the new config: here a 403.

On the old code the engine request went out as it had been authorised, under the withdrawn
rule: a shared SSE stream was opened for it after the reload had ended every other one (a
200 stream under the old rule, with every change written after the reload, for as long as
the engine kept it open); a catch-up got the rows up to the log's tip, changes written after
the reload included; a long-poll was ended empty (its hold saw the revocation), not refused.
Found by proxy (2nd shift) looking for the class of attack 23:27 (state kept across a
reload): the 23:27 fix checks the revocation before each join of a shared stream but not
after the wait for admission that follows it.

Real path: proxy -> `sync-engine` -> Postgres, a real config file reloaded. The wait for a
free engine connection is where the reload is made to land (the admission call is wrapped);
nothing is timed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from proxy.config.loader import load_config
from proxy.http.handlers import REAUTHORISE_TRIES
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, sync_through


@pytest.fixture
def real_engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1')",
        args=("--no-fsync",),
    )


def _config(engine: EngineProcess, idp_server: Any, *, collapse: bool) -> dict[str, Any]:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=30)
    config["tables"]["items"]["allow"][1]["sse"] = True
    if not collapse:
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
    return config


def _write(path: Path, config: dict[str, Any]) -> None:
    path.with_suffix(".next").write_text(yaml.safe_dump(config))
    path.with_suffix(".next").replace(path)


@pytest.mark.parametrize("collapse", [True, False], ids=["collapsed", "direct"])
async def test_a_request_waiting_for_admission_across_a_reload_is_authorised_again(
    real_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collapse: bool,
) -> None:
    config = _config(real_engine, idp_server, collapse=collapse)
    withdrawn = json.loads(json.dumps(config))
    withdrawn["tables"]["items"]["allow"] = [
        rule for rule in withdrawn["tables"]["items"]["allow"] if rule["name"] != "member"
    ]
    path = tmp_path / "proxy.yaml"
    _write(path, config)
    proxy = await make_proxy(
        load_config(path, environ), config_path=path, environ=environ, fast_lane=False
    )
    holder, admission = proxy.app.holder, proxy.app.admission
    token = proxy.tokens.make()
    _, handle, offset = await sync_through(proxy, token)
    admit = admission.admit
    reloads: list[int] = []
    next_id = iter(range(1000, 2000))

    async def admitted_across_a_reload(*args: Any, **kwargs: Any) -> Any:
        # (the reload lands while this request waits for its engine connection; a change
        # is written after it)
        if len(reloads) < cases:
            _write(path, withdrawn)
            assert holder.reload()
            reloads.append(1)
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (%s, 'org-a', 'after')", (next(next_id),))
        return await admit(*args, **kwargs)

    monkeypatch.setattr(admission, "admit", admitted_across_a_reload)
    where = f"/v1/shape?table=items&handle={handle}&offset={offset}"
    requests = {
        "catch-up": (where, {}),
        "long-poll": (f"{where}&live=true&cursor=5", {}),
        "sse": (f"{where}&live=true&live_sse=true", {"Accept": "text/event-stream"}),
    }
    cases = 0
    statuses: dict[str, int] = {}
    for name, (path_query, headers) in requests.items():
        _write(path, config)
        assert holder.reload()
        cases += 1
        async with proxy.client.get(
            path_query, headers={"Authorization": f"Bearer {token}", **headers}
        ) as resp:
            # (an SSE stream under the old rule stays open: its status says it all)
            status = resp.status
            body = b"" if status == 200 else await resp.read()
        assert len(reloads) == cases, name  # (the reload did land in its wait)
        statuses[name] = status
        if status == 403:
            assert json.loads(body)["code"] == "no_matching_rule", (name, body)
    assert statuses == {name: 403 for name in requests}


async def test_a_request_revoked_again_each_time_it_is_authorised_gets_a_503(
    proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Access revoked again each time the request is authorised again (a reload storm): it
    is not authorised for ever, nor sent under a withdrawn rule; a 503 to retry."""
    admission, forwarder = proxy.app.admission, proxy.app.forwarder
    admit = admission.admit

    async def admitted_across_a_revocation(*args: Any, **kwargs: Any) -> Any:
        forwarder.end_streams()  # (what a reload or an issuer's key dropped does)
        return await admit(*args, **kwargs)

    monkeypatch.setattr(admission, "admit", admitted_across_a_revocation)
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=proxy.tokens.make())
    assert reply.status == 503, reply.body
    assert reply.json()["code"] == "config_changing"
    assert reply.headers["Retry-After"] == "1"
    assert forwarder.revocations == REAUTHORISE_TRIES
    assert proxy.engine.requests == []
