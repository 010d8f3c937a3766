"""In-process stand-ins for the engine and an identity provider, used by the proxy tests.

`FakeEngine` speaks enough of Electric's `/v1/shape` wire protocol for a proxy to be
exercised end to end: initial responses with `electric-*` headers and `public` caching,
long-poll holds, SSE streams, gzip bodies, 409s. It records every request it receives, and
whether the request's handler was cancelled (the client, i.e. the proxy, went away).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from yarl import URL

ISSUER = "https://issuer.test/"
AUDIENCE = "shapegate"
ORIGIN = "https://app.test"


@dataclass
class Seen:
    method: str
    url: URL
    headers: Any
    body: bytes


@dataclass
class FakeEngine:
    """Behaviour knobs are plain attributes; tests flip them."""

    requests: list[Seen] = field(default_factory=list)
    cancelled: list[URL] = field(default_factory=list)
    hold: float = 0.2  # long-poll hold (the real engine holds 20 s)
    delay_headers: float = 0.0  # delay before any response (slow engine)
    status: int = 200
    gzip_body: bool = False
    body_size: int = 0  # > 0: non-live answers carry a body of about this many bytes
    handle: str = "h-1"  # the shape's current handle (tests rotate it)
    health: tuple[int, str] = (200, "active")
    started: asyncio.Event = field(default_factory=asyncio.Event)
    #: When set to an Event: an SSE answer's first event is written, then the rest only once
    #: it is set (a test can see the first event arrive before the engine wrote the others).
    sse_gate: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v1/shape", self.shape)
        app.router.add_get("/v1/health", self.health_check)
        return app

    async def health_check(self, request: web.Request) -> web.Response:
        self.requests.append(Seen(request.method, request.url, request.headers.copy(), b""))
        status, state = self.health
        return web.json_response(
            {"status": state},
            status=status,
            headers={"cache-control": "no-cache, no-store, must-revalidate"},
        )

    async def shape(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen(request.method, request.url, request.headers.copy(), body))
        self.started.set()
        try:
            return await self._respond(request, body)
        except asyncio.CancelledError:
            self.cancelled.append(request.url)
            raise

    async def _respond(self, request: web.Request, body: bytes) -> web.StreamResponse:
        q = request.query
        if self.delay_headers:
            await asyncio.sleep(self.delay_headers)
        if request.method == "DELETE":
            return web.Response(status=202, headers={"cache-control": "no-cache"})
        headers = {
            "electric-handle": self.handle,
            "electric-offset": "0_0",
            "electric-server": "fake",
            "access-control-allow-origin": "*",
            "content-type": "application/json",
        }
        if self.status == 409:
            headers["cache-control"] = "public, max-age=60, must-revalidate"
            return web.Response(
                status=409, text='[{"headers":{"control":"must-refetch"}}]', headers=headers
            )
        if self.status != 200:
            headers["cache-control"] = "no-store"
            headers["retry-after"] = "5"
            return web.Response(status=self.status, text='{"message":"nope"}', headers=headers)
        live = q.get("live") not in (None, "false")
        if live:
            headers["electric-cursor"] = "123"
        if live and q.get("live_sse") not in (None, "false"):
            headers.update(
                {"content-type": "text/event-stream", "cache-control": "public, max-age=59"}
            )
            resp = web.StreamResponse(headers=headers)
            await resp.prepare(request)
            for i in range(3):
                await resp.write(f'data: {{"n":{i}}}\n\n'.encode())
                if i == 0 and self.sse_gate is not None:
                    await self.sse_gate.wait()
                await asyncio.sleep(self.hold / 3)
            return resp
        if live:
            await asyncio.sleep(self.hold)
            headers["cache-control"] = "public, max-age=5, stale-while-revalidate=5"
            headers["electric-up-to-date"] = ""
            payload = b'[{"headers":{"control":"up-to-date"}}]'
        else:
            headers["electric-schema"] = '{"id":{"type":"int4"}}'
            headers["etag"] = f'"{self.handle}:{q.get("offset")}:0_0"'
            if request.headers.get("if-none-match") == headers["etag"]:
                return web.Response(status=304, headers=headers)
            headers["cache-control"] = (
                "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
            )
            headers["vary"] = "Accept-Encoding"
            rows = [
                {
                    "key": f'"public"."items"/"{i}"',
                    "value": {"id": str(i)},
                    "headers": {"operation": "insert"},
                }
                for i in range(3)
            ]
            if self.body_size:
                filler = "x" * 1000
                rows = [
                    {"key": f'"public"."items"/"{i}"', "value": {"id": str(i), "title": filler},
                     "headers": {"operation": "insert"}}
                    for i in range(self.body_size // 1050 + 1)
                ]  # fmt: skip
            payload = json.dumps([*rows, {"headers": {"control": "up-to-date"}}]).encode()
        if self.gzip_body:
            payload = gzip.compress(payload)
            headers["content-encoding"] = "gzip"
        return web.Response(body=payload, headers=headers)


@dataclass
class KeyPair:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str) -> KeyPair:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        return jwk


@dataclass
class FakeIdp:
    """Serves a JWKS document whose keys tests can rotate; can be taken down."""

    keys: list[KeyPair]
    fetches: int = 0
    down: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks.json", self.jwks)
        return app

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.Response(status=503)
        return web.json_response({"keys": [k.public_jwk() for k in self.keys]})


def now() -> int:
    return int(time.time())


def base_config(upstream_url: str, jwks_url: str) -> dict[str, Any]:
    """The policy most tests run under: members see their org's rows, admins everything."""
    return {
        "upstream": {
            "url": upstream_url,
            "source_id": "src-1",
            "secret_env": "ENGINE_SECRET",
            "connect_timeout": 1,
            "first_byte_timeout": 3,
            "retry_after": 2,
        },
        "issuers": [
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "algorithms": ["RS256"],
                "jwks_url": jwks_url,
                "leeway": 5,
                "max_lifetime": 7200,
                "jwks_refetch_cooldown": 0.5,
            }
        ],
        "cors": {"allow_origins": [ORIGIN]},
        # (the tests read /metrics and /healthz's errors from loopback: opted in)
        "metrics": {"allow_loopback": True},
        "tables": {
            "items": {
                "deny": [{"when": {"suspended": True}, "reason": "suspended account"}],
                "allow": [
                    {
                        "name": "admin",
                        "when": {"role": "admin"},
                        "all_rows": True,
                        "client_where": "validated",
                        "replica_full": True,
                    },
                    {
                        "name": "member",
                        "when": {"role": ["member", "editor"]},
                        "where": "org_id = {{org_id}}",
                        "columns": ["id", "org_id", "title"],
                        "client_where": "validated",
                    },
                ],
            },
            "notes": {
                "allow": [
                    {"where": "owner = {{sub}}", "columns": ["id", "owner", "body"], "sse": False}
                ]
            },
        },
        "shapes": {
            "my-items": {
                "table": "items",
                "allow": [
                    {"where": "org_id = {{org_id}} AND owner = {{sub}}", "columns": ["id", "title"]}
                ],
            }
        },
    }
