#!/usr/bin/env python3
"""Render the shapegate TLS front (nginx, HTTP/2) into a directory and optionally run it.

    python3 config/front/render.py --dir /var/tmp/shapegate-front \
        --listen 0.0.0.0:443 --server-name sync.example.com \
        --cert /etc/ssl/sync.pem --key /etc/ssl/sync.key --proxy 127.0.0.1:8080 \
        [--hsts max-age=31536000] [--user NAME] [--run]

Writes DIR/nginx.conf (standalone: foreground, pid and temp files in DIR) and DIR/front.conf
(the http-context part, in front of shape-proxy). With --run, checks the config
(`nginx -t`) and execs `nginx -c DIR/nginx.conf` in the foreground. Only the
`${SHAPEGATE_*}` placeholders are replaced; nginx's own `$variables` are left alone.
Standard library only. See docs/front.md.

HTTP/2: nginx before 1.25.1 turns it on with `listen ... ssl http2;` (the template's
spelling, for Debian 12's 1.22); 1.25.1 and later with `http2 on;` (the old spelling is
deprecated there). `--http2 auto` (the default) asks the nginx binary its version.

Started as root, nginx's workers drop to an unprivileged account that owns DIR (0700):
`--user NAME`, by default `shapegate-front`, a system account made here if missing. Not the
cache tier's `shapegate-nginx`: this tier faces the internet, and that account can read the
cache, whose keys hold the engine secret. Never `nobody`.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"\$\{(SHAPEGATE_[A-Z_]+)\}")
#: The account nginx's workers run as when started as root.
WORKER_USER = "shapegate-front"
#: The first nginx whose `listen ... http2` is deprecated in favour of `http2 on;`.
HTTP2_ON_SINCE = (1, 25, 1)
#: The template's HTTP/2 `listen` line (nginx < 1.25.1).
_LISTEN_HTTP2 = re.compile(r"^(\s*)listen (\S+) ssl http2;", re.MULTILINE)


def render_text(text: str, values: dict[str, str]) -> str:
    """`text` with every `${SHAPEGATE_*}` replaced; a placeholder without a value is an error
    (a config with a literal `${...}` in it would fail later, less clearly)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"no value for ${{{name}}}")
        return values[name]

    return PLACEHOLDER.sub(sub, text)


def nginx_version(nginx: str) -> tuple[int, ...] | None:
    """The version of the nginx binary (`nginx -v` writes it to stderr), None if unknown."""
    try:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(part) for part in found.groups()) if found else None


def http2_on(text: str) -> str:
    """The server's HTTP/2 spelled for nginx >= 1.25.1: `listen X ssl;` and `http2 on;`."""
    rewritten, count = _LISTEN_HTTP2.subn(r"\1listen \2 ssl;\n\1http2 on;", text)
    if count != 1:
        raise ValueError("front.conf: expected one `listen ... ssl http2;` line")
    return rewritten


def worker_account(name: str) -> pwd.struct_passwd:
    """The account `name` for nginx's workers; `WORKER_USER` is made if missing (as root)."""
    if name == "nobody":
        raise SystemExit("render.py: nginx's workers must not run as `nobody` (shared by others)")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if name != WORKER_USER:
            raise SystemExit(f"render.py: no user {name!r}") from None
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    made = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        return pwd.getpwnam(name)  # (also made by another render.py at the same time)
    except KeyError:
        raise SystemExit(
            f"render.py: could not create the system user {name!r} for nginx's workers "
            f"({made.stderr.strip() or made.returncode}); make one and pass --user NAME"
        ) from None


def render(
    directory: Path,
    *,
    listen: str,
    server_name: str,
    cert: Path,
    key: Path,
    proxy: str,
    hsts: str = "",
    http2_on_syntax: bool = False,
    user: str = WORKER_USER,
) -> Path:
    """Write nginx.conf and front.conf into `directory`; return the nginx.conf path.
    `http2_on_syntax`: spell HTTP/2 as nginx >= 1.25.1 wants it (`http2 on;`)."""
    if '"' in hsts or "\n" in hsts:
        raise SystemExit("render.py: --hsts is a header value, e.g. max-age=31536000")
    account = worker_account(user) if os.geteuid() == 0 else None
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if account is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
    values = {
        "SHAPEGATE_FRONT_DIR": str(directory),
        "SHAPEGATE_FRONT_LISTEN": listen,
        "SHAPEGATE_FRONT_SERVER_NAME": server_name,
        "SHAPEGATE_FRONT_CERT": str(cert.resolve()),
        "SHAPEGATE_FRONT_KEY": str(key.resolve()),
        "SHAPEGATE_PROXY": proxy,
        "SHAPEGATE_FRONT_HSTS": hsts,
    }
    for name in ("nginx.conf", "front.conf"):
        text = render_text((HERE / name).read_text(), values)
        if name == "front.conf" and http2_on_syntax:
            text = http2_on(text)
        if name == "nginx.conf" and account is not None:
            text = f"user {account.pw_name};\n" + text
        (directory / name).write_text(text)
    return directory / "nginx.conf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, type=Path, help="scratch directory for nginx")
    ap.add_argument("--listen", default="127.0.0.1:8443", help="address:port or port (HTTPS)")
    ap.add_argument("--server-name", default="localhost", help="host name browsers use")
    ap.add_argument("--cert", required=True, type=Path, help="PEM certificate (full chain)")
    ap.add_argument("--key", required=True, type=Path, help="PEM private key")
    ap.add_argument("--proxy", default="127.0.0.1:8080", help="address:port of shape-proxy")
    ap.add_argument("--hsts", default="",
                    help="Strict-Transport-Security value (e.g. max-age=31536000); "
                         "default: none sent")  # fmt: skip
    ap.add_argument("--http2", choices=("auto", "listen", "on"), default="auto",
                    help="`listen ... http2` (nginx < 1.25.1) or `http2 on;`; auto: by the "
                         "version of --nginx")  # fmt: skip
    ap.add_argument("--user", default=WORKER_USER,
                    help=f"account nginx's workers run as when started as root ({WORKER_USER}, "
                         "the default, is created if missing; never nobody)")  # fmt: skip
    ap.add_argument("--run", action="store_true", help="exec nginx in the foreground")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    args = ap.parse_args(argv)
    if args.http2 == "auto":
        version = nginx_version(args.nginx)
        on_syntax = version is not None and version >= HTTP2_ON_SINCE
    else:
        on_syntax = args.http2 == "on"
    conf = render(
        args.dir, listen=args.listen, server_name=args.server_name, cert=args.cert,
        key=args.key, proxy=args.proxy, hsts=args.hsts, http2_on_syntax=on_syntax,
        user=args.user,
    )  # fmt: skip
    if not args.run:
        print(conf)
        return 0
    err = str(args.dir.resolve() / "startup.log")
    subprocess.run([args.nginx, "-t", "-q", "-c", str(conf), "-e", err], check=True)
    os.execv(args.nginx, [args.nginx, "-c", str(conf), "-e", err])  # noqa: S606


if __name__ == "__main__":
    sys.exit(main())
