"""Edge: can a native front meet issue 13's bar 4 (front CPU per uncached request <= 1.5x nginx)?

Run alone, WITHOUT nice, after raising the shell's autogroup (root):

    echo -10 > /proc/self/autogroup
    .venv/bin/python benchmarks/edge_front.py [--rounds 5] [--n 4000] [--quick]

Not part of `make bench`: a measurement of an architecture, not of shipped code. The same
load as S1 (`s1_front.py`: its answers, c = 32 kept-alive connections, small answers, live
and catch-up), one engine on a throwaway Postgres, and in front of it, arms alternated in
every round:

- nginx: the shipped config/nginx tier with `proxy_cache off`, sent the engine URL (as S1);
- edge: nginx doing the forwarding itself, the proxy deciding once per (token, shape).
  `auth_request` to a decision location whose answer nginx caches (`proxy_cache`, keyed by
  the Authorization header and the query with the volatile args — offset, handle, live,
  cursor, cache-buster, expired_handle — stripped by chained `map` regexes); the decision
  answers `X-Edge-Query`, the engine query the proxy's own code builds (token check, policy,
  `build_upstream_url`, secret), which `auth_request_set` picks up; nginx then proxy_passes
  the engine `/v1/shape?<decided query>&<volatile args>`. The decider is this file run as
  `decide` (aiohttp on uvloop calling the proxy's `TokenVerifier`, `parse_shape_query`,
  `evaluate`, `build_upstream_url`); on a cache hit it is not called at all. Its CPU counts
  with nginx's for the arm. Cache-Control is made private and `Vary: Authorization` added in
  nginx (what the proxy's header rules would have to become). Refusals (401, 403, and the
  500 auth_request makes of anything else) are replayed through the proxy by `error_page`,
  for its own status and JSON body (the pitfall probes compare them with the proxy's);
- edge-miss: the same nginx config with the decision cache off: every request is a miss
  (an nginx subrequest plus a full decision, the token verified each time), which prices a
  cache miss;
- edge-miss-known: the same, the decider keeping verified tokens (the proxy's token cache):
  a miss for a new shape of a known token;
- edge+ofc: the edge with `open_file_cache` in its decision location (a cache hit then skips
  the open/fstat/close of the decision's cache file; it still reads it);
- edge-static: the edge's nginx without auth_request, the decided query written into its
  config: the edge's maps and header rules alone (edge - edge-static is the decision lookup:
  the subrequest and its cache hit);
- proxy: `python -m proxy` (collapsing and cache off, as S1's proxy arm).

Each of the 32 connections carries its own token (32 users of one org), so the decision
cache holds 32 entries per shape, filled in the warm-up. CPU per request is read from /proc
for each front's process tree (nginx master + workers + cache manager, plus the decider for
the edge arms) and the engine, over all rounds; the decision-cache hit rate is 1 - decider
calls / requests. The load average is printed per round: on this shared 2-core machine,
nginx's own cost moves most with the load, so only the ratios of one run mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qsl

import _common
import psycopg
from _common import (
    ENGINE_SECRET,
    JWT_SECRET,
    EngineProcess,
    NginxProcess,
    Postgres,
    Process,
    ProxyProcess,
    RawHTTP,
    Stack,
    free_port,
    remove_later,
    token,
)
from s1_front import CLAIMS, TABLES, _get, _split, prepare

#: Args that change on every request of one shape: stripped from the decision's cache key and
#: its input, forwarded to the engine as the client sent them.
VOLATILE = ("offset", "handle", "live", "cursor", "cache-buster", "expired_handle")
#: How long nginx may reuse a decision (capped by the token's `exp`).
DECISION_TTL = 60


# --- the decider: the proxy's decision code behind a tiny HTTP endpoint ------------------------


def decider_main(port: int, engine: str, config_path: str, use_token_cache: bool) -> None:
    """Serve GET /decide?<shape args without the volatile ones> with the caller's
    Authorization: 200 + X-Edge-Query (the engine query, secret included) + X-Accel-Expires,
    or 401/403 (the only refusals auth_request passes on; anything else becomes its 500)."""
    import uvloop
    from aiohttp import web

    from proxy.auth.bearer import bearer_token
    from proxy.auth.claims import Issuer, StaticKeys, TokenVerifier
    from proxy.config.loader import load_config
    from proxy.errors import ProxyError
    from proxy.http.params import parse_shape_query
    from proxy.policy.evaluate import evaluate
    from proxy.upstream.url import build_upstream_url

    loaded = load_config(config_path)
    verifier = TokenVerifier(
        [Issuer(config=c, keys=StaticKeys(loaded.static_keys[c.issuer]))
         for c in loaded.config.issuers],
        cache_size=10_000 if use_token_cache else 0,
    )  # fmt: skip
    secret = loaded.upstream_secret.get_secret_value() if loaded.upstream_secret else None
    calls = 0

    async def decide(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        try:
            claims = await verifier.verify(bearer_token(request.headers))
            # The cache key is the raw query; decide on exactly what the key holds. An arg that
            # decodes to a volatile name got past nginx's regexes (e.g. %6Fffset): refuse it.
            pairs = parse_qsl(request.query_string, keep_blank_values=True)
            if any(name in VOLATILE for name, _ in pairs):
                print(f"refused: volatile arg in {request.query_string!r}", file=sys.stderr)
                return web.Response(status=403, headers={"X-Edge-Reason": "encoded_volatile"})
            decision = evaluate(loaded.policy, claims, parse_shape_query(pairs))
            url = build_upstream_url(engine, decision, source_id=None, secret=secret)
        except ProxyError as exc:
            # auth_request passes 401 and 403 only; a 400 would become nginx's 500. The real
            # status and body would have to come from the proxy through error_page.
            status = exc.status if exc.status in (401, 403) else 403
            print(f"refused: {exc.status} {exc} for {request.query_string!r}", file=sys.stderr)
            return web.Response(status=status, headers={"X-Edge-Status": str(exc.status),
                                                        "X-Accel-Expires": "5"})  # fmt: skip
        ttl = max(0, min(DECISION_TTL, int(claims["exp"] - time.time())))
        return web.Response(headers={"X-Edge-Query": url.raw_query_string,
                                     "X-Accel-Expires": str(ttl)})  # fmt: skip

    async def count(_: web.Request) -> web.Response:
        return web.Response(text=str(calls))

    app = web.Application()
    app.router.add_get("/decide", decide)
    app.router.add_get("/count", count)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class DeciderProcess(Process):
    def __init__(self, engine_url: str, config_path: Path, env: dict[str, str],
                 use_token_cache: bool) -> None:  # fmt: skip
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="shapegate-bench-decider-", suffix=".log")[1])
        cmd = [sys.executable, __file__, "decide", str(self.port), engine_url, str(config_path)]
        if not use_token_cache:
            cmd.append("--no-token-cache")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=_common.ROOT,
                                         stdout=out, stderr=out)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        await self.wait_http("/count")

    async def calls(self) -> int:
        client = RawHTTP("127.0.0.1", self.port)
        try:
            _, _, body = await client.get("/count")
        finally:
            client.close()
        return int(body)

    def stop(self) -> None:
        super().stop()
        print(f"decider :{self.port} log: {self.tail()[-400:]!r}", file=sys.stderr)
        self.log.unlink(missing_ok=True)


# --- the edge nginx -----------------------------------------------------------------------------


def _strip_maps(volatile: tuple[str, ...]) -> str:
    """Chained maps, each removing the first `name=...` (or bare `name`) from the previous."""
    out, src = [], "$args"
    for i, name in enumerate(volatile):
        dst = f"$edge_k{i}"
        esc = name
        out.append(f'map {src} {dst} {{\n    "~^(.*?)(?:^|&){esc}(?:=[^&]*)?(&.*)?$" "$1$2";\n'
                   f"    default {src};\n}}")  # fmt: skip
        src = dst
    return "\n".join(out) + f"\n# the decision's input and (with the token) its cache key\n" \
        f"map {src} $edge_key {{ default {src}; }}\n"  # fmt: skip


def _volatile_maps(volatile: tuple[str, ...]) -> str:
    """`&name=value` for each volatile arg the client sent, else empty."""
    out = []
    for name in volatile:
        var = name.replace("-", "_")
        esc = name
        out.append(f'map $args $edge_v_{var} {{\n    "~(?:^|&)({esc}=[^&]*)" "&$1";\n'
                   f'    default "";\n}}')  # fmt: skip
    return "\n".join(out)


EDGE_CONF = """
daemon off;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
# The maps below are regexes over the query string: JIT-compiled, each costs far less.
pcre_jit on;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path       {dir}/proxy_temp;
    fastcgi_temp_path     {dir}/fastcgi_temp;
    uwsgi_temp_path       {dir}/uwsgi_temp;
    scgi_temp_path        {dir}/scgi_temp;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    server_tokens off;
    access_log off;

    # Decisions: small entries on tmpfs (every hit still opens and reads one file).
    proxy_cache_path {cache} levels=1:2 keys_zone=edge_decisions:16m max_size=256m
                     inactive=10m use_temp_path=off;

    upstream edge_engine {{ server {engine}; keepalive 64; }}
    upstream edge_decider {{ server {decider}; keepalive 64; }}
{proxy_upstream}
{strip}
{volatile}
    # The proxy's Cache-Control rule, roughly: a caller's rows are private.
    map $upstream_http_cache_control $edge_cache_control {{
        "~^public, *(.*)$"  "private, $1";
        default             $upstream_http_cache_control;
    }}

    server {{
        listen 127.0.0.1:{port};
        proxy_read_timeout 90s;
        proxy_send_timeout 90s;
        send_timeout 90s;
        proxy_connect_timeout 5s;
        proxy_http_version 1.1;
        proxy_buffer_size 64k;
        proxy_buffers 16 64k;
        proxy_busy_buffers_size 128k;

        location = /v1/shape {{
            # Evaluated here, in the client's request: in the auth subrequest $args is empty
            # (subrequests share the main request's `set` variables, not its args).
            set $edge_req_key $edge_key;
            {auth}
            proxy_pass http://edge_engine/v1/shape?$edge_query$edge_v_offset$edge_v_handle$edge_v_live$edge_v_cursor$edge_v_cache_buster$edge_v_expired_handle;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header Authorization "";
            proxy_set_header Cookie "";
            proxy_cache off;
            proxy_buffering on;
            proxy_hide_header Cache-Control;
            add_header Cache-Control $edge_cache_control;
            add_header Vary Authorization;
{replay}        }}
{replay_location}
        location = /_edge_decide {{
            internal;
            proxy_pass http://edge_decider/decide?$edge_req_key;
            proxy_pass_request_body off;
            # The decider sees what the key holds and nothing else: the one Authorization
            # header nginx keys on (not a second one the client might add), no other header.
            proxy_pass_request_headers off;
            proxy_set_header Authorization $http_authorization;
            proxy_set_header Content-Length "";
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_cache {decision_cache};
            proxy_cache_key "$http_authorization|$edge_req_key";
            proxy_cache_lock on;
            proxy_cache_valid 200 401 403 {ttl}s;
            {open_file_cache}
        }}

        location = /v1/health {{
            proxy_pass http://edge_engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def _single_process(conf: str) -> str:
    return conf.replace("worker_processes auto;", "worker_processes 1;\nmaster_process off;")


def _start_nginx(directory: Path, conf: Path,
                 callgrind: bool) -> tuple[subprocess.Popen[bytes], Path]:  # fmt: skip
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    err = str(directory / "error.log")
    subprocess.run([nginx, "-t", "-q", "-c", str(conf), "-e", err], check=True)
    cmd = [nginx, "-c", str(conf), "-e", err]
    if callgrind:
        out_file = directory / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *cmd]
    log = directory / "nginx.out"
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out), log


class PlainNginxCallgrind(Process):
    """The shipped config/nginx tier as S1 runs it (`proxy_cache off`, no access log), as
    one process under callgrind."""

    def __init__(self, engine_port: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="shapegate-bench-edge-plain-"))
        sys.path.insert(0, str(_common.ROOT / "config" / "nginx"))
        from render import render

        conf = render(self.dir, f"127.0.0.1:{self.port}", f"127.0.0.1:{engine_port}")
        site = self.dir / "shapegate.conf"
        text = site.read_text().replace("access_log /dev/stdout shapegate;", "access_log off;")
        site.write_text(text.replace("proxy_cache shapegate;", "proxy_cache off;"))
        main = conf.read_text()
        conf.write_text(_single_process(main[main.index("daemon off;") :]))  # (no `user`)
        self.proc, self.log = _start_nginx(self.dir, conf, True)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        await self.wait_http("/v1/health", timeout=120)

    def stop(self) -> None:
        super().stop()
        remove_later(self.dir)


def _callgrind_control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def _callgrind_total(out: Path) -> int:
    """The instruction total of the newest dump next to `out` (one per `-d`)."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


async def callgrind_instructions(front: Process, directory: Path, url: str,
                                 headers: list[dict[str, str]], n: int) -> float:  # fmt: skip
    """User-space instructions per request of a process under callgrind: counters zeroed,
    n requests, counters dumped (independent of the machine's load; the kernel's share of
    the work, sockets and files, is not in it)."""
    _callgrind_control("-z", front.pid)
    _, done = await load(url, headers, n)
    _callgrind_control("-d", front.pid)
    return _callgrind_total(directory / "callgrind.out") / done


def _start_strace(pid: int) -> tuple[subprocess.Popen[bytes], Path]:
    """strace -c on the nginx workers under `pid`."""
    workers = [p for p in _common.tree(pid)
               if b"worker process" in Path(f"/proc/{p}/cmdline").read_bytes()]  # fmt: skip
    out = Path(tempfile.mkstemp(prefix="shapegate-bench-edge-strace-")[1])
    cmd = ["strace", "-c", "-f", "-o", str(out), *(a for p in workers for a in ("-p", str(p)))]
    return subprocess.Popen(cmd, stderr=subprocess.DEVNULL), out


def _stop_strace(tracer: subprocess.Popen[bytes], out: Path) -> dict[str, int]:
    tracer.send_signal(2)
    tracer.wait(30)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()  # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    out.unlink()
    return counts


async def syscalls_per_request(front: Process, url: str, headers: list[dict[str, str]],
                               n: int) -> dict[str, float]:  # fmt: skip
    """System calls per request of an nginx's workers (strace -c while n requests run)."""
    tracer, out = _start_strace(front.pid)
    await asyncio.sleep(1.0)  # (attached)
    _, done = await load(url, headers, n)
    return {name: calls / done for name, calls in _stop_strace(tracer, out).items()}


class EdgeNginx(Process):
    """nginx with auth_request to `decider` (its decisions cached unless `cache=False`); with
    `static_query`, no auth_request at all and that engine query for every request (the
    edge's maps and header rules alone, to split its cost from the decision lookup's)."""

    def __init__(self, engine_port: int, decider: DeciderProcess, *, cache: bool,
                 static_query: str | None = None, open_file_cache: bool = False,
                 callgrind: bool = False, proxy_port: int | None = None) -> None:  # fmt: skip
        """`callgrind`: one process (no master, one worker) under valgrind's callgrind, to
        count its instructions per request (`callgrind_instructions`). `proxy_port`: refusals
        (401, 403, and auth_request's 500) are replayed through the proxy there, for its
        status and JSON body (error_page to a named location)."""
        self.port = free_port()
        self.decider = decider
        self.static = static_query
        self.dir = Path(tempfile.mkdtemp(prefix="shapegate-bench-edge-"))
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        cache_dir = Path(tempfile.mkdtemp(prefix="shapegate-bench-edge-cache-", dir=shm))
        self.cache_dir = cache_dir
        conf = self.dir / "nginx.conf"
        conf.write_text(EDGE_CONF.format(
            dir=self.dir, cache=cache_dir, engine=f"127.0.0.1:{engine_port}",
            decider=f"127.0.0.1:{decider.port}", port=self.port,
            strip=_strip_maps(VOLATILE), volatile=_volatile_maps(VOLATILE),
            decision_cache="edge_decisions" if cache else "off", ttl=DECISION_TTL,
            proxy_upstream=(f"    upstream edge_proxy {{ server 127.0.0.1:{proxy_port}; "
                            "keepalive 16; }\n" if proxy_port else ""),
            replay="            error_page 401 403 500 = @edge_proxy;\n" if proxy_port else "",
            replay_location=("        location @edge_proxy {\n"
                             "            proxy_pass http://edge_proxy;\n"
                             "            proxy_http_version 1.1;\n"
                             '            proxy_set_header Connection "";\n'
                             "        }\n" if proxy_port else ""),
            # (nginx's file cache opens its files through open_file_cache when one is set)
            open_file_cache="open_file_cache max=100000 inactive=60s;\n"
            "            open_file_cache_valid 60s;" if open_file_cache else "",
            auth=(f"set $edge_query {static_query};" if static_query is not None else
                  "auth_request /_edge_decide;\n"
                  "            auth_request_set $edge_query $upstream_http_x_edge_query;"),
        ))  # fmt: skip
        if callgrind:
            conf.write_text(_single_process(conf.read_text()))
        elif os.geteuid() == 0:
            import grp
            import pwd

            user = pwd.getpwnam("nobody")
            group = grp.getgrgid(user.pw_gid).gr_name
            conf.write_text(f"user nobody {group};\n" + conf.read_text())
            for path in (self.dir, cache_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.proc, self.log = _start_nginx(self.dir, conf, callgrind)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        await self.wait_http("/v1/health")

    def cpu(self) -> float:  # the front is nginx and its decider
        return super().cpu() + (self.decider.cpu() if self.static is None else 0.0)

    def stop(self) -> None:
        super().stop()
        remove_later(self.dir)
        remove_later(self.cache_dir)


# --- the load ----------------------------------------------------------------------------------


async def load(url: str, headers: list[dict[str, str]], n: int) -> tuple[float, int]:
    """n GETs over len(headers) kept-alive connections, connection i sending headers[i]:
    (requests/s, requests)."""
    host, port, path = _split(url)
    counter = iter(range(n))
    done = 0
    t0 = time.perf_counter()

    async def worker(h: dict[str, str]) -> None:
        nonlocal done
        client = RawHTTP(host, port)
        try:
            for _ in counter:
                await _get(client, path, h)
                done += 1
        finally:
            client.close()

    await asyncio.gather(*(worker(h) for h in headers))
    return done / (time.perf_counter() - t0), done


async def check_pitfalls(edge: EdgeNginx, proxy: ProxyProcess, query: str,
                         auth: dict[str, str]) -> list[str]:  # fmt: skip
    """What the edge front answers to requests a product must get right, against the proxy
    (refusals are replayed through the proxy by error_page)."""
    clients = RawHTTP("127.0.0.1", edge.port), RawHTTP("127.0.0.1", proxy.port)
    cases = {
        "no token": ("", {}),
        "other table": (query.replace("table=items", "table=secrets"), auth),
        "repeated table": (query + "&table=blob", auth),
        "encoded volatile (%6Fffset)": (query.replace("offset=", "%6Fffset=", 1), auth),
        "bad columns (a 400 in the proxy)": (query + "&columns=%22", auth),
        "OFFSET=-1 (upper case: not volatile)": (query + "&OFFSET=-1", auth),
    }  # fmt: skip
    out = []
    try:
        for label, (q, h) in cases.items():
            (es, _, eb), (ps, _, pb) = [await c.get(f"/v1/shape?{q}", h) for c in clients]
            same = "same as the proxy" if (es, eb) == (ps, pb) else f"proxy: {ps} {pb[:50]!r}"
            out.append(f"{label}: edge {es} {eb[:70]!r} ({same})")
    finally:
        for c in clients:
            c.close()
    return out


async def profile(engine: EngineProcess, dec: DeciderProcess, stack: Stack,
                  fronts: dict[str, tuple[Process, str, list[dict[str, str]]]],
                  direct: str, query: str, decided: str, users: list[dict[str, str]],
                  n: int) -> None:  # fmt: skip
    """Load-independent counts for the catch-up answer: user-space instructions per request
    (each front as one process under callgrind) and system calls per request (strace -c on
    the measured fronts' workers)."""
    plain = stack.add(PlainNginxCallgrind(engine.port))
    edges = {
        "edge": stack.add(EdgeNginx(engine.port, dec, cache=True, callgrind=True)),
        "edge+ofc": stack.add(EdgeNginx(engine.port, dec, cache=True, open_file_cache=True,
                                        callgrind=True)),
    }  # fmt: skip
    edges["edge-static"] = stack.add(EdgeNginx(engine.port, dec, cache=False, callgrind=True,
                                               static_query=decided))  # fmt: skip
    cg: dict[str, tuple[PlainNginxCallgrind | EdgeNginx, Path, str, list[dict[str, str]]]] = {
        "nginx": (plain, plain.dir, direct.replace(engine.url, plain.url), [{}] * len(users)),
        **{a: (e, e.dir, f"{e.url}/v1/shape?{query}", users) for a, e in edges.items()},
    }
    for front, *_ in cg.values():
        await front.wait_ready()
    instr = {}
    for arm, (front, directory, url, hs) in cg.items():
        await load(url, hs, 200)  # warm-up (fills the decision cache)
        instr[arm] = await callgrind_instructions(front, directory, url, hs, n)
    calls = {}
    for arm, (measured, url, hs) in fronts.items():
        await load(url, hs, 200)
        calls[arm] = await syscalls_per_request(measured, url, hs, n)
    print(f"## load-independent counts, 1 KiB catch-up, {n} requests per arm")
    print("| arm | user-space instructions/req (callgrind) | system calls/req (strace) | "
          "the calls |\n|---|---|---|---|")  # fmt: skip
    for arm in cg:
        top = sorted(calls[arm].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{name} {v:.2f}" for name, v in top if v >= 0.05)
        print(f"| {arm} | {instr[arm] / 1000:.1f}K | {sum(calls[arm].values()):.2f} | {shown} |")
    print()


async def run(rounds: int, n: int, profile_n: int) -> None:
    stack = Stack()
    try:
        pg = stack.add(Postgres())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text, title text)")
            conn.execute("INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-a' ELSE "
                         "'org-b' END, 'title ' || i FROM generate_series(1, 100) i")  # fmt: skip
            conn.execute("CREATE TABLE blob (id int PRIMARY KEY, payload text)")
            conn.execute("INSERT INTO blob SELECT i, md5(i::text) FROM generate_series(1, 100) i")
        engine = stack.add(EngineProcess(pg.url))
        await engine.wait_ready()
        proxy = stack.add(ProxyProcess(engine.url, TABLES, collapse=False, cache_bytes=0))
        nginx = stack.add(NginxProcess(engine.port, cache=False))
        cfg = proxy.dir / "proxy.yaml"
        env = {"ENGINE_SECRET": ENGINE_SECRET, "BENCH_JWT_SECRET": JWT_SECRET}
        dec = stack.add(DeciderProcess(engine.url, cfg, env, use_token_cache=True))
        dec_miss = stack.add(DeciderProcess(engine.url, cfg, env, use_token_cache=False))
        dec_known = stack.add(DeciderProcess(engine.url, cfg, env, use_token_cache=True))
        for p in (proxy, nginx, dec, dec_miss, dec_known):
            await p.wait_ready()
        pp = proxy.port
        edge = stack.add(EdgeNginx(engine.port, dec, cache=True, proxy_port=pp))
        edge_miss = stack.add(EdgeNginx(engine.port, dec_miss, cache=False, proxy_port=pp))
        edge_known = stack.add(EdgeNginx(engine.port, dec_known, cache=False, proxy_port=pp))
        edge_ofc = stack.add(EdgeNginx(engine.port, dec, cache=True, open_file_cache=True,
                                       proxy_port=pp))  # fmt: skip
        decided = ProxyProcess.build_direct_url(TABLES, engine.url, {"sub": "u1", **CLAIMS},
                                                [("table", "items")]).split("?", 1)[1]  # fmt: skip
        decided = decided.replace("$", "%24")  # (nginx would read `$1` as a variable)
        edge_static = stack.add(EdgeNginx(engine.port, dec, cache=False, static_query=decided))
        for p in (edge, edge_ofc, edge_miss, edge_known, edge_static):
            await p.wait_ready()
        auth = {"Authorization": f"Bearer {token(**CLAIMS)}"}
        kinds = await prepare(pg, proxy, auth)
        kinds.pop("10 MiB chunk")
        conc = 32
        users = [{"Authorization": f"Bearer {token(**CLAIMS, sub=f'user{i}')}"}
                 for i in range(conc)]  # fmt: skip
        print(_common.machine())
        print(f"{rounds} rounds x {n} requests per arm, c = {conc} (one token per connection)\n")
        fronts: dict[str, Process] = {"nginx": nginx, "edge": edge, "edge+ofc": edge_ofc,
                                      "edge-miss": edge_miss, "edge-miss-known": edge_known,
                                      "edge-static": edge_static,
                                      "proxy": proxy}  # fmt: skip
        deciders = {"edge": dec, "edge-miss": dec_miss, "edge-miss-known": dec_known}
        results: list[str] = []
        for kind, pairs in kinds.items():
            direct = proxy.direct_url(engine.url, {"sub": "u1", **CLAIMS}, pairs)
            query = "&".join(f"{k}={v}" for k, v in pairs)
            targets: dict[str, tuple[str, list[dict[str, str]]]] = {
                "nginx": (direct.replace(engine.url, nginx.url), [{}] * conc),
                "edge": (f"{edge.url}/v1/shape?{query}", users),
                "edge+ofc": (f"{edge_ofc.url}/v1/shape?{query}", users),
                "edge-miss": (f"{edge_miss.url}/v1/shape?{query}", users),
                "edge-miss-known": (f"{edge_known.url}/v1/shape?{query}", users),
                "edge-static": (f"{edge_static.url}/v1/shape?{query}", users),
                "proxy": (f"{proxy.url}/v1/shape?{query}", users),
            }
            # The same bytes from every front (the edge's rewritten headers aside).
            bodies: dict[str, bytes] = {}
            for arm, (url, hs) in targets.items():
                host, port, path = _split(url)
                client = RawHTTP(host, port)
                status, _, bodies[arm] = await client.get(path, hs[0])
                client.close()
                assert status == 200, (arm, status, bodies[arm][:200])
            assert len(set(bodies.values())) == 1, {a: b[:100] for a, b in bodies.items()}
            for url, hs in targets.values():  # warm-up: fills the decision cache
                await load(url, hs, 400)
            calls0 = {a: await d.calls() for a, d in deciders.items()}
            cpu = {a: 0.0 for a in targets}
            eng = {a: 0.0 for a in targets}
            decider_cpu = {a: 0.0 for a in deciders}
            count = {a: 0 for a in targets}
            per_round: dict[str, list[float]] = {a: [] for a in targets}
            rps: dict[str, list[float]] = {a: [] for a in targets}
            loads = []
            for r in range(rounds):
                loads.append(os.getloadavg()[0])
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for arm in order:
                    url, hs = targets[arm]
                    f0, e0 = fronts[arm].cpu(), engine.cpu()
                    d0 = deciders[arm].cpu() if arm in deciders else 0.0
                    rate, done = await load(url, hs, n)
                    df = fronts[arm].cpu() - f0
                    if arm in deciders:
                        decider_cpu[arm] += deciders[arm].cpu() - d0
                    cpu[arm] += df
                    eng[arm] += engine.cpu() - e0
                    count[arm] += done
                    per_round[arm].append(df / done * 1e6)
                    rps[arm].append(rate)
            calls = {a: await d.calls() - calls0[a] for a, d in deciders.items()}
            per = {a: cpu[a] / count[a] * 1e6 for a in targets}
            lines = [f"## {kind}: load average {min(loads):.1f}-{max(loads):.1f} "
                     f"(now {_common.load()})",
                     "| arm | front CPU µs/req | per round | engine µs/req | req/s (best) "
                     "| / nginx |", "|---|---|---|---|---|---|"]  # fmt: skip
            for a in targets:
                rounds_txt = " ".join(f"{x:.0f}" for x in per_round[a])
                lines.append(f"| {a} | {per[a]:.1f} | {rounds_txt} | "
                             f"{eng[a] / count[a] * 1e6:.1f} | {max(rps[a]):,.0f} | "
                             f"{per[a] / per['nginx']:.2f}x |")  # fmt: skip
            ratios = {a: [x / y for x, y in zip(per_round[a], per_round["nginx"], strict=True)]
                      for a in targets}  # fmt: skip
            lines.append("")
            for a in ("edge", "edge+ofc", "edge-miss", "edge-miss-known", "edge-static", "proxy"):
                lines.append(f"{a}/nginx per round: "
                             + " ".join(f"{x:.2f}" for x in ratios[a])
                             + f" (overall {per[a] / per['nginx']:.2f}x)")  # fmt: skip
            cached = count["edge"] + count["edge+ofc"]  # (both share one decider)
            hit = 1 - calls["edge"] / cached
            lines.append(
                f"decision cache hit rate (edge, edge+ofc): {hit:.4f} "
                f"({calls['edge']} decider calls for {cached} requests); "
                f"edge-miss: {calls['edge-miss']} calls for {count['edge-miss']}"
            )
            in_decider = decider_cpu["edge-miss"] / count["edge-miss"] * 1e6
            lines.append(f"a cache miss costs ~{per['edge-miss'] - per['edge']:.0f} µs of front "
                         f"CPU above a hit (edge-miss - edge), {in_decider:.0f} µs of it in the "
                         f"decider (aiohttp, the token verified, policy, engine URL)")  # fmt: skip
            known = decider_cpu["edge-miss-known"] / count["edge-miss-known"] * 1e6
            lines.append(f"a miss for a token the decider has verified before (a new shape): "
                         f"~{per['edge-miss-known'] - per['edge']:.0f} µs above a hit, "
                         f"{known:.0f} µs in the decider")  # fmt: skip
            miss, hitc, base = per["edge-miss"], per["edge"], per["nginx"]
            if miss > hitc:
                need = (miss - 1.5 * base) / (miss - hitc)
                lines.append(f"at hit rate h the edge costs h*{hitc:.0f} + (1-h)*{miss:.0f} µs: "
                             f"1.5x nginx needs h >= {need:.3f}")  # fmt: skip
            print("\n".join(lines) + "\n", flush=True)
            results.append("\n".join(lines))
        first = kinds["1 KiB catch-up"]
        q = "&".join(f"{k}={v}" for k, v in first)
        print("## pitfalls probed on the edge front")
        for line in await check_pitfalls(edge, proxy, q, users[0]):
            print("- " + line)
        for arm, url in (("proxy", proxy.url), ("edge", edge.url)):
            client = RawHTTP("127.0.0.1", int(url.rsplit(":", 1)[1]))
            _, hdrs, _ = await client.get(f"/v1/shape?{q}", users[0])
            client.close()
            shown = {k: hdrs.get(k) for k in ("cache-control", "vary", "etag")}
            print(f"- {arm} answer headers: {shown}")
        print(f"(edge nginx error log: {(edge.dir / 'error.log').read_text()[-600:]!r})\n")
        if profile_n:
            direct = proxy.direct_url(engine.url, {"sub": "u1", **CLAIMS}, first)
            traced: dict[str, tuple[Process, str, list[dict[str, str]]]] = {
                "nginx": (nginx, direct.replace(engine.url, nginx.url), [{}] * conc),
                **{a: (f, f"{f.url}/v1/shape?{q}", users)
                   for a, f in (("edge", edge), ("edge+ofc", edge_ofc),
                                ("edge-static", edge_static))},
            }  # fmt: skip
            await profile(engine, dec, stack, traced, direct, q, decided, users, profile_n)
    finally:
        stack.close()


def _main(argv: list[str]) -> None:
    if argv[:1] == ["decide"]:
        decider_main(int(argv[1]), argv[2], argv[3], "--no-token-cache" not in argv)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=4000, help="requests per arm per round")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 1,500")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="then count instructions (callgrind) and system calls (strace) "
                    "per request over N requests per arm")  # fmt: skip
    a = ap.parse_args(argv)
    rounds, n = (2, 1500) if a.quick else (a.rounds, a.n)
    asyncio.run(run(rounds, n, a.profile))


if __name__ == "__main__":
    _main(sys.argv[1:])
