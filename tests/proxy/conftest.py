"""Fixtures: a fake engine, a fake identity provider, a configured proxy, signed tokens.

Every response the `proxy` helper returns and every log record captured during a test is
checked for the engine secret and for the raw tokens the test issued: neither may ever leak.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import yaml
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from yarl import URL

import proxy.http.fastlane as fastlane
from proxy.app import ProxyApp, create_app
from proxy.config.loader import LoadedConfig, build_config, load_config
from proxy.http.serve import Server
from proxy.logs import JsonFormatter
from tests.proxy.proxy_fakes import AUDIENCE, ISSUER, FakeEngine, FakeIdp, KeyPair, base_config, now
from tests.proxy.real_proxies import ITEMS_SQL
from tests.support.engine_process import EngineProcess


@pytest.fixture(scope="session")
def signing_key() -> KeyPair:
    return KeyPair.generate("key-1")


@pytest.fixture(scope="session")
def other_key() -> KeyPair:
    return KeyPair.generate("key-2")


@pytest.fixture
def engine_secret() -> str:
    return "engine-secret-" + secrets.token_hex(16)


@pytest.fixture
def start_engine(
    db_url: str, tmp_path: Path, engine_secret: str
) -> Iterator[Callable[..., EngineProcess]]:
    """`start_engine(*setup_sql)`: run the statements on the test database, then start a real
    `sync-engine` on it (the test's secret, 1 s long-polls unless `args` say otherwise);
    stopped at teardown."""
    started: list[EngineProcess] = []

    def start(
        *setup_sql: str, args: tuple[str, ...] = ("--long-poll-timeout", "1")
    ) -> EngineProcess:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for statement in setup_sql:
                conn.execute(statement)
        engine = EngineProcess(db_url, tmp_path / "data", "--secret", engine_secret, *args)
        started.append(engine)
        engine.start()
        return engine

    yield start
    for engine in started:
        engine.stop()


@pytest.fixture
def items_engine(start_engine: Callable[..., EngineProcess]) -> EngineProcess:
    """A real `sync-engine` (its default 20 s long-polls) on the `items` table
    (`real_proxies.ITEMS_SQL`)."""
    return start_engine(*ITEMS_SQL, args=("--no-fsync",))


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def engine_server(engine: FakeEngine, aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(engine.app(), access_log=None)


@pytest.fixture
def idp(signing_key: KeyPair) -> FakeIdp:
    return FakeIdp(keys=[signing_key])


@pytest.fixture
async def idp_server(idp: FakeIdp, aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(idp.app(), access_log=None)


@dataclass
class Tokens:
    """Issues RS256 tokens; remembers them so tests can check none leaked."""

    key: KeyPair
    issued: list[str] = field(default_factory=list)

    def make(
        self,
        *,
        key: KeyPair | None = None,
        headers: dict[str, Any] | None = None,
        algorithm: str = "RS256",
        signing_key: Any = None,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        key = key or self.key
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now(),
            "exp": now() + 600,
            "role": "member",
            "org_id": "org-a",
        }
        payload.update(claims)
        for name in drop:
            payload.pop(name, None)
        hdrs = {"kid": key.kid, **(headers or {})}
        token = jwt.encode(
            payload,
            signing_key if signing_key is not None else key.private,
            algorithm=algorithm,
            headers=hdrs,
        )
        self.issued.append(token)
        return token


@pytest.fixture
def tokens(signing_key: KeyPair) -> Tokens:
    return Tokens(signing_key)


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class ProxyTestServer(BaseTestServer):
    """The proxy's own server (`proxy.http.serve`) on a free port, for aiohttp's TestClient."""

    def __init__(self, app: ProxyApp) -> None:
        super().__init__()
        self.app = app
        self._server: Server | None = None

    @property
    def started(self) -> bool:
        return self._server is not None

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self._server is not None:
            return
        await self.app.start()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        self._server = Server(self.app)
        await self._server.start([sock])
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def _make_runner(self, **kwargs: Any) -> Any:
        raise NotImplementedError("the proxy has its own server")

    async def close(self) -> None:
        if self._server is not None and not self._closed:
            self._closed = True
            await self._server.shutdown(timeout=1.0)
            await self.app.stop()


@dataclass
class ProxyHarness:
    client: TestClient
    app: ProxyApp
    engine: FakeEngine
    secret: str
    tokens: Tokens
    #: The config file it runs from and what the test writes there (`reloadable_proxy`).
    path: Path | None = None
    config: dict[str, Any] | None = None

    def write_config(self) -> None:
        """Write `config` to its file as an operator does (a new file renamed over the old):
        the proxy's poll reloads it (`server.reload_interval`), or `reload` does now."""
        assert self.path is not None and self.config is not None, "not a reloadable_proxy"
        written = self.path.with_suffix(".next")
        written.write_text(yaml.safe_dump(self.config))
        os.replace(written, self.path)

    def reload(self) -> None:
        """`write_config`, then reload it at once (as the poll would)."""
        self.write_config()
        assert self.app.holder.reload()

    def withdraw(self, rule: str, table: str = "items") -> None:
        """Drop `table`'s allow rule named `rule` from `config` (`write_config` writes it)."""
        assert self.config is not None, "not a reloadable_proxy"
        allow = self.config["tables"][table]["allow"]
        allow[:] = [kept for kept in allow if kept.get("name") != rule]

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.client.request(
            method, path, headers=hdrs, data=data, skip_auto_headers=("Accept-Encoding",)
        ) as resp:
            body = await resp.read()
            reply = Reply(resp.status, resp.headers, body)
        self.assert_clean(reply)
        return reply

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def raw_get(self, target: str, token: str) -> Reply:
        """Send the request target byte for byte (the client library would normalise it)."""
        import asyncio

        server = self.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        from multidict import CIMultiDict

        pairs = [line.split(": ", 1) for line in lines[1:]]
        headers: CIMultiDict[str] = CIMultiDict((name, value) for name, value in pairs)
        reply = Reply(int(lines[0].split()[1]), headers, body)
        self.assert_clean(reply)
        return reply

    def assert_clean(self, reply: Reply) -> None:
        text = reply.body.decode("latin-1") + repr(list(reply.headers.items()))
        assert self.secret not in text
        for token in self.tokens.issued:
            assert token not in text


@pytest.fixture
def environ(engine_secret: str) -> dict[str, str]:
    return {"ENGINE_SECRET": engine_secret}


@pytest.fixture
def config_data(engine_server: TestServer, idp_server: TestServer) -> dict[str, Any]:
    return base_config(str(engine_server.make_url("")), str(idp_server.make_url("/jwks.json")))


@pytest.fixture
def loaded(config_data: dict[str, Any], environ: dict[str, str]) -> LoadedConfig:
    return build_config(config_data, environ)


@pytest.fixture
def make_proxy(
    aiohttp_client: Any, aiohttp_server: Any, engine: FakeEngine, engine_secret: str, tokens: Tokens
) -> Callable[..., Any]:
    async def make(loaded: LoadedConfig, **kwargs: Any) -> ProxyHarness:
        app = create_app(loaded, **kwargs)
        client = await aiohttp_client(ProxyTestServer(app), auto_decompress=False)
        return ProxyHarness(client, app, engine, engine_secret, tokens)

    return make


@pytest.fixture
def reloadable_proxy(
    make_proxy: Callable[..., Any], environ: dict[str, str], tmp_path: Path
) -> Callable[..., Awaitable[ProxyHarness]]:
    """`await reloadable_proxy(config, name="proxy", **create_app_kwargs)`: a proxy run from a
    real config file (`tmp_path/<name>.yaml`) written from `config`, a dict the test may
    change and write again (`ProxyHarness.write_config`, `reload`, `withdraw`)."""

    async def make(config: dict[str, Any], name: str = "proxy", **kwargs: Any) -> ProxyHarness:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        harness: ProxyHarness = await make_proxy(
            load_config(path, environ), config_path=path, environ=environ, **kwargs
        )
        harness.path, harness.config = path, config
        return harness

    return make


@pytest.fixture
def fast_lane_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The raw paths of the requests the fast lane (`proxy.http.fastlane`) took."""
    taken: list[str] = []
    start = fastlane.start

    def spy(app: Any, request: Any, client: Any) -> Any:
        answer = start(app, request, client)
        if answer is not None:
            taken.append(request.raw_path)
        return answer

    monkeypatch.setattr(fastlane, "start", spy)
    return taken


@pytest.fixture
async def proxy(
    make_proxy: Callable[..., Any], loaded: LoadedConfig
) -> AsyncIterator[ProxyHarness]:
    yield await make_proxy(loaded)


@pytest.fixture(autouse=True)
def no_secret_in_logs(
    caplog: pytest.LogCaptureFixture, engine_secret: str, tokens: Tokens
) -> Iterator[None]:
    """After each test: no captured log line holds the engine secret or an issued token.

    Checks the raw message too, so the test does not lean on the formatter's redaction.
    """
    caplog.set_level(logging.DEBUG)
    yield
    formatter = JsonFormatter()
    for record in caplog.records:
        for line in (formatter.format(record), record.getMessage(), repr(record.__dict__)):
            assert engine_secret not in line, line
            for token in tokens.issued:
                assert token not in line, line


@dataclass
class YamlProxies:
    """`proxy_from_yaml`: a proxy run from a real config file, as an operator writes one."""

    make_proxy: Callable[..., Awaitable[ProxyHarness]]
    environ: dict[str, str]
    tmp_path: Path
    jwks_url: str

    def head(self, engine_url: str) -> str:
        """The `upstream` and `issuers` YAML for the engine at `engine_url` and the test's
        identity provider (RS256 tokens from `tokens`): a test adds its `tables:`."""
        return (
            f'upstream: {{url: "{engine_url}", secret_env: ENGINE_SECRET, '
            "first_byte_timeout: 10}\n"
            "issuers:\n"
            f'  - issuer: "{ISSUER}"\n'
            f'    audience: "{AUDIENCE}"\n'
            "    algorithms: [RS256]\n"
            f'    jwks_url: "{self.jwks_url}"\n'
        )

    def write(self, config: str | dict[str, Any], name: str = "proxy") -> Path:
        """`config` (YAML text as is, a dict dumped) written to `tmp_path/<name>.yaml`."""
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        return path

    def load(self, config: str | dict[str, Any], name: str = "proxy") -> LoadedConfig:
        """`write`, then `load_config` (raises its `ConfigError`)."""
        return load_config(self.write(config, name), self.environ)

    async def __call__(
        self, config: str | dict[str, Any], name: str = "proxy", **kwargs: Any
    ) -> ProxyHarness:
        """`write`, `load_config`, then the real proxy (`make_proxy`, `create_app`'s
        `kwargs`) running from that file (its poll and SIGHUP reload it)."""
        path = self.write(config, name)
        harness = await self.make_proxy(
            load_config(path, self.environ), config_path=path, environ=self.environ, **kwargs
        )
        harness.path = path
        return harness


@pytest.fixture
def proxy_from_yaml(
    make_proxy: Callable[..., Awaitable[ProxyHarness]],
    environ: dict[str, str],
    tmp_path: Path,
    idp_server: TestServer,
) -> YamlProxies:
    """`await proxy_from_yaml(text_or_dict)`: YAML written to a file in `tmp_path`, loaded
    by `load_config`, and the real proxy made from it; `.head(engine.url)` gives a config's
    `upstream` and `issuers`, `.load(text)` only loads (a test of a load error)."""
    return YamlProxies(make_proxy, environ, tmp_path, str(idp_server.make_url("/jwks.json")))
