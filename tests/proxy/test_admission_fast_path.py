"""Admission's shortcut for a principal asking for the shape it asked for last (pure).

`_State.new_shape` skips `_expire` and the move in `recent` when the request names the shape
its principal asked for last, within `shape_window` (a long-poll following its shape: the
usual request). These check that every limit is still enforced as without the shortcut:
the rate, `max_concurrent`, `max_held`, `max_shapes` and the new-shape budget, for a
principal following one shape, alternating between shapes and coming back after a while,
and against the same admission with the shortcut defeated, step by step.
"""

from __future__ import annotations

import random

import pytest

from proxy.limits.admission import Admission, Permit, TooManyRequests
from proxy.limits.config import LimitsConfig, LimitSettings, resolve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limits(shape: str, **overrides: object) -> LimitSettings:
    return resolve(LimitsConfig(**overrides), None, shape=shape)  # type: ignore[arg-type]


async def test_max_shapes_counts_a_shape_gone_stale_while_another_was_followed() -> None:
    """A and B asked for, then only A for longer than the window (every request the
    shortcut's): B is out of the window, so a third shape is admitted; while both were
    fresh it was refused, with the wait until the older one leaves the window."""
    clock = Clock()
    admission = Admission(pool_size=100, clock=clock)
    window = {"max_shapes": 2, "shape_window": 60.0}
    a, b, c = (_limits(s, **window) for s in ("A", "B", "C"))
    for limits in (a, a, b, a, b, a, a):  # alternating, then following A
        clock.now += 1
        (await admission.admit("p", limits)).release()
    clock.now += 1
    with pytest.raises(TooManyRequests) as info:
        await admission.admit("p", c)
    assert info.value.reason == "too_many_shapes"
    assert info.value.retry_after == 57  # B, last asked for at 1005, leaves at 1065
    assert admission.admit_now("p", c) is None
    for _ in range(4):  # following A only, every 20 s: B leaves the window meanwhile
        clock.now += 20
        permit = admission.admit_now("p", a)
        assert permit is not None
        permit.release()
    permit = admission.admit_now("p", c)
    assert permit is not None
    permit.release()
    # Now A and C are the two within the window: B, back, is refused until one leaves.
    clock.now += 1
    with pytest.raises(TooManyRequests):
        await admission.admit("p", b)


async def test_a_followed_shape_coming_back_after_the_window_costs_no_new_shape_token() -> None:
    """A asked for, then nothing for longer than the window: A again is not new (it is
    remembered), so it takes no new-shape token, while a never-seen shape does."""
    clock = Clock()
    admission = Admission(pool_size=100, clock=clock)
    budget = {"new_shape_rate": 0.001, "new_shape_burst": 2, "shape_window": 60.0}
    a, b, c = (_limits(s, **budget) for s in ("A", "B", "C"))
    (await admission.admit("p", a)).release()
    (await admission.admit("p", b)).release()  # the budget is spent
    clock.now += 120
    for _ in range(3):
        permit = admission.admit_now("p", a)
        assert permit is not None
        permit.release()
    with pytest.raises(TooManyRequests) as info:
        await admission.admit("p", c)
    assert info.value.reason == "too_many_new_shapes"


async def test_following_one_shape_still_takes_a_rate_token_and_counts_open_requests() -> None:
    clock = Clock()
    admission = Admission(pool_size=100, clock=clock)
    limits = _limits("A", rate=1.0, burst=4, max_concurrent=2, max_held=1)
    (await admission.admit("p", limits)).release()  # (the fast lane's principals are known)
    permits = [admission.admit_now("p", limits), admission.admit_now("p", limits)]
    assert all(permits)
    assert admission.admit_now("p", limits) is None  # max_concurrent
    with pytest.raises(TooManyRequests) as info:
        await admission.admit("p", limits)
    assert info.value.reason == "too_many_open_requests"
    for permit in permits:
        assert permit is not None
        permit.release()
    held = admission.admit_now("p", limits, held=True)  # the burst's last token
    assert held is not None
    assert admission.admit_now("p", limits, held=True) is None  # max_held
    held.release()
    assert admission.admit_now("p", limits) is None  # no token left
    with pytest.raises(TooManyRequests) as info:
        await admission.admit("p", limits)
    assert info.value.reason == "rate_limited"
    clock.now += 1
    permit = admission.admit_now("p", limits)
    assert permit is not None
    permit.release()
    assert admission.active("p") == 0 and admission.held("p") == 0 and admission.in_use == 0


def _without_shortcut(admission: Admission) -> None:
    """Defeat the shortcut: no state remembers which shape it asked for last."""
    for state in admission._states.values():
        state.last = None


def _shapes_state(admission: Admission, principal: str, now: float, window: float) -> object:
    """What the principal's shape bookkeeping says once brought up to date, as `_expire`
    would (on copies: the admission's own state is left as it is)."""
    state = admission._states.get(principal)
    if state is None or state.recent is None:
        return None
    recent, older = list(state.recent.items()), list(state.older)
    while recent and recent[0][1] < now - window:
        older.append(recent.pop(0)[0])
    return recent, older


@pytest.mark.parametrize("seed", range(8))
def test_the_same_answers_as_without_the_shortcut(seed: int) -> None:
    """Random requests (mostly the shape asked for last, some others, time passing, permits
    held and released) to two admissions, one with the shortcut defeated: the same permit
    or refusal every time, and the same shapes remembered, in the same order."""
    rng = random.Random(seed)
    window = 30.0
    settings = {
        "max_shapes": 3,
        "shape_window": window,
        "rate": 2.0,
        "burst": 6,
        # (odd seeds: a budget that no gap refills, so new shapes are refused after one)
        "new_shape_rate": 0.2 if seed % 2 == 0 else 0.02,
        "new_shape_burst": 4,
        "max_concurrent": 4,
        "max_held": 2,
    }
    shapes = [_limits(f"shape-{n}", **settings) for n in range(40)]
    clocks = Clock(), Clock()
    fast, reference = (Admission(pool_size=8, clock=clock) for clock in clocks)
    for admission in fast, reference:  # (the fast lane admits known principals only)
        admission.hold("p", shapes[0]).release()
    held: list[tuple[Permit, Permit]] = []
    last = shapes[0]
    admitted = 0
    for step in range(600):
        advance = rng.choice((0.0, 0.05, 0.5, 2.0, 11.0, 31.0))
        for clock in clocks:
            clock.now += advance
        if held and rng.random() < 0.4:
            for permit in held.pop(rng.randrange(len(held))):
                permit.release()
        limits = last if rng.random() < 0.7 else rng.choice(shapes)
        live = rng.random() < 0.3
        _without_shortcut(reference)
        got = fast.admit_now("p", limits, held=live)
        expected = reference.admit_now("p", limits, held=live)
        assert (got is None) == (expected is None), step
        if got is not None and expected is not None:
            held.append((got, expected))
            admitted += 1
            last = limits  # (a client follows the shape it got; after a refusal, its last)
        assert (fast.active("p"), fast.held("p")) == (reference.active("p"), reference.held("p"))
        now = clocks[0].now
        assert _shapes_state(fast, "p", now, window) == _shapes_state(
            reference, "p", now, window
        ), step
    assert 100 < admitted < 550  # (admitted and refused alike were compared)
