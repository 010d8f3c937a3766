"""The per-principal budget of new shapes and the client address behind trusted proxies (pure).

The real path of both is in test_limits_new_shapes_real.py.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config.model import ServerConfig
from proxy.limits.admission import REMEMBERED_SHAPES, Admission, TooManyRequests
from proxy.limits.client import client_address
from proxy.limits.config import LimitsConfig, LimitSettings, RuleLimits, resolve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _shape(n: int) -> LimitSettings:
    """The default limits, for a request naming shape definition `n`."""
    return resolve(LimitsConfig(), None, shape=f'["src","items","id = {n}"]')


async def test_an_app_opening_pages_of_fifty_shapes_is_never_refused_by_default() -> None:
    """Defaults: four pages of 50 shapes at once, each shape then followed for a long time
    (its long-polls, refetches after a 409, the page opened again: repeats are free)."""
    clock = Clock()
    admission = Admission(pool_size=10_000, clock=clock)
    for n in range(200):  # every shape of four pages, at the same instant
        (await admission.admit("app-user", _shape(n))).release()
    for _ in range(30):  # ten minutes of following them, every 20 s
        clock.now += 20
        for n in range(200):
            (await admission.admit("app-user", _shape(n))).release()
    # A new page of 40 shapes now and then (2 a second, sustained), forever.
    for page in range(10):
        clock.now += 20
        for n in range(40):
            (await admission.admit("app-user", _shape(1000 + 40 * page + n))).release()


async def test_new_shapes_past_the_burst_are_429_with_retry_after_and_repeats_stay_free() -> None:
    clock = Clock()
    admission = Admission(pool_size=100, clock=clock)
    base = LimitsConfig(new_shape_rate=0.25, new_shape_burst=3)

    def shape(n: int) -> LimitSettings:
        return resolve(base, None, shape=f"def-{n}")

    for n in range(3):
        (await admission.admit("mallory", shape(n))).release()
    with pytest.raises(TooManyRequests) as info:
        await admission.admit("mallory", shape(3))
    assert (info.value.status, info.value.reason) == (429, "too_many_new_shapes")
    assert info.value.retry_after == 4  # one token every 4 s
    assert "limit 0.25 per second, bursts of 3" in info.value.message
    assert admission.admit_now("mallory", shape(3)) is None  # the fast lane refuses it too
    assert admission.active("mallory") == 0 and admission.in_use == 0
    # Its shapes already made, and requests naming no shape (a DELETE), are not refused.
    for n in range(3):
        (await admission.admit("mallory", shape(n))).release()
        permit = admission.admit_now("mallory", shape(n))
        assert permit is not None
        permit.release()
    (await admission.admit("mallory", resolve(base, None))).release()
    # A refusal costs no general rate token, and another principal has its own budget.
    (await admission.admit("alice", shape(3))).release()
    clock.now += 4
    fast = admission.admit_now("mallory", shape(3))  # one token back: the fast lane takes it
    assert fast is not None
    fast.release()
    with pytest.raises(TooManyRequests):
        await admission.admit("mallory", shape(4))


async def test_a_principal_remembers_its_latest_shapes_only() -> None:
    """Past `REMEMBERED_SHAPES` the oldest definition is forgotten: naming it again costs a
    token (nothing else), so a principal's state stays bounded."""
    clock = Clock()
    admission = Admission(pool_size=100, clock=clock)
    limits = LimitsConfig(
        rate=1000, burst=10_000, new_shape_rate=1000, new_shape_burst=REMEMBERED_SHAPES + 1
    )
    for n in range(REMEMBERED_SHAPES + 1):
        (await admission.admit("p", resolve(limits, None, shape=f"d{n}"))).release()
    with pytest.raises(TooManyRequests):  # the bucket is empty: d0 was forgotten
        await admission.admit("p", resolve(limits, None, shape="d0"))
    (await admission.admit("p", resolve(limits, None, shape="d1"))).release()


async def test_idle_principals_with_an_empty_shape_bucket_are_kept() -> None:
    """A principal whose new-shape bucket is not full is not forgotten by the sweep: it
    would come back with a full one."""
    clock = Clock()
    admission = Admission(pool_size=10, clock=clock, sweep_at=2)
    limits = LimitsConfig(new_shape_rate=0.01, new_shape_burst=1)
    (await admission.admit("m", resolve(limits, None, shape="a"))).release()
    clock.now += 60  # the general bucket is full again, the new-shape one is not
    for name in ("x", "y", "z"):
        (await admission.admit(name, resolve(limits, None))).release()
    with pytest.raises(TooManyRequests):
        await admission.admit("m", resolve(limits, None, shape="b"))


