"""Table names in the policy are read as the engine and Postgres read them.

The proxy downcased every letter of an unquoted key, Postgres only the ASCII ones (in a UTF-8
database `CREATE TABLE Ärzte` makes `Ärzte`): the pattern `public.Äp*` (meant for `Äpfel`...)
served `äpfel`, a table the policy never listed; and the exact key `Ärzte` was the proxy's
rule for a table `ärzte` while the engine, sent the key as written, refused it. Now a pattern's
unquoted parts downcase ASCII letters only, and an exact key is read by the engine's own
parser (unquoted `Ärzte` is a load error there: quote it). Real proxy, engine and Postgres.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from proxy.config.loader import ConfigError, build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        'CREATE TABLE "Ärzte" (id int PRIMARY KEY, org_id text NOT NULL, name text)',
        "INSERT INTO \"Ärzte\" VALUES (1, 'org-a', 'ours'), (2, 'org-b', 'theirs')",
        'CREATE TABLE "Ämter" (id int PRIMARY KEY, name text)',
        "INSERT INTO \"Ämter\" VALUES (1, 'amt')",
        'CREATE TABLE "äpfel" (id int PRIMARY KEY, secret text)',
        "INSERT INTO \"äpfel\" VALUES (1, 'never listed')",
    )


async def _get(proxy: Any, table: str, token: str) -> tuple[int, Any]:
    reply = await proxy.get(f"/v1/shape?table={quote(table)}&offset=-1", token=token)
    body = reply.json()
    if reply.status == 200:
        return 200, sorted(m["value"]["id"] for m in body if "value" in m)
    return reply.status, body.get("code", body)


async def test_unquoted_names_downcase_ascii_letters_only(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["shapes"] = {}
    config["tables"] = {
        '"Ärzte"': {"allow": [{"all_rows": True}]},
        "public.Äm*": {"allow": [{"all_rows": True}]},
        "public.Äp*": {"allow": [{"all_rows": True}]},
    }
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    assert await _get(proxy, '"äpfel"', member) == (403, "table_not_allowed")
    assert await _get(proxy, '"Ämter"', member) == (200, ["1"])  # its pattern
    assert await _get(proxy, '"Ärzte"', member) == (200, ["1", "2"])  # its own rule
    # Unquoted, the engine refuses the name: so does the config, saying to quote it.
    config["tables"] = {"Ärzte": {"allow": [{"all_rows": True}]}}
    with pytest.raises(ConfigError, match=r"Invalid unquoted identifier .*quote a name"):
        build_config(config, environ)
