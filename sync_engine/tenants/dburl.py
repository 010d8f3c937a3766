"""Database connection strings of sources: checked on registration, redacted for display.

Passwords never leave the store: every output (API, CLI, dashboard, logs) shows the URL
with the password replaced by `****`.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .errors import InvalidInput

_SCHEMES = ("postgres", "postgresql")
_MAX_LEN = 4096


def check_database_url(url: object) -> str:
    """The connection string, stripped, or InvalidInput saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput(
            "database_url",
            "database_url is required: a Postgres connection string such as"
            " postgresql://user:password@host:5432/dbname",
        )
    url = url.strip()
    if len(url) > _MAX_LEN:
        raise InvalidInput("database_url", f"database_url is longer than {_MAX_LEN} characters")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            raise InvalidInput(
                "database_url",
                f"database_url must start with postgresql:// or postgres://, not {scheme}://",
            )
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            raise InvalidInput("database_url", f"database_url is not a valid URL: {exc}") from None
    elif "=" not in url:
        raise InvalidInput(
            "database_url",
            "database_url is not a Postgres connection string:"
            " use postgresql://user:password@host:5432/dbname",
        )
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        reason = _clean(exc, url)
        raise InvalidInput(
            "database_url", f"database_url is not a valid Postgres connection string: {reason}"
        ) from None
    if "replication" in params:
        raise InvalidInput(
            "database_url",
            "database_url must not set `replication`: the engine"
            " opens its replication connections itself",
        )
    return url


def _clean(exc: Exception, url: str) -> str:
    # psycopg may quote the whole string, password included: never echo it back.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if url in text:
        text = text.replace(f'"{url}"', "the URL").replace(url, "the URL")
    return text


def redact_url(url: str) -> str:
    """The connection string with any password replaced by ****."""
    if "://" in url:
        try:
            parts = urlsplit(url)
            netloc = parts.netloc
            if "@" in netloc:
                userinfo, host = netloc.rsplit("@", 1)
                if ":" in userinfo:
                    userinfo = userinfo.split(":", 1)[0] + ":****"
                netloc = f"{userinfo}@{host}"
            query = urlencode(
                [(k, "****" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)],
                safe="*",
            )
            return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        except ValueError:
            return "<invalid connection string>"
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "<invalid connection string>"
    if "password" in params:
        params["password"] = "****"  # noqa: S105
    return " ".join(f"{k}={v}" for k, v in params.items())


def describe_target(url: str) -> str:
    """`user@host:port/dbname`, for messages."""
    try:
        p = conninfo_to_dict(url)
    except psycopg.Error:
        return "the database"
    host = str(p.get("host") or "localhost")
    port = str(p.get("port") or "5432")
    user = str(p.get("user") or "")
    db = str(p.get("dbname") or user)
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def user_of(url: str) -> str | None:
    try:
        user = conninfo_to_dict(url).get("user")
    except psycopg.Error:
        return None
    return str(user) if user else None
