#!/usr/bin/env python3
"""Render the shapegate nginx config into a directory and optionally run nginx there.

    python3 config/nginx/render.py --listen 127.0.0.1:3002 --engine 127.0.0.1:3000 \
        --dir /var/tmp/shapegate-nginx [--user NAME] [--run]

Writes DIR/nginx.conf (standalone: foreground, pid and temp files in DIR) and
DIR/shapegate.conf (the http-context part), with the cache in DIR/cache (mode 0700). With
--run, checks the config (`nginx -t`) and execs `nginx -c DIR/nginx.conf` in the foreground.
Only the `${SHAPEGATE_*}` placeholders are replaced; nginx's own `$variables` are left alone.
Standard library only.

Who reads the cache: every cache file begins with its key, the engine URL with the engine
`secret`. Started by a user other than root, nginx runs as that user and so does its cache.
Started as root, nginx's workers drop to an unprivileged account, which owns the directory:
`--user NAME` (an existing account of the tier's own), by default `shapegate-nginx`, a
system account (no login, no home) made here if it does not exist. Never `nobody`, nginx's
own default: any other service running as `nobody` could read the secret.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"\$\{(SHAPEGATE_[A-Z_]+)\}")


def render_text(text: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"no value for ${{{name}}}")
        return values[name]

    return PLACEHOLDER.sub(sub, text)


#: The account nginx's workers run as when it is started as root (see the module's text).
WORKER_USER = "shapegate-nginx"


def worker_account(name: str) -> pwd.struct_passwd:
    """The account `name` for nginx's workers; `WORKER_USER` is made if missing (as root)."""
    if name == "nobody":
        raise SystemExit(
            "render.py: nginx's workers must not run as `nobody`: the cache holds the engine "
            "secret, and any other service running as nobody could read it"
        )
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
        account = pwd.getpwnam(name)  # (also made by another render.py at the same time)
    except KeyError:
        raise SystemExit(
            f"render.py: could not create the system user {name!r} for nginx's workers "
            f"({made.stderr.strip() or made.returncode}); make one and pass --user NAME"
        ) from None
    if made.returncode == 0:
        print(f"render.py: created the system user {name!r} for nginx's workers", file=sys.stderr)
    return account


def render(directory: Path, listen: str, engine: str, user: str = WORKER_USER) -> Path:
    """Write nginx.conf and shapegate.conf into `directory`; return the nginx.conf path.
    `user`: the account nginx's workers run as when started as root (see the module's text);
    not used otherwise."""
    account = worker_account(user) if os.geteuid() == 0 else None
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    cache = directory / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    cache.chmod(0o700)  # (an existing one kept its mode: the cache files hold the secret)
    if account is not None:
        for path in (directory, cache):
            os.chown(path, account.pw_uid, account.pw_gid)
    values = {
        "SHAPEGATE_NGINX_DIR": str(directory),
        "SHAPEGATE_CACHE_DIR": str(directory / "cache"),
        "SHAPEGATE_LISTEN": listen,
        "SHAPEGATE_ENGINE": engine,
    }
    for name in ("nginx.conf", "shapegate.conf"):
        text = render_text((HERE / name).read_text(), values)
        if name == "nginx.conf" and account is not None:
            # Started as root, nginx's workers drop to this account: it owns the directory.
            group = grp.getgrgid(account.pw_gid).gr_name
            text = f"user {account.pw_name} {group};\n" + text
        (directory / name).write_text(text)
    return directory / "nginx.conf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default=os.environ.get("SHAPEGATE_LISTEN", "127.0.0.1:3002"),
                    help="address:port nginx listens on (env SHAPEGATE_LISTEN)")  # fmt: skip
    ap.add_argument("--engine", default=os.environ.get("SHAPEGATE_ENGINE", "127.0.0.1:3000"),
                    help="address:port of sync-engine (env SHAPEGATE_ENGINE)")  # fmt: skip
    ap.add_argument("--dir", required=True, type=Path, help="scratch directory for nginx")
    ap.add_argument("--user", default=WORKER_USER,
                    help="account nginx's workers run as when started as root (never nobody; "
                         f"{WORKER_USER}, the default, is created if missing)")  # fmt: skip
    ap.add_argument("--run", action="store_true", help="exec nginx in the foreground")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    args = ap.parse_args(argv)
    conf = render(args.dir, args.listen, args.engine, args.user)
    if not args.run:
        print(conf)
        return 0
    err = str(args.dir.resolve() / "startup.log")
    subprocess.run([args.nginx, "-t", "-q", "-c", str(conf), "-e", err], check=True)
    os.execv(args.nginx, [args.nginx, "-c", str(conf), "-e", err])  # noqa: S606


if __name__ == "__main__":
    sys.exit(main())
