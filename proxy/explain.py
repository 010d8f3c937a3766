"""`shape-proxy explain`: what the proxy would do with a token and a URL, for policy authors.

Runs the same code path as a request (token verification, query parsing, policy evaluation,
upstream URL building) without contacting the engine, and prints a JSON report with the
secret masked.

Secrets are not needed to explain a decision: `load_for_explain` gives every unset secret
variable a stand-in (the engine secret is masked in the report anyway), except the issuer's
key when a real `--token` must be verified with it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from proxy.auth.bearer import refuse_token_in_query
from proxy.auth.claims import mismatch_hint, unverified_summary
from proxy.config.loader import ConfigError, LoadedConfig, load_config
from proxy.errors import ProxyError, Unauthenticated
from proxy.http.params import check_as_the_engine, check_utf8, parse_shape_query
from proxy.http.routes import NAMED_PREFIX, route_of
from proxy.metrics import Metrics
from proxy.policy.evaluate import evaluate, why_no_rule
from proxy.runtime import RuntimeHolder
from proxy.upstream.client import make_session
from proxy.upstream.url import build_upstream_url, mask_url

#: Long enough for every HMAC algorithm's minimum key length (HS512: 64 bytes).
STAND_IN = "explain-stand-in-for-an-unset-secret-".ljust(64, "x")


class _WithStandIns(Mapping[str, str]):
    """The environment, with a stand-in value for every variable that is unset or empty."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        return self._environ.get(name) or STAND_IN

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def load_for_explain(
    path: str | Path, *, verify_tokens: bool, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """The config with unset secrets stood in; ConfigError if a token needs a missing key."""
    environ = os.environ if environ is None else environ
    loaded = load_config(path, _WithStandIns(environ))
    if verify_tokens:
        for i, issuer in enumerate(loaded.config.issuers):
            for j, key in enumerate(issuer.keys):
                if key.secret_env and not environ.get(key.secret_env):
                    raise ConfigError(
                        f"verifying --token needs the issuer's key: set {key.secret_env}"
                        f" (issuers.{i}.keys.{j}.secret_env), or explain with --claims"
                    )
    return loaded


async def explain(
    loaded: LoadedConfig, url: str, *, token: str | None, claims: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The decision report for `url` under `token` (verified) or raw `claims` (unverified)."""
    target = URL(url)
    route = route_of(target.raw_path)  # (as the proxy routes it: `/v1/shape/` is the shape's)
    report: dict[str, Any] = {"url": url}
    shape_name = None
    if route is not None and route.startswith(NAMED_PREFIX):
        shape_name = route.removeprefix(NAMED_PREFIX)
    elif route != "/v1/shape":
        report.update(allowed=False, status=404, reason="not_found")
        return report
    async with make_session(4) as session:
        holder = RuntimeHolder(loaded, session, Metrics())
        try:
            # The query as the proxy reads a request's (`proxy.http.wire.Request.query`), and
            # its checks in the proxy's order (`proxy.http.handlers._prepare`): escapes that
            # are not UTF-8 are the engine's 400, not a clause with U+FFFD in it (attack 05:30).
            raw_query = target.raw_query_string
            query = list(URL.build(query_string=raw_query, encoded=True).query.items())
            refuse_token_in_query(query)
            if token is not None:
                try:
                    claims = await holder.current.verifier.verify(token)
                except Unauthenticated as exc:
                    report.update(_refused_token(loaded, token, exc))
                    raise
            report["claims"] = dict(claims or {})
            check_utf8(raw_query)
            checked = check_as_the_engine(query) if shape_name is None else None
            decision = evaluate(
                loaded.policy,
                claims or {},
                parse_shape_query(query, checked),
                shape_name=shape_name,
                anonymous=token is None and not claims,
            )
            if decision.unless_engine_refuses is not None:
                # (the proxy refuses it unless the engine names another fault first)
                raise decision.unless_engine_refuses.copy()
        except ProxyError as exc:
            report.update(allowed=False, status=exc.status, reason=exc.reason, message=exc.message)
            if exc.reason == "no_matching_rule":
                report["rules"] = why_no_rule(
                    loaded.policy,
                    claims or {},
                    parse_shape_query(query),
                    shape_name=shape_name,
                    anonymous=token is None and not claims,
                )
            return report
    secret = loaded.upstream_secret
    upstream = build_upstream_url(
        loaded.config.upstream.url,
        decision,
        source_id=loaded.config.upstream.source_id,
        secret=secret.get_secret_value() if secret is not None else None,
    )
    report.update(
        allowed=True,
        table=decision.table,
        rule=decision.rule,
        where=decision.where,
        params=list(decision.params),
        columns=(
            decision.columns_text
            if decision.columns_text is not None
            else list(decision.columns)
            if decision.columns is not None
            else None
        ),
        shared=decision.shared,
        upstream_url=mask_url(upstream),
    )
    return report


def _refused_token(loaded: LoadedConfig, token: str, exc: Unauthenticated) -> dict[str, Any]:
    """What explains a refused `--token` (newuser MEDIUM: invalid_issuer alone hid the trailing
    slash): the token's unverified `iss`/`aud`/`alg`/`kid`/`typ` and times (`iat`/`nbf`/`exp`,
    `lifetime`) and the clock's `now` beside the config's accepted issuers, audiences,
    algorithms, `max_lifetime` and `leeway` (newuser LOW: a 7-day token's refusal showed none
    of them), and a hint when an issuer or audience differs only by a slash or case.
    Local tool, the caller holds the token: never the token or its signature, and the
    proxy's 401 body stays as it was (an anonymous client learns nothing of the config)."""
    shown = unverified_summary(token)
    issuers = loaded.config.issuers
    accepted = [
        {
            "issuer": cfg.issuer,
            "audience": list(cfg.audience),
            "algorithms": list(cfg.algorithms),
            "max_lifetime": cfg.max_lifetime if cfg.max_lifetime is not None else "unlimited",
            "leeway": cfg.leeway,
        }
        for cfg in issuers
    ]
    # (`now`: the token's times are read against this clock, as the proxy's)
    extra: dict[str, Any] = {"token": shown, "now": int(time.time()), "accepted": accepted}
    hint = None
    if exc.reason == "invalid_issuer":
        hint = mismatch_hint(shown.get("iss"), [cfg.issuer for cfg in issuers], "iss")
    elif exc.reason == "invalid_audience":
        audiences = [
            aud for cfg in issuers if cfg.issuer == shown.get("iss") for aud in cfg.audience
        ]
        hint = mismatch_hint(shown.get("aud"), audiences, "aud")
    if hint is not None:
        extra["hint"] = hint
    return extra


def format_report(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