def test_rules_override_the_new_shape_budget() -> None:
    assert (resolve(LimitsConfig(), None).new_shape_rate, LimitsConfig().new_shape_burst) == (
        2,
        200,
    )
    lifted = resolve(LimitsConfig(), RuleLimits(new_shape_rate=1e5, new_shape_burst=10**5))
    assert (lifted.new_shape_rate, lifted.new_shape_burst, lifted.max_held) == (1e5, 10**5, 256)
    assert resolve(LimitsConfig(), RuleLimits(rate=5), shape="x").shape == "x"


# --- the client address behind trusted proxies ----------------------------------------------


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


LB = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))
XFF = "X-Forwarded-For"


@pytest.mark.parametrize(
    ("peer", "pairs", "expected"),
    [
        # Not trusted: the peer, whatever it says.
        ("203.0.113.9", [(XFF, "198.51.100.1")], "203.0.113.9"),
        # A trusted peer: the right-most address it did not itself trust.
        ("10.0.0.2", [(XFF, "198.51.100.1")], "198.51.100.1"),
        ("10.0.0.2", [(XFF, "1.1.1.1, 198.51.100.1, 10.0.0.7")], "198.51.100.1"),
        ("10.0.0.2", [(XFF, "1.1.1.1"), (XFF, "198.51.100.1")], "198.51.100.1"),
        ("10.0.0.2", [(XFF, "198.51.100.1:4711")], "198.51.100.1"),
        ("10.0.0.2", [(XFF, "[2001:db8::1]:80")], "2001:db8::/64"),
        ("10.0.0.2", [(XFF, "2001:DB8:0:0:1::1")], "2001:db8::/64"),  # one spelling
        ("::ffff:10.0.0.2", [(XFF, "::ffff:198.51.100.1")], "198.51.100.1"),
        ("fd00::5", [(XFF, "198.51.100.1")], "198.51.100.1"),
        # A spoofed left part is never read: the right-most untrusted address is.
        ("10.0.0.2", [(XFF, "garbage, 198.51.100.1")], "198.51.100.1"),
        # Every hop trusted: the furthest one.
        ("10.0.0.2", [(XFF, "10.1.1.1, 10.0.0.7")], "10.1.1.1"),
        # Malformed before an untrusted address: the peer.
        ("10.0.0.2", [(XFF, "198.51.100.1, nonsense")], "10.0.0.2"),
        ("10.0.0.2", [(XFF, "")], "10.0.0.2"),
        ("10.0.0.2", [(XFF, ",,,")], "10.0.0.2"),
        ("10.0.0.2", [(XFF, "\x00\xff[")], "10.0.0.2"),
        ("10.0.0.2", [(XFF, "[::1")], "10.0.0.2"),
        ("10.0.0.2", [], "10.0.0.2"),
        # Forwarded (RFC 7239), read only without X-Forwarded-For.
        ("10.0.0.2", [("Forwarded", "for=198.51.100.1;proto=https")], "198.51.100.1"),
        ("10.0.0.2", [("Forwarded", 'for="[2001:db8::17]:4711", For=10.0.0.9')], "2001:db8::/64"),
        ("10.0.0.2", [("Forwarded", 'for="198.51.100.1:80"')], "198.51.100.1"),
        ("10.0.0.2", [("Forwarded", "for=unknown")], "10.0.0.2"),
        ("10.0.0.2", [("Forwarded", "for=_hidden")], "10.0.0.2"),
        ("10.0.0.2", [("Forwarded", "proto=https")], "10.0.0.2"),
        ("10.0.0.2", [("Forwarded", "for=1.1.1.1"), (XFF, "198.51.100.1")], "198.51.100.1"),
        # An IPv6 client is its /64, trusted proxies or not; IPv4 in IPv6 is IPv4.
        ("2001:db8:1:2::5", [(XFF, "198.51.100.1")], "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", [], "2001:db8:1:2::/64"),
        ("2001:db8:1:3::5", [], "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.9", [], "203.0.113.9"),
        ("fd00::5", [(XFF, "2001:db8:7:7:7::7")], "2001:db8:7:7::/64"),
        ("fd00::5", [(XFF, "2001:db8::1, nonsense")], "fd00::/64"),
        # A peer that is no IP address (a Unix socket), or none.
        ("/run/proxy.sock", [(XFF, "198.51.100.1")], "/run/proxy.sock"),
        (None, [(XFF, "198.51.100.1")], None),
    ],
)
def test_client_address(peer: str | None, pairs: list[tuple[str, str]], expected: Any) -> None:
    assert client_address(peer, _headers(*pairs), LB) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8:1:2::5", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("::1", "::/64"),
        ("/run/proxy.sock", "/run/proxy.sock"),
    ],
)
def test_without_trusted_proxies_the_peer_is_the_client(peer: str, expected: str) -> None:
    """Forwarding headers ignored; an IPv6 peer charged by its /64 (a subscriber's whole
    prefix: by address, each request could come from an address of its own)."""
    headers = _headers((XFF, "198.51.100.1"), ("Forwarded", "for=198.51.100.2"))
    assert client_address(peer, headers, ()) == expected


