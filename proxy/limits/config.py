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
pool from everyone else.

`max_held` counts client requests, not engine requests: every live request (a long-poll
waiting for a change, an SSE stream) holds a client connection for as long as it is open,
whether it has an engine request of its own, joins an identical one in flight, or is fed by a
shared SSE stream. Held connections are never closed to make room, so without this bound one
principal repeating one identical live URL (each join free against `max_concurrent`) filled
the proxy's connection cap, and every other client got 503 "Too many connections" for as long
as it held them. Its default (256) is independent of `max_concurrent`, so a rule that lifts
`max_concurrent` (an open config's anonymous rule) keeps it; a deployment whose clients all
reach the proxy from one address (behind a CDN that does not collapse live requests) raises it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleLimits(_Model):
    """A rule's overrides of the global limits; what it leaves out is inherited."""

    max_concurrent: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    max_held: int | None = Field(default=None, ge=1)


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


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The limits that apply to one request: the global ones with its rule's overrides."""

    max_concurrent: int = 64
    rate: float = 100.0
    burst: int = 500
    retry_after: int = 5
    pool_wait: float = 5.0
    max_held: int = 256


def resolve(global_limits: LimitsConfig, rule: RuleLimits | None) -> LimitSettings:
    """Merge a rule's overrides into the global limits."""
    base = LimitSettings(
        max_concurrent=global_limits.max_concurrent,
        rate=global_limits.rate,
        burst=global_limits.burst,
        retry_after=global_limits.retry_after,
        pool_wait=global_limits.pool_wait,
        max_held=global_limits.max_held,
    )
    if rule is None:
        return base
    return LimitSettings(
        max_concurrent=rule.max_concurrent or base.max_concurrent,
        rate=rule.rate or base.rate,
        burst=rule.burst or base.burst,
        retry_after=base.retry_after,
        pool_wait=base.pool_wait,
        max_held=rule.max_held or base.max_held,
    )
