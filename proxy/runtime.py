"""The live configuration of a running proxy and its reloading.

`Runtime` bundles what a request needs from the config (policy, verifier, upstream
settings); it is immutable, and `RuntimeHolder.current` is swapped atomically on reload, so a
request keeps the runtime it started with. A reload that fails leaves the current runtime in
place and records why (logged, counted, shown on /healthz).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from proxy.auth.claims import Issuer, KeySource, StaticKeys, TokenVerifier
from proxy.auth.jwks import JwksCache
from proxy.config.loader import (
    MAX_CONFIG_BYTES,
    ConfigError,
    LoadedConfig,
    load_config,
    read_regular_file,
)
from proxy.config.model import AccessRule, ProxyConfig, TablePolicy
from proxy.errors import BadShapeRequest
from proxy.limits.config import LimitSettings
from proxy.limits.upstream import secret_forms, secret_marker
from proxy.metrics import Metrics, metrics_exposure
from proxy.policy.blame import PolicyWhere
from proxy.policy.sql import CombinedWhere
from proxy.upstream.client import UpstreamOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """The outcome of auth + policy for one (token, shape request): where to send it.

    Cached per runtime so a client repeating a request (every long-poll of a shape repeats
    its definition) skips token verification, query parsing, policy evaluation and URL
    building. Valid until the token expires and never longer than the verified-token cache
    would keep the token; a reload starts with an empty cache.
    """

    url: URL
    url_text: str
    subject: str | None
    #: Who is asking, for per-principal limits: see `principal_of`.
    principal: str
    table: str
    rule: str
    live: bool
    sse: bool
    #: Every caller gets the same answer (the rule does not depend on who asks).
    shared: bool
    #: The shape's `upstream.url.definition_key`, the handle the client named (not at
    #: offset=-1/now), and whether it asked for offset=-1/now: for cache coherence.
    definition: str
    handle: str | None
    initial: bool
    expires: float  # the token's exp (wall clock), or the cache TTL when anonymous
    #: The token's `exp` (wall clock); None for an anonymous request. A live answer (an SSE
    #: stream) is not given past it.
    token_exp: float | None = None
    #: The token's `exp` plus its issuer's leeway (wall clock): until then a new request
    #: with it is accepted; a non-live answer whose headers come later is authorised again
    #: (`upstream.forward.Target.answer_by`). None for an anonymous request.
    token_until: float | None = None
    #: The per-principal limits of the rule that allowed it (`proxy.limits`).
    limits: LimitSettings = field(default_factory=LimitSettings)
    #: Set when a GET subset was too long for the engine's URL limit: it goes as a POST body.
    upstream_body: bytes | None = None
    #: The engine GET's request line and Host header, and its connection pool's key, made
    #: once per decision (`proxy.http.fastlane` sends it as is).
    request_line: str = ""
    pool_key: tuple[str, int, bool] = ("", 0, False)
    #: A client's where ANDed with the enforced one: the engine's 400s about it are put
    #: back in the client's terms (`proxy.http.handlers.finish`). Such a request is kept in
    #: `Runtime.remapped`, not `Runtime.prepared`, so the fast lane (which relays the
    #: engine's errors as they are) never takes it.
    combined: CombinedWhere | None = None
    #: The columns the rule shows (None: all): the engine's refusal of a shape without its
    #: primary key is said in the rule's terms when the rule hides a key column.
    rule_columns: tuple[str, ...] | None = None
    #: A subset snapshot (a POST, or a GET with `subset__*`): its engine answer is waited for
    #: as long as the engine's subset query may run (`upstream.forward.subset_wait`).
    subset: bool = False
    #: `Decision.unless_engine_refuses`: the client's answer unless the engine's is a 400.
    #: Such a request is never remembered (the fast lane relays a 200 as it is) nor cached.
    unless_engine_refuses: BadShapeRequest | None = None
    #: The `columns` sent are the client's `queryable_columns` (it sent no `columns`): the
    #: engine's refusals of them are said under `queryable_columns`, as the engine says them.
    columns_are_queryable: bool = False
    #: The rule's enforced filter went in `where`: the engine's 400s located in it are the
    #: policy's, never shown as they are (`proxy.http.handlers.blame_policy_where`).
    policy_where: PolicyWhere | None = None
    #: Set on a decision kept for every request of one kind of position (`proxy.http.
    #: positions`: a live follower's offsets and cursors): the kind, and the engine request
    #: line and URL as templates the values go into (`positions.instantiate`; the fast lane
    #: puts them into `line_template` itself). Its `url` is empty, its `url_text` and
    #: `request_line` too, and its `handle` that of the request it was made for: never sent.
    kind: str | None = None
    line_template: str = ""
    url_template: str = ""


#: (token digest, named shape or "", raw query string), or (token digest, named shape or "",
#: the query without its position parameters, their kind) for a template
#: (`proxy.http.positions`): the two never compare equal.
PreparedKey = tuple[bytes, str, str] | tuple[bytes, str, str, str]


class PreparedCache(OrderedDict[PreparedKey, Prepared]):
    """At most `maxsize` prepared requests, least recently used forgotten first: what
    `cachetools.LRUCache` kept, for `get`, `[key] = ...`, `clear` and `len`.

    Why not that class: its hit is three Python-level calls (`__getitem__`, the base class's,
    `__touch`). Here a hit read as `cache[key]` and then `cache.move_to_end(key)` is two C
    calls (the fast lane, `proxy.http.fastlane`, reads it that way on every request); `get`
    does the same in one Python call."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def get(self, key: PreparedKey, default: Any = None) -> Any:
        """The entry, marked used now (as a hit is), or `default`."""
        try:
            value = self[key]
        except KeyError:
            return default
        self.move_to_end(key)
        return value

    def __setitem__(self, key: PreparedKey, value: Prepared) -> None:
        if key in self:
            super().__setitem__(key, value)
            self.move_to_end(key)
            return
        while len(self) >= self.maxsize:
            self.popitem(last=False)
        super().__setitem__(key, value)