def test_forwarding_headers_are_ignored_by_default() -> None:
    """Nothing trusted unless configured: a client could name any address otherwise."""
    trusted = ServerConfig().trusted_proxies
    assert trusted == ()
    assert client_address("127.0.0.1", _headers((XFF, "198.51.100.1")), trusted) == "127.0.0.1"


@pytest.mark.parametrize("value", [["10.0.0.1/8"], ["not-a-network"], "10.0.0.0/8"])
def test_trusted_proxies_must_be_networks(value: Any) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServerConfig(trusted_proxies=value)


async def test_shapes_followed_all_along_stay_free_among_many_passing_ones() -> None:
    """A principal following 180 shapes (each asked for every 20 s) while it opens 20 new
    ones a round (1/s, under the rate): the followed ones are never charged again. (Its
    memory forgot the oldest *inserted*: once it was full, each passing shape pushed a
    followed one out, whose next request pushed out another: 429s from the 5th round.)"""
    clock = Clock()
    admission = Admission(pool_size=10_000, clock=clock)
    for round_ in range(40):
        for n in range(180):
            (await admission.admit("dashboard", _shape(n))).release()
        for n in range(20):
            (await admission.admit("dashboard", _shape(10_000 + 20 * round_ + n))).release()
        clock.now += 20


async def test_max_shapes_bounds_the_shapes_asked_for_within_the_window() -> None:
    """A principal keeping `max_shapes` shapes fresh may ask for no other until one has not
    been asked for in `shape_window`; its own stay free; the fast lane refuses the same."""
    clock = Clock()
    admission = Admission(pool_size=100, clock=clock)
    base = LimitsConfig(max_shapes=2, shape_window=60)

    def shape(name: str) -> LimitSettings:
        return resolve(base, None, shape=name)

    (await admission.admit("p", shape("a"))).release()
    clock.now += 10
    (await admission.admit("p", shape("b"))).release()
    with pytest.raises(TooManyRequests) as info:
        await admission.admit("p", shape("c"))
    assert (info.value.status, info.value.reason) == (429, "too_many_shapes")
    assert info.value.retry_after == 50  # when `a` leaves the window
    assert admission.admit_now("p", shape("c")) is None
    clock.now += 45
    (await admission.admit("p", shape("a"))).release()  # asked for again: free, and fresh
    clock.now += 20  # `b` has left the window (asked for 65 s ago), `a` has not (20 s)
    (await admission.admit("p", shape("c"))).release()
    with pytest.raises(TooManyRequests):  # `b` again: no token, but a place, and none is free
        await admission.admit("p", shape("b"))
    (await admission.admit("q", shape("b"))).release()  # another principal: its own share
    # Without `max_shapes` (the default) there is no bound.
    for n in range(100):
        (await admission.admit("r", resolve(LimitsConfig(), None, shape=f"s{n}"))).release()


async def test_a_principal_keeping_shapes_is_not_forgotten_by_the_sweep() -> None:
    clock = Clock()
    admission = Admission(pool_size=10, clock=clock, sweep_at=2)
    limits = resolve(LimitsConfig(max_shapes=1), None, shape="a")
    (await admission.admit("m", limits)).release()
    clock.now += 30  # every bucket full again, but `a` asked for 30 s ago
    for name in ("x", "y", "z"):
        (await admission.admit(name, resolve(LimitsConfig(), None))).release()
    with pytest.raises(TooManyRequests):
        await admission.admit("m", resolve(LimitsConfig(max_shapes=1), None, shape="b"))
