"""What a client asks for, in one place: the shape definition plus protocol parameters.

`http.params` builds a `ShapeRequest` from a query string (and a POST subset body); the policy
(`policy.evaluate`) reads it and answers with a `Decision`; `upstream.url` turns the decision
into the engine URL. Nothing here is authorised yet: it is the client's word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SubsetRequest:
    """A subset snapshot request (`subset__*` params or a POST body)."""

    where: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None
    offset: int | None = None
    order_by: str | None = None


@dataclass(frozen=True, slots=True)
class ShapeRequest:
    """What the client asked for, parsed but not yet authorised."""

    table: str | None = None
    where: str | None = None
    params: Mapping[int, str] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None
    #: `columns` as the client wrote it, and the engine's words for it when it does not parse
    #: (then `columns` is None): said only if the policy needs the list, else the engine
    #: reads the text itself, after the table (as it refuses them: a missing table first).
    columns_text: str | None = None
    columns_error: str | None = None
    #: `queryable_columns` as the client wrote it (Electric's allow-list of the columns its
    #: subset clauses and `columns` may name): sent as is when the rule hides no column.
    queryable_columns_text: str | None = None
    replica: str | None = None
    #: The `params[...]` keys as the client wrote them, in their numbers' order, when one is
    #: not the plain number (`params[01]`); else None. The engine (as Electric) looks `$1` up
    #: under the key `1` only, so such a request is its 400 (`parameter $1 was not provided`,
    #: or `parameter value for $01 was not used`); the keys go to it as written so that it
    #: answers exactly that (the proxy read `01` as `$1` and served rows).
    param_keys: tuple[str, ...] | None = None
    #: Allow-listed protocol parameters (offset, handle, live, cursor...), in a fixed order.
    protocol: tuple[tuple[str, str], ...] = ()
    subset: SubsetRequest | None = None

    @property
    def wants_sse(self) -> bool:
        """Electric's reading: present and not "false"; the old alias counts when absent."""
        values = dict(self.protocol)
        value = values.get("live_sse", values.get("experimental_live_sse"))
        return value is not None and value != "false"

    @property
    def live(self) -> bool:
        """`live` present and not "false" (Electric reads a bare `?live` as true)."""
        value = dict(self.protocol).get("live")
        return value is not None and value != "false"
