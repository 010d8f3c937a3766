"""Connection strings with the fixed display settings every engine session uses.

Values travel as Postgres text, so the snapshot (SQL `::text`) and the replication stream
(pgoutput text tuples) must render them under identical settings, or keys and values would
differ between the two paths. Passing them as startup `options` covers both kinds of
connection, including the walsender, with no extra round trip.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

DISPLAY_SETTINGS = {
    "DateStyle": "ISO, DMY",
    "TimeZone": "UTC",
    "IntervalStyle": "iso_8601",
    "bytea_output": "hex",
    "extra_float_digits": "1",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def with_display_settings(dsn: str, application_name: str = "shapegate") -> str:
    opts = " ".join(f"-c {k}={_escape(v)}" for k, v in DISPLAY_SETTINGS.items())
    existing = conninfo_to_dict(dsn).get("options")
    if existing:
        opts = f"{existing} {opts}"
    return make_conninfo(dsn, options=opts, application_name=application_name)


def redact_dsn(dsn: str) -> str:
    """The connection string without its password, for logs and error messages."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable connection string>"
    params.pop("password", None)
    params.pop("options", None)
    return make_conninfo("", **{k: str(v) for k, v in params.items() if v is not None})
