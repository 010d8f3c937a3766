"""Per-principal admission, the token bucket, URL bounds and error-body cleaning (pure)."""

from __future__ import annotations

import asyncio
import json

import pytest
from yarl import URL

from proxy.limits.admission import Admission, TooManyRequests, UpstreamBusy, principal_for
from proxy.limits.bucket import TokenBucket, retry_after_seconds
from proxy.limits.config import LimitsConfig, LimitSettings, RuleLimits, resolve
from proxy.limits.upstream import (
    MAX_REQUEST_TARGET,
    UriTooLong,
    check_fits,
    sanitise_error_body,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- token bucket ----------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(3, now=0.0)
    assert [bucket.take(2.0, 3, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(2.0, 3, 0.0) == pytest.approx(0.5)  # next token in 1/rate seconds
    assert bucket.take(2.0, 3, 0.5) == 0.0
    assert bucket.take(2.0, 3, 0.5) > 0
    assert bucket.full(2.0, 3, 2.0)  # 1.5 s refills 3 tokens
    assert not bucket.full(2.0, 3, 1.0)


def test_bucket_never_holds_more_than_its_capacity() -> None:
    bucket = TokenBucket(2, now=0.0)
    bucket.take(1.0, 2, 0.0)
    assert bucket.take(1.0, 2, 1000.0) == 0.0
    assert bucket.take(1.0, 2, 1000.0) == 0.0
    assert bucket.take(1.0, 2, 1000.0) > 0


def test_bucket_follows_a_smaller_capacity_and_a_clock_that_steps_back() -> None:
    bucket = TokenBucket(5, now=10.0)
    # A reload lowered the burst to 2: at most 2 tokens now, even with no time elapsed.
    assert [bucket.take(1.0, 2, 10.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take(1.0, 2, 10.0) == pytest.approx(1.0)
    # An earlier `now` refills nothing (and takes nothing away).
    assert bucket.take(1.0, 2, 9.0) == pytest.approx(1.0)
    assert bucket.take(1.0, 2, 10.0) == 0.0  # one second after 9.0: one token


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_seconds(0.01) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2


# --- config ------------------------------------------------------------------------------------


def test_rule_limits_override_only_what_they_name() -> None:
    base = LimitsConfig(max_concurrent=10, rate=5, burst=20, retry_after=3, pool_wait=1)
    assert resolve(base, None) == LimitSettings(10, 5, 20, 3, 1)
    assert resolve(base, RuleLimits(max_concurrent=500)) == LimitSettings(500, 5, 20, 3, 1)


def test_unknown_limit_keys_are_config_errors() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        LimitsConfig.model_validate({"max_concurent": 3})
    with pytest.raises(ValidationError):
        RuleLimits.model_validate({"max_concurrent": 0})


# --- admission -------------------------------------------------------------------------------

LIMITS = LimitSettings(max_concurrent=3, rate=100, burst=100, retry_after=7, pool_wait=0.05)


async def test_open_requests_are_capped_per_principal_and_others_are_unaffected() -> None:
    admission = Admission(pool_size=100)
    mallory = principal_for("iss", "mallory", None)
    alice = principal_for("iss", "alice", None)
    held = [await admission.admit(mallory, LIMITS) for _ in range(3)]
    with pytest.raises(TooManyRequests) as info:
        await admission.admit(mallory, LIMITS)
    assert info.value.status == 429
    assert info.value.retry_after is not None
    assert 7 <= info.value.retry_after <= 14  # spread, so refused clients do not return at once
    assert "limit 3" in info.value.message
    alice_permit = await admission.admit(alice, LIMITS)  # another principal: unaffected
    held[0].release()
    held[0].release()  # idempotent
    assert admission.active(mallory) == 2
    held.append(await admission.admit(mallory, LIMITS))  # a slot freed: admitted again
    for permit in [*held, alice_permit]:
        permit.release()
    assert admission.active(mallory) == 0
    assert admission.in_use == 0


async def test_held_requests_are_capped_per_principal_apart_from_engine_requests() -> None:
    """`max_held` counts client requests held open (joiners of a flight included: they ask
    `hold` whether or not they need an engine request), separately from `max_concurrent`."""
    admission = Admission(pool_size=100)
    limits = LimitSettings(max_concurrent=1000, retry_after=7, max_held=2)
    mallory = principal_for("iss", "mallory", None)
    held = [admission.hold(mallory, limits) for _ in range(2)]
    with pytest.raises(TooManyRequests) as info:
        admission.hold(mallory, limits)
    assert (info.value.status, info.value.reason) == (429, "too_many_held_requests")
    assert info.value.retry_after is not None
    assert 7 <= info.value.retry_after <= 14
    assert "limit 2" in info.value.message
    assert admission.active(mallory) == 0 and admission.in_use == 0  # no engine request
    assert admission.admit_now(mallory, limits, held=True) is None  # the fast lane: refused
    other = admission.hold(principal_for("iss", "alice", None), limits)  # unaffected
    held[0].release()
    held[0].release()  # idempotent
    assert admission.held(mallory) == 1
    fast = admission.admit_now(mallory, limits, held=True)  # held and engine, one permit
    assert fast is not None and admission.held(mallory) == 2 and admission.active(mallory) == 1
    for permit in [*held, other, fast]:
        permit.release()
    assert admission.held(mallory) == 0 and admission.active(mallory) == 0
    assert admission.in_use == 0


def test_max_held_defaults_to_256_whatever_a_rule_lifts() -> None:
    """An open config's anonymous rule lifts `max_concurrent` (one principal per address):
    the held bound stays unless a rule names it."""
    base = LimitsConfig()
    assert resolve(base, RuleLimits(max_concurrent=100_000)).max_held == 256
    assert resolve(base, RuleLimits(max_held=5)).max_held == 5
    assert resolve(LimitsConfig(max_held=9), None).max_held == 9


async def test_retry_after_of_refusals_together_is_spread() -> None:
    admission = Admission(pool_size=100)
    limits = LimitSettings(max_concurrent=1, retry_after=5)
    held = await admission.admit("p", limits)
    seen = set()
    for _ in range(200):
        with pytest.raises(TooManyRequests) as info:
            await admission.admit("p", limits)
        seen.add(info.value.retry_after)
    assert seen <= set(range(5, 11)) and len(seen) > 3
    held.release()


async def test_rate_limit_answers_retry_after_from_the_bucket() -> None:
    clock = Clock()
    admission = Admission(pool_size=100, clock=clock)
    limits = LimitSettings(max_concurrent=100, rate=0.5, burst=2, retry_after=9, pool_wait=1)
    who = principal_for("iss", "u", None)
    for _ in range(2):
        (await admission.admit(who, limits)).release()
    with pytest.raises(TooManyRequests) as info:
        await admission.admit(who, limits)
    assert info.value.reason == "rate_limited"
    assert info.value.retry_after == 2  # one token per 2 s
    clock.now += 2
    (await admission.admit(who, limits)).release()


async def test_anonymous_principals_are_their_address_and_tokens_their_subject() -> None:
    assert principal_for(None, None, "10.0.0.1") != principal_for(None, None, "10.0.0.2")
    assert principal_for("a", "u", "10.0.0.1") == principal_for("a", "u", "10.0.0.9")
    assert principal_for("a", "u", None) != principal_for("b", "u", None)
    assert principal_for(None, None, None) == principal_for(None, None, None)


async def test_a_continuation_is_counted_but_no_limit_refuses_it() -> None:
    """An SSE client's response going on over another engine stream (`continuing`) is the
    same admitted request: past `max_concurrent` and its rate it is still admitted, and
    counted; only the pool's bound applies."""
    admission = Admission(pool_size=5)
    limits = LimitSettings(max_concurrent=1, rate=0.001, burst=1, pool_wait=0.05)
    first = await admission.admit("p", limits)
    with pytest.raises(TooManyRequests):
        await admission.admit("p", limits)
    going_on = [await admission.admit("p", limits, continuing=True) for _ in range(4)]
    assert admission.active("p") == 5
    with pytest.raises(UpstreamBusy):  # (the pool is full)
        await admission.admit("p", limits, continuing=True)
    for permit in [first, *going_on]:
        permit.release()
    assert admission.active("p") == 0 and admission.in_use == 0


async def test_pool_wait_is_bounded_then_503() -> None:
    admission = Admission(pool_size=2)
    a = await admission.admit("a", LIMITS)
    b = await admission.admit("b", LIMITS)
    with pytest.raises(UpstreamBusy) as info:
        await admission.admit("c", LIMITS)
    assert info.value.status == 503
    assert info.value.retry_after is not None
    assert 7 <= info.value.retry_after <= 14
    assert admission.active("c") == 0  # a refused request is not left counted
    # A waiter gets the slot as soon as one is released, before its wait runs out.
    waiting = asyncio.create_task(admission.admit("c", LimitSettings(pool_wait=5)))
    await asyncio.sleep(0.01)
    a.release()
    c = await asyncio.wait_for(waiting, 1)
    assert admission.in_use == 2
    b.release()
    c.release()
    assert admission.in_use == 0


async def test_cancelled_waiter_gives_its_slot_back() -> None:
    admission = Admission(pool_size=1)
    first = await admission.admit("a", LIMITS)
    waiting = asyncio.create_task(admission.admit("b", LimitSettings(pool_wait=5)))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert admission.active("b") == 0
    first.release()
    assert admission.in_use == 0
    (await admission.admit("c", LIMITS)).release()


async def test_waiters_are_served_first_come_first_served() -> None:
    admission = Admission(pool_size=1)
    held = await admission.admit("x", LIMITS)
    order: list[str] = []

    async def wait(name: str) -> None:
        permit = await admission.admit(name, LimitSettings(pool_wait=5))
        order.append(name)
        permit.release()

    tasks = [asyncio.create_task(wait(n)) for n in "abc"]
    await asyncio.sleep(0.01)
    held.release()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]


async def test_idle_principals_are_forgotten() -> None:
    clock = Clock()
    admission = Admission(pool_size=10, clock=clock, sweep_at=100)
    for i in range(100):
        (await admission.admit(f"p{i}", LIMITS)).release()
    held = await admission.admit("busy", LIMITS)  # the 101st: sweeps, but buckets not full
    assert admission.principals == 101
    clock.now += 60
    for i in range(200):
        (await admission.admit(f"q{i}", LIMITS)).release()
    assert admission.principals < 250  # the refilled, idle p* were dropped
    assert admission.active("busy") == 1
    held.release()


# --- bounded engine requests ---------------------------------------------------------------


def test_url_over_the_engine_limit_is_a_414_without_the_url() -> None:
    base = URL("http://engine:3000/v1/shape")
    ok = base.with_query({"table": "items", "where": "x" * 4000, "secret": "s3cret"})
    check_fits(ok)
    # 9,042 bytes: within the engine's 10,000-byte request line (aiohttp's 8,190 until the
    # engine took Electric's limit), so sent.
    check_fits(base.with_query({"table": "items", "where": "<" * 3000, "secret": "s3cret"}))
    long = base.with_query({"table": "items", "where": "<" * 3400, "secret": "s3cret"})
    assert len(long.raw_path_qs) > MAX_REQUEST_TARGET  # `<` is 3 bytes once encoded
    with pytest.raises(UriTooLong) as info:
        check_fits(long, method="POST")
    assert info.value.status == 414
    assert f"{MAX_REQUEST_TARGET:,}" in info.value.message
    # A GET's line is a byte shorter than a POST's: its target may be a byte longer.
    at_limit = URL(f"http://engine:3000/v1/shape?where={'x' * (MAX_REQUEST_TARGET - 15)}")
    assert len(at_limit.raw_path_qs) == MAX_REQUEST_TARGET + 1
    check_fits(at_limit)
    with pytest.raises(UriTooLong):
        check_fits(at_limit, method="POST")
    assert "s3cret" not in info.value.message and "<<<" not in info.value.message


SECRET = "sec+ret/with=odd&chars"


@pytest.mark.parametrize(
    "echo",
    [
        f"http://127.0.0.1:3000/v1/shape?table=items&where=a%3D1&secret={SECRET}",
        "GET /v1/shape?table=items&where=org_id+%3D+%241&params%5B1%5D=org-a&secret="
        + URL.build(query={"s": SECRET}).raw_query_string[2:],
        "/v1/shape?table=items&secre",  # a truncated echo (first 100 bytes of a line)
        f"the secret is {SECRET}",
        "api_secret=abc and source_id=src-1",
    ],
)
def test_engine_error_bodies_lose_urls_and_secrets(echo: str) -> None:
    body = json.dumps({"message": "Invalid request", "errors": {"url": [echo]}}).encode()
    cleaned = sanitise_error_body(body, SECRET)
    text = cleaned.decode()
    parsed = json.loads(text)
    assert parsed["message"] == "Invalid request"
    assert "/v1/shape" not in text
    assert SECRET not in text
    assert "sec%2Bret" not in text and "sec+ret" not in text
    assert "api_secret=abc" not in text and "source_id=src-1" not in text


def test_clean_bodies_are_passed_as_they_are() -> None:
    body = b'{"message":"Invalid request","errors":{"where":["unknown column x"]}}'
    assert sanitise_error_body(body, SECRET) is body
    text = f"Bad request: /v1/shape?secret={SECRET}".encode()
    assert SECRET.encode() not in sanitise_error_body(text, SECRET)  # not JSON: cleaned as text


async def test_subset_places_wait_in_turn_and_a_gone_waiter_gives_its_place_on() -> None:
    """`SubsetSlots`: past `limit`, a subset waits for its own principal's next place (in
    order), other principals are not held up, a waiter whose client went away never keeps a
    place, and a wait that runs out is a 429."""
    import asyncio

    from proxy.errors import ProxyError
    from proxy.limits.subsets import SubsetSlots

    slots = SubsetSlots()
    first = await slots.take("alice", 1, 5, wait=10, max_waiting=2)
    second = asyncio.create_task(slots.take("alice", 1, 5, wait=10, max_waiting=2))
    third = asyncio.create_task(slots.take("alice", 1, 5, wait=10, max_waiting=2))
    await asyncio.sleep(0)
    assert slots.waiting() == 2
    with pytest.raises(ProxyError) as refused:  # (a third waiter: past max_waiting)
        await slots.take("alice", 1, 5, wait=10, max_waiting=2)
    assert refused.value.reason == "too_many_subsets"
    bob = await slots.take("bob", 1, 5, wait=10, max_waiting=2)  # (not behind alice)
    second.cancel()  # its client went away
    await asyncio.sleep(0)
    first.release()  # the place goes to the next one still waiting
    (await third).release()
    assert second.cancelled() and slots.waiting() == 0
    bob.release()
    assert len(slots) == 0
    held = await slots.take("carol", 1, 5, wait=10, max_waiting=2)
    with pytest.raises(ProxyError):
        await slots.take("carol", 1, 5, wait=0.05, max_waiting=2)
    held.release()
    assert len(slots) == 0 and slots.waiting() == 0