ANONYMOUS = "anonymous"

#: A config file's (mtime_ns, size, inode, ctime_ns): any write changes it.
Stamp = tuple[int, int, int, int]

#: No stamp pending (`RuntimeHolder.poll_once`; None is a stamp: the file is missing).
_NOTHING = object()

#: How often the key sets are checked for their TTL (`RuntimeHolder.watching`), seconds.
KEYS_POLL_INTERVAL = 1.0


def _exposure(loaded: LoadedConfig) -> str:
    metrics = loaded.config.metrics
    return metrics_exposure(metrics.token_env, metrics.allow_loopback)


_CLIENT_WHERE = ("forbid", "validated", "passthrough")
_ABILITIES = ("anonymous", "subset", "replica_full", "sse", "delete")


def _same_access(old: LoadedConfig, new: LoadedConfig) -> bool:
    """Whether a reload grants exactly what the loaded config granted: the same settings and
    rules (the policy is compiled from them alone), the same resolved static keys, engine
    secret and metrics token. Then nothing authorised before may have been withdrawn, and
    held live answers are not ended (`RuntimeHolder._apply`). Anything else, narrower,
    wider or only different, ends them as before (`on_revoke`)."""
    return (
        new.config == old.config
        and new.static_keys == old.static_keys
        and new.upstream_secret == old.upstream_secret
        and new.metrics_token == old.metrics_token
    )


def widened(old: ProxyConfig, new: ProxyConfig) -> list[str]:
    """What a rule of `new` certainly admits that the same rule (same table or shape, same
    name) of `old` did not: more columns, no row filter, fewer `when` claims, more allowed
    (anonymous, a client where, subset, replica=full, SSE, DELETE); and a deny rule gone.
    Each item is a widening; not every widening is found (a changed `where`, new rules and
    tables, unnamed rules are not compared): no item does not mean "not wider"."""
    out: list[str] = []
    for kind, olds, news in (
        ("tables", old.tables, new.tables),
        ("shapes", old.shapes, new.shapes),
    ):
        for name, policy in news.items():
            before: TablePolicy | None = olds.get(name)
            if before is None:
                continue
            where = f"{kind}.{name}"
            if any(rule not in policy.deny for rule in before.deny):
                out.append(f"{where}: a deny rule was removed")
            rules = {rule.name: rule for rule in before.allow if rule.name is not None}
            for rule in policy.allow:
                if rule.name in rules:
                    said = _rule_widened(rules[rule.name], rule)
                    out += [f"{where} rule {rule.name!r} {item}" for item in said]
    return out


