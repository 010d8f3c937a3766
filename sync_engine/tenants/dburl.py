"""Database connection strings of sources: checked on registration, redacted for display.

Passwords never leave the store: every output (API, CLI, dashboard, logs) shows the URL
with the password replaced by `****`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..pg.session import SECRET_PARAMS as _SECRET_KEYS
from ..pg.session import dbname_may_hold_secret
from .errors import InvalidInput

_SCHEMES = ("postgres", "postgresql")
#: A URL's scheme (RFC 3986): only that is a URL. Anything else with "://" in it is a
#: keyword/value string (`host=db password=a://b`), and its text before "://" (a password)
#: must not be quoted back as a "scheme".
_URL_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]{0,31})://")
_MAX_LEN = 4096
#: libpq's connection parameter names: quoted in its messages, they are safe to show.
_KEYWORDS = frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())


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
    if "\0" in url:  # libpq takes C strings: no connection could ever be made with it
        raise InvalidInput("database_url", "database_url must not contain a NUL character")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (`"\ud800"` in the JSON): not text libpq reads
        raise InvalidInput("database_url", "database_url must be valid Unicode text") from None
    url_scheme = _URL_SCHEME.match(url)
    if url_scheme is not None:
        scheme = url_scheme.group(1).lower()
        if scheme not in _SCHEMES:
            raise InvalidInput(
                "database_url",
                f"database_url must start with postgresql:// or postgres://, not {scheme}://",
            )
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            # (not quoted: urlsplit's message quotes what it took for the port, which is the
            # password's first part when the password has an unencoded / ? or #)
            if "out of range" in str(exc):
                message = "database_url is not a valid URL: its port is out of range 0-65535"
            else:
                reason = "its port is not a number" if "Port" in str(exc) else "invalid host"
                message = (
                    f"database_url is not a valid URL ({reason}); a password with / ? # @ : or"
                    " % in it must be percent-encoded (/ as %2F)"
                )
            raise InvalidInput("database_url", message) from None
        if parts.netloc.count("@") > 1:
            # libpq takes the first @ (password `pw9x8`, host `zz@h`), urlsplit the last:
            # the password's tail became a host shown in the listing, errors and the log.
            raise InvalidInput(
                "database_url",
                "database_url is not a valid URL (more than one @ before the host): an @ in"
                " the user name or its secret must be percent-encoded, as %40",
            )
        if "@" in parts.path:
            # A / in the user name or password ends the host for urlsplit and libpq alike:
            # `postgresql://u:2024/Pw@h/d` is host `u`, port 2024, database `Pw@h/d`, so the
            # password's tail was shown as the database name (listing, log, every error).
            raise InvalidInput(
                "database_url",
                "database_url is not a valid URL (an @ after the host): a / ? # @ : or % in"
                " the user name or its secret must be percent-encoded (/ as %2F), and an @ in"
                " the database name too (as %40)",
            )
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
    except UnicodeDecodeError:  # a percent-escape that is not UTF-8 (`%ff`)
        raise InvalidInput(
            "database_url",
            "database_url is not a valid Postgres connection string: a percent-encoded part"
            " is not UTF-8",
        ) from None
    if "replication" in params:
        raise InvalidInput(
            "database_url",
            "database_url must not set `replication`: the engine"
            " opens its replication connections itself",
        )
    return url


#: What a libpq message whose quoted part is hidden (`_clean`) is about, as a hint.
_HINTS = {
    'missing "=" after': "a value with a space in it must be in single quotes, as"
    " password='a b'; a ' or \\ in it escaped with \\",
    "invalid connection option": "a parameter name libpq does not know: a misspelt name, or"
    " a word of an unquoted value with a space in it",
    "invalid percent-encoded token": "a % in a URL starts a two-digit hex escape: write a %"
    " in the user name or password as %25",
    "invalid URI query parameter": "a parameter name after ? that libpq does not know",
    "missing key/value separator": "each parameter after ? is name=value, joined by &",
}


def _clean(exc: Exception, url: str) -> str:
    # libpq quotes the part it could not read, which may be the whole string or a password
    # (`missing "=" after "<a password>"`, `invalid percent-encoded token: "<a password>"`):
    # never echo it back, unless it is a parameter name; say what kind of part it is instead.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if url in text:
        text = text.replace(f'"{url}"', "the URL").replace(url, "the URL")
    cleaned = re.sub(
        r'"([^"]*)"', lambda m: m[0] if m[1] in _KEYWORDS or m[1] == "=" else '"…"', text
    )
    if cleaned != text:
        hint = next((h for key, h in _HINTS.items() if text.startswith(key)), None)
        if hint is not None:
            cleaned += f" ({hint})"
    return cleaned


def redact_url(url: str) -> str:
    """The connection string with any password (and sslpassword) replaced by ****.

    A URL is shown as written, its secrets masked, when Python reads its password where
    libpq does; where they disagree (`postgresql://u:123?x@h/d` is password `123?x` to
    libpq, host `u` port 123 to `urlsplit`), it is shown as libpq's key=value pairs, so no
    part of a password can show.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        params = {}
    if dbname_may_hold_secret(url):
        params.pop("dbname", None)
    elif "://" in url:
        try:
            shown, masked = _redact_uri(url)
        except ValueError:
            return "<invalid connection string>"
        secrets = {str(params[k]) for k in _SECRET_KEYS if params.get(k)}
        if secrets <= masked:
            return shown
    elif not params:
        return "<invalid connection string>"
    return " ".join(f"{k}={'****' if k in _SECRET_KEYS else v}" for k, v in params.items())


def _redact_uri(url: str) -> tuple[str, set[str]]:
    """The URL with its secrets masked, and the secret values masked (as urlsplit reads them)."""
    masked: set[str] = set()
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
            masked.add(unquote(password))
            userinfo = user + ":****"
        netloc = f"{userinfo}@{host}"
    pairs = []
    for k, v in parse_qsl(parts.query):
        if k.lower() in _SECRET_KEYS:
            masked.add(v)
            v = "****"
        pairs.append((k, v))
    query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), masked


def describe_target(url: str) -> str:
    """`user@host:port/dbname`, for messages."""
    try:
        p = conninfo_to_dict(url)
    except psycopg.Error:
        return "the database"
    host = str(p.get("host") or "localhost")
    port = str(p.get("port") or "5432")
    user = str(p.get("user") or "")
    db = "****" if dbname_may_hold_secret(url) else str(p.get("dbname") or user)
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def user_of(url: str) -> str | None:
    try:
        user = conninfo_to_dict(url).get("user")
    except psycopg.Error:
        return None
    return str(user) if user else None
