"""The `limits:` sections of the proxy config: per-principal admission, in YAML.

```yaml
limits:                  # every principal (token subject, or client address when anonymous)
  max_concurrent: 64     # engine requests open at once, held long-polls and SSE included
  rate: 100              # engine requests per second, sustained ...
  burst: 500             # ... with bursts up to this many
  retry_after: 5         # Retry-After on a 429 for too many open requests and on a 503:
                         # between this and twice this, so refused clients spread out
  pool_wait: 5           # max wait (s) for a free engine connection, then 503
  max_held: 256          # client requests held open at once (live long-polls and SSE
                         # streams), each client counted, identical ones joined included
  new_shape_rate: 2      # shapes new to this principal per second, sustained ...
  new_shape_burst: 200   # ... with bursts up to this many
  max_shapes: unlimited  # shapes one principal may have asked for within shape_window (the
  shape_window: 60       # default); with the engine's --max-shapes, set it to a share of it
  max_subsets: 4         # subset snapshots in flight at once (unlimited: no bound; see
                         # proxy.limits.subsets): half the engine's subset query pool (8),
                         # a share of its subset spool budget; more wait for a place ...
  subset_wait: 30        # ... up to this many seconds, then 429 `too_many_subsets`
tables:
  items:
    allow:
      - when: {role: service}
        all_rows: true
        limits: {max_concurrent: 1000, rate: 1000, burst: 2000}   # a rule may raise or lower
```

Only requests that reach the engine count: an answer from the proxy's cache, or a request that
joins an identical one already in flight, costs the engine nothing and is not charged. Distinct
`cache-buster` values make distinct engine requests, so they are charged. The defaults let an
app hold dozens of live shapes per user, and keep one user from taking the engine connection
pool from everyone else. An SSE client's response going on over an engine stream of its own
(it fell behind its shape's shared stream) or the shape's next stream is the same admitted
request: it is counted among the open engine requests but never refused by these limits
(`Admission.admit(continuing=True)`; `max_held` bounds such streams, one per held client).

`max_held` counts client requests, not engine requests: every live request (a long-poll
waiting for a change, an SSE stream) holds a client connection for as long as it is open,
whether it has an engine request of its own, joins an identical one in flight, or is fed by a
shared SSE stream. Held connections are never closed to make room, so without this bound one
principal repeating one identical live URL (each join free against `max_concurrent`) filled
the proxy's connection cap, and every other client got 503 "Too many connections" for as long
as it held them. Its default (256) is independent of `max_concurrent`, so a rule that lifts
`max_concurrent` (an open config's anonymous rule) keeps it; a deployment whose clients all
reach the proxy from one address (behind a CDN that does not collapse live requests) raises it.

`new_shape_rate` / `new_shape_burst` bound how fast one principal makes the engine create
shapes. An engine request of a shape definition (table, where, columns, replica, params) that
is not among the last `REMEMBERED_SHAPES` (512) its principal asked for takes a token from a
second bucket; with none left it is a 429 `too_many_new_shapes` whose `Retry-After` is the time
until the next token. Any offset counts, not only `-1`: the engine creates the shape of any
definition it does not have, whatever the offset and handle (a stale handle then gets a 409),
so counting only initial requests left a way around. Repeats of a definition already asked for
are free: a client's long-polls, its refetch after a 409, a page opened again. Why: with the
engine's `--max-shapes`, one principal making ~90 new shapes a second (well under `rate`) had
every other user's idle shapes evicted between their chunk requests, and a slow client's first
sync never finished. The defaults (200 at once, then 2 a second) are far above an app opening
a few pages of 20-50 shapes each; the engine's shapes cost it memory and a snapshot query each.

`max_shapes` bounds how many shapes one principal may *keep*: the distinct definitions it asked
for within the last `shape_window` seconds (a shape followed by a live client is asked for every
long-poll, 20 s). Past it, a request for another one is a 429 `too_many_shapes` whose
`Retry-After` is when the least recently asked for leaves the window. Why: the engine's
`--max-shapes` never evicts a shape asked for within its last minute, so one principal keeping
200 shapes fresh (re-asking each every 30 s, free of the new-shape budget) filled an engine at
`--max-shapes 200` and every other user's new shape was a 503 `shape_limit_reached`. Off by
default (no app is refused for its number of shapes); with `--max-shapes N` set, give each
principal a share of N (and `shape_window` at least the engine's minimum idle age, 60 s).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: How many of the shape definitions it asked for most recently a principal may ask for again
#: without a new-shape token: twice the live requests it may hold (`max_held`, 256), so every
#: shape it follows fits with room for passing ones. Past it the least recently asked for is
#: forgotten (asking for it again costs one token, nothing else): the state stays bounded.
#: Also the most `max_shapes` may be (a principal's shapes are counted among these).
REMEMBERED_SHAPES = 512
#: `limits.max_shapes` / `limits.max_subsets: unlimited`: no bound (null is refused).
UNLIMITED = "unlimited"


def _bound_given(name: str, value: object) -> object:
    """A global bound that may be lifted: `unlimited` lifts it; null is refused. `max_subsets:`
    left empty (or `${MAX_SUBSETS}` after an envsubst with the variable unset) read as "no
    bound", and the per-principal cap silently went (proxycfg, 2026-12-07; as `max_lifetime`).
    (Runs only for a value given: left out, the default holds.)"""
    if value is None:
        raise ValueError(
            f"empty (null): give a number, or write {name}: {UNLIMITED} for no bound (an unset "
            f"variable in {name}: ${{VAR}} leaves it empty)"
        )
    if value == UNLIMITED:
        return None
    return value


class _Model(BaseModel):
    # allow_inf_nan=False: a quoted "inf", "Infinity" or "1e999" became inf after the YAML
    # check (`check_number_settings` sees only floats): every number setting refuses it.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RuleLimits(_Model):
    """A rule's overrides of the global limits; what it leaves out is inherited."""

    max_concurrent: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    max_held: int | None = Field(default=None, ge=1)
    new_shape_rate: float | None = Field(default=None, gt=0)
    new_shape_burst: int | None = Field(default=None, ge=1)
    max_shapes: int | None = Field(default=None, ge=1, le=REMEMBERED_SHAPES)
    max_subsets: int | None = Field(default=None, ge=1)


