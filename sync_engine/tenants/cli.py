"""`sync-engine sources ...`: manage registered sources through the engine's admin API.

The CLI is a client of the admin API rather than a second writer of `sources.db`: only the
running engine can start a new source's replication, stop it on pause, drop its slot and
publication on delete, and keep its in-memory auth in step with the store.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..console import OneLineParser

_ENV = "SYNC_ENGINE_"
#: A postgresql:// URL (else a keyword/value connection string).
_URI = re.compile(r"\s*postgres(ql)?://", re.IGNORECASE)


class CliError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    env_url = os.environ.get(_ENV + "ADMIN_URL")
    default_url = env_url or f"http://127.0.0.1:{os.environ.get(_ENV + 'ADMIN_PORT', '3100')}"

    def common(suppress: bool) -> OneLineParser:
        # Options work before or after the command; after it, only what is given overrides.
        c = OneLineParser(add_help=False)
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        c.add_argument(
            "--admin-url",
            default=d(default_url),
            help="the engine's admin listener (default http://127.0.0.1:3100)."
            " Env: SYNC_ENGINE_ADMIN_URL",
        )
        c.add_argument(
            "--admin-token",
            default=d(os.environ.get(_ENV + "ADMIN_TOKEN")),
            help="the engine's --admin-token. Env: SYNC_ENGINE_ADMIN_TOKEN"
            " (prefer it: flags show up in `ps`)",
        )
        c.add_argument(
            "--json",
            action="store_true",
            default=d(False),
            help="print the API's JSON instead of a table (for scripts)",
        )
        return c

    p = OneLineParser(
        prog="sync-engine sources",
        parents=[common(False)],
        description="Register and manage the Postgres databases (sources) a running engine"
        " serves. Talks to the engine's admin API (start the engine with --admin-token),"
        " not to the data directory: the running engine must start, pause and delete"
        " replication itself.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub_common = common(True)
    add = sub.add_parser(
        "add",
        parents=[sub_common],
        help="register a database; prints its source_id and secret (the secret is shown only once)",
    )
    add.add_argument("--name", required=True, help="a unique name, e.g. shop-production")
    add.add_argument(
        "--database-url",
        default=os.environ.get(_ENV + "SOURCE_DATABASE_URL"),
        help="postgresql://user@host:5432/dbname (a password in it shows up in `ps`: prefer"
        " --password-stdin or SYNC_ENGINE_SOURCE_PASSWORD); the role needs REPLICATION,"
        " CREATE on the database and must own the synced tables."
        " Env: SYNC_ENGINE_SOURCE_DATABASE_URL",
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the database password from stdin (its first line; asked without echo on"
        " a terminal) and add it to --database-url. Else the env SYNC_ENGINE_SOURCE_PASSWORD,"
        " if set, is added",
    )
    add.add_argument("--max-shapes", type=int, help="per-source shape limit (default: engine's)")
    add.add_argument(
        "--max-initial-syncs",
        type=int,
        help="per-source limit of snapshots in progress (default: engine's)",
    )
    sub.add_parser("list", parents=[sub_common], help="all sources with state, shapes and lag")
    show = sub.add_parser("show", parents=[sub_common], help="one source in detail")
    show.add_argument("source_id")
    rot = sub.add_parser(
        "rotate-secret",
        parents=[sub_common],
        help="issue a new secret; the old one keeps working for --grace-period",
    )
    rot.add_argument("source_id")
    rot.add_argument(
        "--grace-period",
        type=float,
        default=0,
        metavar="SECONDS",
        help="seconds the old secret stays valid (default 0: it stops at once; at most 30 days)",
    )
    for name, text in (
        ("pause", "stop replicating (the slot is kept: Postgres keeps WAL)"),
        ("resume", "start replicating again"),
    ):
        sp = sub.add_parser(name, parents=[sub_common], help=text)
        sp.add_argument("source_id")
    delete = sub.add_parser(
        "delete",
        parents=[sub_common],
        help="stop the source, drop its slot and publication, delete its shape logs",
    )
    delete.add_argument("source_id")
    delete.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="do not ask for confirmation (needed when stdin is not a terminal)",
    )
    return p


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    if not args.admin_token:
        raise CliError("no admin token: pass --admin-token or set SYNC_ENGINE_ADMIN_TOKEN")
    if not args.admin_url.startswith(("http://", "https://")):
        raise CliError(f"--admin-url must be an http:// or https:// URL, not {args.admin_url!r}")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 (checked: http or https)
        args.admin_url.rstrip("/") + path,
        data=data,
        method=method,
        headers={
            "authorization": f"Bearer {args.admin_token}",
            "content-type": "application/json",
            "accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (checked: http or https)
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())
            message = err.get("message") or str(err)
        except ValueError:
            message = exc.reason
        raise CliError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(
            f"cannot reach the admin API at {args.admin_url} ({reason}); is the"
            " engine running with --admin-token?"
        ) from None


def _lag(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _short(text: str | None, n: int = 60) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _details(s: dict[str, Any]) -> str:
    fields = [
        ("source_id", s["source_id"]),
        ("name", s["name"]),
        ("state", s["state"]),
        ("error", s.get("error") or "-"),
        ("database_url", s["database_url"]),
        ("shapes", str(s["shape_count"])),
        ("replication lag", _lag(s.get("replication_lag_bytes"))),
        ("initial syncs", str(s.get("initial_syncs_in_progress", 0))),
        (
            "limits",
            f"max_shapes={s['limits']['max_shapes'] or '-'}"
            f" max_initial_syncs={s['limits']['max_initial_syncs'] or '-'}",
        ),
        ("slot / publication", f"{s['slot_name']} / {s['publication_name']}"),
        ("created", s["created_at"]),
        ("secret rotated", s.get("secret_rotated_at") or "-"),
        ("old secret valid until", s.get("previous_secret_expires_at") or "-"),
        (
            "last error",
            _short(s.get("last_error"), 200)
            + (f" ({s['last_error_at']})" if s.get("last_error_at") else ""),
        ),
        ("shape URL", s.get("shape_url", "-")),
    ]
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in fields)


def _secret_block(s: dict[str, Any]) -> str:
    return (
        f"\nsecret  {s['secret']}\n"
        "        (shown only once: store it now, e.g. as the proxy's secret_env variable)\n"
        f"\ntry it:\n  curl -i '{s['shape_url']}&table=<table>&offset=-1&secret={s['secret']}'"
    )


def _database_url(args: argparse.Namespace) -> str:
    """`--database-url` with the password from stdin or the environment added, if given:
    a password on the command line shows up in `ps` and the shell's history. Never echoed
    (a terminal is asked with `getpass`); never in an error message."""
    url = args.database_url
    if not url:
        raise CliError("--database-url is required (or the env SYNC_ENGINE_SOURCE_DATABASE_URL)")
    if args.password_stdin:
        if sys.stdin.isatty():
            password = getpass.getpass("database password: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("--password-stdin: no password on stdin")
    else:
        password = os.environ.get(_ENV + "SOURCE_PASSWORD", "")
        if not password:
            return str(url)
    return with_password(str(url), password)


def with_password(url: str, password: str) -> str:
    """`url` (a postgresql:// URL or a keyword/value string) with `password` in it,
    percent-encoded or quoted as it needs; `CliError` if it has one already."""
    if _URI.match(url):
        try:
            parts = urlsplit(url.strip())
            has = parts.password is not None
        except ValueError:
            raise CliError("--database-url is not a valid URL") from None
        if has or "password=" in parts.query:
            raise CliError("--database-url has a password already: give it one way only")
        user, at, host = parts.netloc.rpartition("@")
        if not at:
            user, host = "", parts.netloc
        netloc = f"{user}:{quote(password, safe='')}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    try:
        if "password" in conninfo_to_dict(url):
            raise CliError("--database-url has a password already: give it one way only")
        return make_conninfo(url, password=password)
    except psycopg.ProgrammingError:
        raise CliError("--database-url is not a valid connection string") from None


def run(args: argparse.Namespace) -> str:
    cmd = args.command
    if cmd == "add":
        body: dict[str, Any] = {"name": args.name, "database_url": _database_url(args)}
        if args.max_shapes is not None:
            body["max_shapes"] = args.max_shapes
        if args.max_initial_syncs is not None:
            body["max_initial_syncs"] = args.max_initial_syncs
        try:
            s = _request(args, "POST", "/api/sources", body)
        except CliError as exc:
            if str(exc).startswith("cannot reach"):
                raise CliError(
                    f"{exc}\nIf the engine stopped while registering it, the source may exist"
                    " and its answer be lost: run the same command again once the engine is"
                    " back, and it answers with the same source and secret."
                ) from None
            raise
        if args.json:
            return json.dumps(s, indent=2)
        return f"Registered source {s['name']!r}.\n\n{_details(s)}\n{_secret_block(s)}"
    if cmd == "list":
        res = _request(args, "GET", "/api/sources")
        if args.json:
            return json.dumps(res, indent=2)
        rows = [
            [
                s["source_id"],
                s["name"],
                s["state"],
                str(s["shape_count"]),
                _lag(s.get("replication_lag_bytes")),
                _short(s.get("error") or s.get("last_error")),
            ]
            for s in res["sources"]
        ]
        why = (res.get("registry") or {}).get("read_only")
        if why:  # (on stderr: scripts parsing the table see it unchanged)
            print(
                f"warning: the engine's sources registry is read-only ({why}): sources are"
                " served as they are, but adding, rotating, pausing or deleting them is"
                " refused until it can be written (is the data directory's disk full?)",
                file=sys.stderr,
            )
        if not rows:
            return "No sources registered. Add one: sync-engine sources add --name NAME --database-url URL"  # noqa: E501
        return _table(rows, ["SOURCE_ID", "NAME", "STATE", "SHAPES", "LAG", "ERROR"])
    sid = args.source_id
    if cmd == "show":
        s = _request(args, "GET", f"/api/sources/{sid}")
        return json.dumps(s, indent=2) if args.json else _details(s)
    if cmd == "rotate-secret":
        s = _request(
            args,
            "POST",
            f"/api/sources/{sid}/rotate-secret",
            {"grace_period_seconds": args.grace_period},
        )
        if args.json:
            return json.dumps(s, indent=2)
        until = s.get("previous_secret_expires_at")
        old = f"the old secret works until {until}" if until else "the old secret stopped working"
        return f"New secret for {s['name']!r}; {old}.\n{_secret_block(s)}"
    if cmd in ("pause", "resume"):
        s = _request(args, "POST", f"/api/sources/{sid}/{cmd}")
        return json.dumps(s, indent=2) if args.json else f"{s['name']}: {s['state']}"
    if cmd == "delete":
        if not args.yes:
            _confirm_delete(_request(args, "GET", f"/api/sources/{sid}"))
        res = _request(args, "DELETE", f"/api/sources/{sid}")
        if args.json:
            return json.dumps(res, indent=2)
        text = f"Deleted source {res['name']!r} ({res['source_id']})."
        for w in res.get("warnings", []):
            text += f"\nwarning: {w}"
        return text
    raise CliError(f"unknown command {cmd}")


def _confirm_delete(s: dict[str, Any]) -> None:
    """Ask before dropping a slot and every shape log: clients must then resync from scratch."""
    what = (
        f"delete source {s['name']!r} ({s['source_id']}): this drops replication slot"
        f" {s['slot_name']} and publication {s['publication_name']} and deletes its"
        f" {s['shape_count']} shape logs"
    )
    if not sys.stdin.isatty():
        raise CliError(f"{what}; run again with --yes to confirm")
    sys.stderr.write(f"{what[0].upper()}{what[1:]}.\nType the source name to confirm: ")
    sys.stderr.flush()
    if sys.stdin.readline().strip() != s["name"]:
        raise CliError("not deleted")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except CliError as exc:
        print(f"sync-engine sources: {exc}", file=sys.stderr)
        return 1
    return 0
