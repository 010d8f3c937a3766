"""Configured URLs as they may be logged or reported: without the credentials they carry.

`upstream.url` and an issuer's `jwks_url` may hold a `user:password@` (the config accepts it)
and a `jwks_url` a key in its query (`?key=...`): the proxy's log lines and `explain` show
such a URL with the password and every query value replaced by `[REDACTED]` (attack round 7:
both were logged in clear). The user name and the rest of the URL stay, to tell URLs apart.
"""

from __future__ import annotations

from yarl import URL

MASK = "[REDACTED]"
_QUOTED_MASK = "%5BREDACTED%5D"


def redact_url(url: str | URL, keep_query: frozenset[str] | None = None) -> str:
    """`url` as text, its password and its query values (but those named in `keep_query`,
    lower case) replaced by `[REDACTED]`. Text that is no URL is shown as `[REDACTED]`."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        if parsed.password is not None:
            parsed = parsed.with_password(MASK)
        if parsed.query:
            parsed = parsed.with_query(
                [
                    (name, value if keep_query and name.lower() in keep_query else MASK)
                    for name, value in parsed.query.items()
                ]
            )
        return str(parsed).replace(_QUOTED_MASK, MASK)
    except (TypeError, ValueError):
        return MASK
