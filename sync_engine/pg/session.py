"""Connection strings with the fixed display settings every engine session uses.

Values travel as Postgres text, so the snapshot (SQL `::text`) and the replication stream
(pgoutput text tuples) must render them under identical settings, or keys and values would
differ between the two paths. Passing them as startup `options` covers both kinds of
connection, including the walsender, with no extra round trip.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

DISPLAY_SETTINGS = {
    "DateStyle": "ISO, DMY",
    "TimeZone": "UTC",
    "IntervalStyle": "iso_8601",
    "bytea_output": "hex",
    "extra_float_digits": "1",
    # How Postgres reads the SQL the engine sends, fixed whatever a database or role sets
    # (`ALTER DATABASE ... SET`): the engine parses and deparses clauses with pglast under
    # these defaults and evaluates live rows by them, so the snapshot must be read the same.
    # Off, the first reads a backslash in '...' as an escape (a quote could end a string
    # early); on, the second turns `x = NULL` into `x IS NULL`; off, the third reads NULL
    # in an array literal as the string 'NULL'.
    "standard_conforming_strings": "on",
    "transform_null_equals": "off",
    "array_nulls": "on",
    # How a time zone abbreviation in text is read ('... EST' cast to timestamptz, asked of
    # Postgres for a live row): a database's own table (`Australia`: EST = +10) would judge
    # snapshot rows otherwise than the engine's long-lived sessions judge live ones.
    "timezone_abbreviations": "Default",
}


#: Names the engine sends unqualified (`lower`, `=`, `string_agg`, `text`) resolve to
#: Postgres's own, whatever a role or database sets: with `public` on the path, anyone who
#: may create a function there could add a better-matching overload (`lower(varchar)`) that
#: the snapshot query would run with the engine's rights, and that would judge rows otherwise
#: than the engine does on live changes (CVE-2018-1058). The engine names every table with
#: its schema, and `format_type` qualifies a type the path does not show; `pg_temp` is
#: last so no temporary object shadows one. Only the engine's own sessions get this: a
#: person's or a test's session may create unqualified objects as usual.
#:
#: `row_security` off: a table with FORCE ROW LEVEL SECURITY owned by the engine's role (not
#: a superuser, no BYPASSRLS) had its snapshot filtered by the policies while the stream,
#: which no policy filters, brought every row's changes (wherefuzz 08:23): such a query now
#: fails ("query would be affected by row-level security policy"), a 400 naming the table
#: (`snapshot.errors.to_engine_error`), so a shape is all of the table's rows or none.
ENGINE_SETTINGS = {
    **DISPLAY_SETTINGS,
    "search_path": "pg_catalog,pg_temp",
    "row_security": "off",
}


#: TCP keepalives and a bound on unacknowledged sends, unless the database URL sets its own:
#: a connection to a server behind a network partition fails within about half a minute
#: (its idle probes or its writes go unanswered) instead of the kernel's 15 minutes or more.
#: A stopped server's kernel still answers them: the replication stream also asks for
#: replies of its own (`replication.stream`), and catalog queries are bounded (`tables`).
TCP_SETTINGS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def with_display_settings(
    dsn: str, application_name: str = "shapegate", settings: dict[str, str] = DISPLAY_SETTINGS
) -> str:
    opts = " ".join(f"-c {k}={_escape(v)}" for k, v in settings.items())
    given = conninfo_to_dict(dsn)
    existing = given.get("options")
    if existing:
        opts = f"{existing} {opts}"
    tcp = {k: v for k, v in TCP_SETTINGS.items() if k not in given}
    # The engine reads every byte Postgres sends as UTF-8. A libpq keyword, not a `-c` in
    # `options`: it beats PGCLIENTENCODING, the URL's own and a database's or role's `SET
    # client_encoding` (LATIN1 made the snapshot a 200 of raw 0xE9 bytes, not JSON).
    return make_conninfo(
        dsn, options=opts, application_name=application_name, client_encoding="UTF8", **tcp
    )


def engine_conninfo(dsn: str) -> str:
    """The connection string of every session the engine opens (`ENGINE_SETTINGS`)."""
    return with_display_settings(dsn, settings=ENGINE_SETTINGS)


#: libpq connection parameters whose values are secrets: the password, the client key's
#: passphrase, an OAuth client secret, SCRAM keys. Never logged or shown.
SECRET_PARAMS = (
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
)


def dbname_may_hold_secret(dsn: str) -> bool:
    """A URL with an @ after its host (`postgresql://u:2024/Pw@h/d`): a / in the user name or
    password ended the host, and the database name libpq reads (`Pw@h/d`) holds the secret's
    tail. Refused on registration (`tenants.dburl`); a source stored before is shown without
    its database name."""
    if "://" not in dsn:
        return False
    try:
        return "@" in urlsplit(dsn.strip()).path
    except ValueError:
        return True


def redact_dsn(dsn: str) -> str:
    """The connection string without its secrets (and `options`), for logs and errors."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable connection string>"
    for key in (*SECRET_PARAMS, "options"):
        params.pop(key, None)
    if dbname_may_hold_secret(dsn):
        params.pop("dbname", None)
    return make_conninfo("", **{k: str(v) for k, v in params.items() if v is not None})
