"""Which client a request comes from, behind load balancers the config trusts.

An anonymous request is charged to its client address (`proxy.limits.admission`). Behind a
load balancer every TCP peer is the balancer, so all anonymous users were one principal and
shared one `max_held` / `max_concurrent` / rate budget. With `server.trusted_proxies` (CIDRs)
a request whose peer is in one of them is charged to the address its proxies forwarded: the
right-most address of `X-Forwarded-For` (or, when there is none, of `Forwarded`'s `for=`)
that is not itself trusted. Right-most, because every proxy appends the address it received
from and a client may write anything to the left of that: only what trusted proxies appended
is believed.

Never trusted by default (an empty list): a client could otherwise name any address and take
a fresh budget with each request. A malformed value (not an address, `unknown`, an obfuscated
`_name`) stops the walk and the peer is the client: a request is never refused for it.

An IPv6 client is charged by its /64, forwarded or not: a subscriber is handed a whole /64,
so one address per principal made every per-principal limit per request for it (attack).

`X-Forwarded-For` is read when present, `Forwarded` only when it is absent: the trusted proxy
must write the one read here (every common load balancer appends to `X-Forwarded-For`); a
client sending the other header could otherwise choose its address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from multidict import CIMultiDictProxy

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> Address | None:
    """An address as a proxy writes it: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`, an
    IPv6 zone (`fe80::1%eth0`), in or out of quotes; an IPv4-mapped IPv6 address is the IPv4
    one (a dual-stack socket reports IPv4 peers so). None when it is not an address."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # (IPv4 with a port)
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _forwarded_for(value: str) -> list[str]:
    """The `for=` values of a `Forwarded` header (RFC 7239), in order; an element without
    one gives "" (not an address: it stops the walk)."""
    found = []
    for element in value.split(","):
        address = ""
        for pair in element.split(";"):
            name, _, given = pair.partition("=")
            if name.strip().lower() == "for":
                address = given
        found.append(address)
    return found


def _charged(address: Address) -> str:
    """What an address is charged as: an IPv4 address itself, an IPv6 one its /64."""
    if isinstance(address, IPv4Address):
        return str(address)
    return str(IPv6Network((int(address) >> 64 << 64, 64)))


@functools.lru_cache(maxsize=4096)
def charged_peer(peer: str) -> str:
    """`_charged` of a peer as the socket gave it (itself when it is no IP address)."""
    address = parse_address(peer)
    return peer if address is None else _charged(address)


def client_address(
    peer: str | None, headers: CIMultiDictProxy[str], trusted: Sequence[Network]
) -> str | None:
    """Who an anonymous request is charged to: `peer`, unless `peer` is in `trusted`; then
    the right-most forwarded address that is not trusted (see the module doc). An IPv6
    client is charged by its /64: one subscriber is handed a whole /64 (2^64 addresses), so
    per address, every per-principal limit was per request for it."""
    if peer is None:
        return None
    if not trusted:
        return peer if ":" not in peer else charged_peer(peer)
    peer_address = parse_address(peer)
    if peer_address is None:
        return peer
    if not _trusted(peer_address, trusted):
        return _charged(peer_address)
    forwarded = headers.getall("X-Forwarded-For", None)
    if forwarded is not None:
        chain = [item for value in forwarded for item in value.split(",")]
    else:
        values = headers.getall("Forwarded", None)
        if values is None:
            return _charged(peer_address)
        chain = [item for value in values for item in _forwarded_for(value)]
    address = peer_address
    for item in reversed(chain):
        parsed = parse_address(item)
        if parsed is None:
            # (malformed, `unknown` or hidden: nothing further left is believed)
            return _charged(peer_address)
        address = parsed
        if not _trusted(address, trusted):
            return _charged(address)
    return _charged(address)  # (every hop trusted: the furthest one)