def _rule_widened(old: AccessRule, new: AccessRule) -> list[str]:
    out = []
    if old.columns is not None:
        if new.columns is None:
            out.append("shows every column (was " + ", ".join(old.columns) + ")")
        elif more := [c for c in new.columns if c not in old.columns]:
            out.append("shows more columns: " + ", ".join(more))
    if not old.all_rows and new.all_rows:
        out.append("no longer filters rows")
    if dropped := [claim for claim in old.when if claim not in new.when]:
        out.append("no longer requires the claims " + ", ".join(dropped))
    if _CLIENT_WHERE.index(new.client_where) > _CLIENT_WHERE.index(old.client_where):
        out.append(f"takes client_where {new.client_where} (was {old.client_where})")
    out += [f"now allows {name}" for name in _ABILITIES
            if getattr(new, name) and not getattr(old, name)]  # fmt: skip
    return out


def principal_of(claims: Mapping[str, Any]) -> str:
    """A stable name for who is asking: `<iss> <sub>` for a token, "anonymous" without one.

    The issuer is part of it because two issuers may hand out the same `sub`.
    """
    sub = claims.get("sub")
    if sub is None:
        return ANONYMOUS
    return f"{claims.get('iss', '')} {sub}"


@dataclass(frozen=True)
class Runtime:
    """One loaded configuration, ready to serve requests."""

    loaded: LoadedConfig
    verifier: TokenVerifier
    loaded_at: float
    options: UpstreamOptions
    #: `PreparedKey` -> Prepared, for GET requests.
    prepared: PreparedCache | None
    #: The same, for the requests whose engine errors are remapped (`Prepared.combined`).
    remapped: PreparedCache | None = None
    #: Origin header (None: none) -> `ProxyApp.cors_for`'s answer under this config, for the
    #: fast lane (`proxy.http.fastlane`; bounded there): the answer depends on nothing else.
    fast_cors: dict[str | None, tuple[bool, Mapping[str, str] | None]] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: Rules already named in a WARNING under this config (`handlers.name_the_rule`).
    warned_rules: set[str] = field(default_factory=set, compare=False, repr=False)
    #: (token digest, named shape or "", whole query) -> (a template, its decision for that
    #: query): the last `INSTANCES` made (`proxy.http.handlers._prepare_get`). Every live
    #: follower of a shape at its tip asks the same query, and each held request kept its
    #: own copy of the same decision (~1.3 KB: engine URL, request line) where the whole-query
    #: entry had been one object for all of them.
    instances: OrderedDict[tuple[bytes, str, str], tuple[Prepared, Prepared]] = field(
        default_factory=OrderedDict, compare=False, repr=False
    )


#: `Runtime.instances`' bound (a few hundred KB at most).
INSTANCES = 512


