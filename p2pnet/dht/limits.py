# -*- test-case-name: tests.test_dht_limits -*-
"""Every bound a remote peer runs into, in one place, and the counters of refusals.

A DHT node answers strangers, so whatever a remote peer can make it hold or do is bounded
here: routing-table admission, lookups, pulls, stored records and bytes, request rates,
answer sizes.  Each field has a documented default; ``twistd p2pnode`` options set them.

Per-address limits key on the source IP, except on loopback, where every node of a local
test network shares 127.0.0.1: there they key on ``(ip, port)`` (see :func:`source_key`).
Per-prefix limits key on the IPv4 /24 or the IPv6 /64 (see :func:`prefix_key`).
"""

from __future__ import annotations

import ipaddress
from collections import Counter

import attrs

Address = tuple[str, int]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def source_key(address: Address) -> tuple[str, int]:
    """The key per-address limits use: the IP, or ``(ip, port)`` on loopback."""
    host, port = address
    return (host, port) if is_loopback(host) else (host, 0)


def prefix_key(address: Address) -> str:
    """The IPv4 /24 or IPv6 /64 of an address (the address itself on loopback, so a
    local test network is not one prefix)."""
    host, port = address
    if is_loopback(host):
        return f"{host}:{port}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    bits = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{host}/{bits}", strict=False))


@attrs.define
class Limits:
    """The bounds of one DHT node (defaults documented in the README's limits table).

    Sections are grouped by the module that enforces them.
    """

    # -- lookups (p2pnet.dht.lookup) --------------------------------------------------
    #: candidates one lookup holds at most
    lookup_max_candidates: int = 200
    #: rounds (answers processed) one lookup runs at most
    lookup_max_rounds: int = 60
    #: seconds one lookup runs at most
    lookup_max_seconds: float = 30.0


class RefusalCounter(Counter[str]):
    """Refusals and drops by kind (``counter['rate_limited'] += 1``)."""

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))