class LimitsConfig(_Model):
    """Per-principal limits applied to every request, and the wait for a pooled connection."""

    max_concurrent: int = Field(
        default=64, ge=1, description="engine requests one principal may have open at once"
    )
    rate: float = Field(default=100, gt=0, description="engine requests per second, sustained")
    burst: int = Field(default=500, ge=1, description="engine requests in a burst")
    retry_after: int = Field(
        default=5, ge=1, description="Retry-After on a 429 for open requests and on a 503"
    )
    pool_wait: float = Field(
        default=5, ge=0, description="max wait for a free engine connection, then 503"
    )
    max_held: int = Field(
        default=256,
        ge=1,
        description="live client requests (long-polls, SSE) one principal may hold open at once",
    )
    new_shape_rate: float = Field(
        default=2,
        gt=0,
        description="shapes new to one principal per second that it may have the engine make, "
        "sustained (its repeats of a shape are free)",
    )
    new_shape_burst: int = Field(
        default=200, ge=1, description="shapes new to one principal in a burst"
    )
    max_shapes: int | None = Field(
        default=None,
        ge=1,
        le=REMEMBERED_SHAPES,
        description="shapes one principal may have asked for within shape_window (unlimited, "
        "the default: no bound; null is refused); with the engine's --max-shapes, a share of it",
    )
    shape_window: float = Field(
        default=60,
        gt=0,
        description="seconds a shape counts against max_shapes after it was last asked for "
        "(at least the engine's minimum idle age before eviction, 60 s)",
    )
    max_subsets: int | None = Field(
        default=4,
        ge=1,
        description="subset snapshots one principal may have in flight at once, until each "
        "answer is handed over (unlimited: no bound; null is refused); half the engine's "
        "subset query pool (8), "
        "and a share of its subset spool budget",
    )
    subset_wait: float = Field(
        default=30,
        ge=0,
        description="seconds a principal's subset beyond max_subsets waits for one of its "
        "places before a 429 (0: refused at once)",
    )

    @field_validator("max_shapes", "max_subsets", mode="before")
    @classmethod
    def _unlimited_in_words(cls, value: object, info: ValidationInfo) -> object:
        return _bound_given(info.field_name or "limit", value)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The limits that apply to one request: the global ones with its rule's overrides."""

    max_concurrent: int = 64
    rate: float = 100.0
    burst: int = 500
    retry_after: int = 5
    pool_wait: float = 5.0
    max_held: int = 256
    new_shape_rate: float = 2.0
    new_shape_burst: int = 200
    max_shapes: int | None = None
    shape_window: float = 60.0
    max_subsets: int | None = 4
    subset_wait: float = 30.0
    #: The shape definition the request names (`proxy.upstream.url.definition_key`), or None
    #: when its engine request makes no shape (a DELETE): an engine request of a definition
    #: new to its principal is charged to the new-shape bucket (`proxy.limits.admission`).
    #: Carried here because a request's settings are made once with its other decisions.
    shape: str | None = None


def resolve(
    global_limits: LimitsConfig, rule: RuleLimits | None, *, shape: str | None = None
) -> LimitSettings:
    """Merge a rule's overrides into the global limits, for a request naming `shape`."""
    if rule is None:
        return LimitSettings(
            max_concurrent=global_limits.max_concurrent,
            rate=global_limits.rate,
            burst=global_limits.burst,
            retry_after=global_limits.retry_after,
            pool_wait=global_limits.pool_wait,
            max_held=global_limits.max_held,
            new_shape_rate=global_limits.new_shape_rate,
            new_shape_burst=global_limits.new_shape_burst,
            max_shapes=global_limits.max_shapes,
            shape_window=global_limits.shape_window,
            max_subsets=global_limits.max_subsets,
            subset_wait=global_limits.subset_wait,
            shape=shape,
        )
    return LimitSettings(
        max_concurrent=rule.max_concurrent or global_limits.max_concurrent,
        rate=rule.rate or global_limits.rate,
        burst=rule.burst or global_limits.burst,
        retry_after=global_limits.retry_after,
        pool_wait=global_limits.pool_wait,
        max_held=rule.max_held or global_limits.max_held,
        new_shape_rate=rule.new_shape_rate or global_limits.new_shape_rate,
        new_shape_burst=rule.new_shape_burst or global_limits.new_shape_burst,
        max_shapes=rule.max_shapes or global_limits.max_shapes,
        shape_window=global_limits.shape_window,
        max_subsets=rule.max_subsets or global_limits.max_subsets,
        subset_wait=global_limits.subset_wait,
        shape=shape,
    )