class RuntimeHolder:
    """Owns the current `Runtime`, the JWKS caches that survive reloads, and reloading."""

    def __init__(
        self,
        loaded: LoadedConfig,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        path: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._jwks: dict[str, JwksCache] = {}
        self.path = path
        self._environ = environ
        self.last_error: str | None = None
        #: A reload in a worker thread (`reload_off_loop`), and whether another was asked for.
        self._reloading: asyncio.Future[bool] | None = None
        self._reload_again = False
        self._tasks: set[asyncio.Task[bool]] = set()
        self._file_stamp = self._stamp()
        #: The stamp the last poll saw differ from the loaded file's (`poll_once`).
        self._pending: object = _NOTHING
        self.current = self._build(loaded)
        logger.info("%s", _exposure(loaded))
        #: Called when access granted before may be withdrawn (a reload, an issuer's key
        #: dropped or changed): live answers authorised under the old state end (the app
        #: ends its shared SSE streams: their clients reconnect and are authorised again).
        self.on_revoke: list[Callable[[], None]] = []
        #: Called after a reload that changed the `cache:` section: answers kept under the
        #: old settings (their client-facing Cache-Control made with its `max_age_cap`, their
        #: lifetime with its `live_max_age`) must not be served under the new ones.
        self.on_cache_changed: list[Callable[[], None]] = []

    def _revoked(self) -> None:
        for callback in self.on_revoke:
            try:
                callback()
            except Exception:  # (a bug in one must not stop the reload)
                logger.exception("ending live answers after a config or key change failed")

    def _build(self, loaded: LoadedConfig) -> Runtime:
        issuers = []
        jwks: dict[str, JwksCache] = {}
        for cfg in loaded.config.issuers:
            source: KeySource
            if cfg.jwks_url is not None:
                cache = self._jwks.get(cfg.jwks_url) or self._new_jwks(cfg.jwks_url)
                cache.configure(
                    ttl=cfg.jwks_ttl,
                    refetch_cooldown=cfg.jwks_refetch_cooldown,
                    timeout=cfg.jwks_timeout,
                )
                jwks[cfg.jwks_url] = cache
                source = cache
            else:
                source = StaticKeys(loaded.static_keys[cfg.issuer])
            issuers.append(Issuer(config=cfg, keys=source))
        self._jwks = jwks
        server = loaded.config.server
        verifier = TokenVerifier(
            issuers,
            cache_size=server.token_cache_size,
            cache_ttl=server.token_cache_ttl,
            on_cache=self._metrics.token_cache_lookup,
        )
        upstream = loaded.config.upstream
        secret = loaded.upstream_secret
        value = None if secret is None else secret.get_secret_value()
        forms, marker = secret_forms(value), secret_marker(value)
        options = UpstreamOptions(
            connect_timeout=upstream.connect_timeout,
            first_byte_timeout=upstream.first_byte_timeout,
            retry_after=upstream.retry_after,
            max_age_cap=loaded.config.cache.max_age_cap,
            collapse=loaded.config.collapse,
            cache=loaded.config.cache.max_bytes > 0,
            live_max_age=loaded.config.cache.live_max_age,
            secret_forms=forms,
            secret_bytes=tuple(form.encode() for form in forms),
            secret_marker=marker,
            secret_marker_bytes=b"" if marker is None else marker.encode(),
        )
        # An LRU, not a TTL cache: each entry carries its own expiry (`Prepared.expires`),
        # checked on use, and an LRU lookup is several times cheaper on this per-request path.
        size = server.token_cache_size
        return Runtime(
            loaded=loaded,
            verifier=verifier,
            loaded_at=time.time(),
            options=options,
            prepared=PreparedCache(size) if size else None,
            remapped=PreparedCache(size) if size else None,
        )

    def _new_jwks(self, url: str) -> JwksCache:
        cache = JwksCache(url, self._session, on_fetch=self._metrics.jwks_fetch)
        cache.on_keys_changed(self._keys_changed)
        return cache

    def _keys_changed(self) -> None:
        """An issuer dropped or changed a key: forget every token verified so far, and every
        request prepared from one, so a token signed by that key is checked again (and
        refused) on its next request. Tokens of the keys still there verify again."""
        runtime = self.current
        runtime.verifier.forget()
        for cache in (runtime.prepared, runtime.remapped):
            if cache is not None:
                cache.clear()
        self._revoked()

    async def refresh_keys(self) -> None:
        """Refetch the key sets older than their TTL (`JwksCache.refresh_if_due`)."""
        for cache in list(self._jwks.values()):
            await cache.refresh_if_due()

    def _stamp(self) -> Stamp | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def _read_whole(self, path: Path) -> tuple[bytes, Stamp] | None:
        """The file's bytes and stamp, if nothing wrote to it while it was read: the stamp
        before and after the read equal, and a second read the same bytes. None when it
        changed (a writer is at it). Raises `ConfigError` when it cannot be read."""
        before = self._stamp()
        # (a FIFO put in its place is refused, never opened blocking: `read_regular_file`)
        raw = read_regular_file(path, MAX_CONFIG_BYTES, "config")
        again = read_regular_file(path, MAX_CONFIG_BYTES, "config")
        after = self._stamp()
        if before is None or after != before or again != raw:
            return None
        return raw, after

    def reload(self, *, expect: object = _NOTHING) -> bool:
        """Load the file again; swap on success, keep the current runtime on failure.

        A file that changes while it is read is not loaded (a writer is still at it; the
        poll loads it once it has stopped changing: `poll_once`), on SIGHUP too. `expect`:
        the stamp the poll saw stay put for an interval; a file changed since is left to
        the next poll. Here, on the caller's thread; the poll and SIGHUP use
        `reload_off_loop`."""
        if self.path is None:
            return False
        return self._apply(self._load(self.path, expect))

    async def reload_off_loop(self, *, expect: object = _NOTHING) -> bool:
        """`reload`, its reading, parsing, validating and compiling in a worker thread and
        only the swap on the event loop: a large policy (or 3.8 KB of YAML aliases expanding
        to 10,000 rules) took 20-30 s to load, and every request waited that long at a
        reload (config probe, MEDIUM). One at a time: a reload asked for meanwhile is done
        once this one is (the file may have changed again)."""
        if self.path is None:
            return False
        if self._reloading is not None:
            self._reload_again = True
            return await asyncio.shield(self._reloading)
        loop = asyncio.get_running_loop()
        self._reloading = loop.create_future()
        try:
            while True:
                self._reload_again = False
                result = self._apply(await asyncio.to_thread(self._load, self.path, expect))
                if not self._reload_again:
                    break
                expect = _NOTHING
            self._reloading.set_result(result)
            return result
        except BaseException as exc:
            self._reloading.set_exception(exc)
            self._reloading.exception()  # (retrieved: a waiter may have gone)
            raise
        finally:
            self._reloading = None

    def _load(self, path: Path, expect: object) -> tuple[str, Any, Any]:
        """The file read and loaded, touching nothing of the running proxy (a worker thread
        may run it): ("failed", error, stamp), ("changing", None, None) or ("loaded",
        config, stamp)."""
        try:
            read = self._read_whole(path)
        except ConfigError as exc:
            return "failed", exc, self._stamp()
        if read is None or (expect is not _NOTHING and read[1] != expect):
            return "changing", None, None
        raw, stamp = read
        try:
            return "loaded", load_config(path, self._environ, raw=raw), stamp
        except ConfigError as exc:
            return "failed", exc, stamp

    def _apply(self, result: tuple[str, Any, Any]) -> bool:
        """`_load`'s result taken in, on the event loop (or the caller's thread)."""
        kind, value, stamp = result
        path = self.path
        if kind == "changing":
            logger.warning(
                "config file %s changed while it was read; not loaded: it is loaded once it "
                "has stayed unchanged for server.reload_interval (replace the file "
                "atomically: write a temporary file, then rename it over this one)",
                path,
            )
            self._metrics.config_reloads.labels(result="changing").inc()
            return False
        self._file_stamp = stamp
        if kind == "failed":
            return self._failed(value)
        loaded: LoadedConfig = value
        old_loaded = self.current.loaded
        old = old_loaded.config
        if loaded.config.server != old.server:
            logger.warning("server settings changed; they apply only after a restart")
        if loaded.config.metrics != old.metrics:
            logger.info("%s", _exposure(loaded))
        wider = widened(old, loaded.config)
        if wider:
            logger.warning("the reloaded config widens rules: %s", "; ".join(wider))
        self.current = self._build(loaded)
        self.last_error = None
        if _same_access(old_loaded, loaded):
            # (a `touch`, a SIGHUP from tooling, a ConfigMap re-sync: the same file again
            # grants what it granted, so held answers go on; ending them all made every
            # live client come back at once: twin 08:08)
            logger.info("config reloaded from %s: nothing changed, held live answers go on", path)
            self._metrics.config_reloads.labels(result="ok").inc()
            return True
        self._revoked()
        if loaded.config.cache != old.cache:
            for callback in self.on_cache_changed:
                callback()
        self._metrics.config_reloads.labels(result="ok").inc()
        logger.info("config reloaded from %s", path)
        return True

    def _reload_soon(self) -> None:
        """SIGHUP: `reload_off_loop` in a task of its own."""

        async def reload() -> bool:
            try:
                return await self.reload_off_loop()
            except Exception as exc:
                self._crashed(exc)
                return False

        task = asyncio.get_running_loop().create_task(reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _crashed(self, exc: Exception) -> None:
        """A reload that failed other than with a `ConfigError` (a bug, or one the loader
        does not turn into one): counted and shown as a failed reload, and the file poll
        goes on. It ended the poll's task, silently, and no later edit (a revocation) was
        ever loaded while /healthz said all was well (config probe, MEDIUM)."""
        logger.error("config reload failed unexpectedly, keeping the last good config: %r", exc)
        self.last_error = f"the reload failed unexpectedly ({type(exc).__name__})"
        self._metrics.config_reloads.labels(result="error").inc()

    def _failed(self, exc: ConfigError) -> bool:
        self.last_error = str(exc)
        self._metrics.config_reloads.labels(result="error").inc()
        logger.error("config reload failed, keeping the last good config: %s", exc)
        return False

    def changed_on_disk(self) -> bool:
        return self._stamp() != self._file_stamp

    def poll_once(self) -> bool:
        """One tick of the file poll: reload when the file changed and has then stayed the
        same for a whole interval (since the previous tick), never mid-write.

        A writer rewriting the file in place (an editor, `scp`, a template tool streaming
        its output) leaves a prefix on disk between its writes, and a prefix is often a
        valid, wider config (a rule cut before its `columns:` shows every column; cut
        before a `when:` it admits everyone; attack 15:06). Each of its writes changes the
        stamp (mtime, size, ctime), so a file is loaded only once no write came for one
        interval: a writer that never pauses longer than `server.reload_interval` is never
        loaded half-way. A rename of a complete file over the path is always safe."""
        stamp = self._stamp()
        if stamp == self._file_stamp:
            self._pending = _NOTHING
            return False
        if stamp != self._pending:
            self._pending = stamp  # (changed since the last tick: wait one more)
            return False
        self._pending = _NOTHING
        return self.reload(expect=stamp)

    def poll_due(self) -> object:
        """`poll_once` without the reload: the stamp to reload at, or `_NOTHING`."""
        stamp = self._stamp()
        if stamp == self._file_stamp:
            self._pending = _NOTHING
            return _NOTHING
        if stamp != self._pending:
            self._pending = stamp
            return _NOTHING
        self._pending = _NOTHING
        return stamp

    @contextlib.asynccontextmanager
    async def watching(self, *, sighup: bool) -> AsyncIterator[None]:
        """Reload on file change (polled) and, when `sighup`, on SIGHUP, while inside."""
        interval = self.current.loaded.config.server.reload_interval
        loop = asyncio.get_running_loop()
        installed = False
        if sighup and self.path is not None:
            import signal

            try:
                loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
                installed = True
            except (NotImplementedError, RuntimeError, ValueError):
                logger.warning("cannot install a SIGHUP handler here; file polling only")

        async def poll() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    stamp = self.poll_due()
                    if stamp is not _NOTHING:
                        await self.reload_off_loop(expect=stamp)
                except Exception as exc:  # (a bug in a load: the poll must go on)
                    self._crashed(exc)

        async def refresh_keys() -> None:
            # Without this a key set is refetched only when a token needs verifying; while
            # every request hits the caches, a key removed at the issuer would stay trusted.
            while True:
                await asyncio.sleep(KEYS_POLL_INTERVAL)
                try:
                    await self.refresh_keys()
                except Exception:  # (a fetch failure is handled inside; this is a bug)
                    logger.exception("background JWKS refresh failed")

        tasks = [asyncio.create_task(refresh_keys())]
        if self.path is not None:
            tasks.append(asyncio.create_task(poll()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if installed:
                import signal

                loop.remove_signal_handler(signal.SIGHUP)
