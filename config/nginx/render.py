#!/usr/bin/env python3
"""Render the shapegate nginx config into a directory and optionally run nginx there.

    python3 config/nginx/render.py --listen 127.0.0.1:3002 --engine 127.0.0.1:3000 \
        --dir /var/tmp/shapegate-nginx [--run]

Writes DIR/nginx.conf (standalone: foreground, pid and temp files in DIR) and
DIR/shapegate.conf (the http-context part), with the cache in DIR/cache. With --run, checks
the config (`nginx -t`) and execs `nginx -c DIR/nginx.conf` in the foreground. Only the
`${SHAPEGATE_*}` placeholders are replaced; nginx's own `$variables` are left alone.
Standard library only.
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


def render(directory: Path, listen: str, engine: str) -> Path:
    """Write nginx.conf and shapegate.conf into `directory`; return the nginx.conf path."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cache").mkdir(mode=0o700, exist_ok=True)
    values = {
        "SHAPEGATE_NGINX_DIR": str(directory),
        "SHAPEGATE_CACHE_DIR": str(directory / "cache"),
        "SHAPEGATE_LISTEN": listen,
        "SHAPEGATE_ENGINE": engine,
    }
    for name in ("nginx.conf", "shapegate.conf"):
        text = render_text((HERE / name).read_text(), values)
        if name == "nginx.conf" and os.geteuid() == 0:
            # Started as root, nginx's workers drop to `nobody`: give them the directory.
            user = pwd.getpwnam("nobody")
            group = grp.getgrgid(user.pw_gid).gr_name
            text = f"user nobody {group};\n" + text
            for path in (directory, directory / "cache"):
                os.chown(path, user.pw_uid, user.pw_gid)
        (directory / name).write_text(text)
    return directory / "nginx.conf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default=os.environ.get("SHAPEGATE_LISTEN", "127.0.0.1:3002"),
                    help="address:port nginx listens on (env SHAPEGATE_LISTEN)")  # fmt: skip
    ap.add_argument("--engine", default=os.environ.get("SHAPEGATE_ENGINE", "127.0.0.1:3000"),
                    help="address:port of sync-engine (env SHAPEGATE_ENGINE)")  # fmt: skip
    ap.add_argument("--dir", required=True, type=Path, help="scratch directory for nginx")
    ap.add_argument("--run", action="store_true", help="exec nginx in the foreground")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    args = ap.parse_args(argv)
    conf = render(args.dir, args.listen, args.engine)
    if not args.run:
        print(conf)
        return 0
    err = str(args.dir.resolve() / "startup.log")
    subprocess.run([args.nginx, "-t", "-q", "-c", str(conf), "-e", err], check=True)
    os.execv(args.nginx, [args.nginx, "-c", str(conf), "-e", err])  # noqa: S606


if __name__ == "__main__":
    sys.exit(main())
