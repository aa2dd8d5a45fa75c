# -*- test-case-name: tests.test_dht_ratelimit -*-
"""Token buckets for incoming requests: per source address, per prefix, and global.

Pure: time comes from an injected ``clock`` (a zero-argument callable, e.g. a reactor's
``seconds``), so tests run on ``task.Clock``.  The protocol asks :meth:`RateLimiter.check`
for every request before it is handled; a refused request is dropped unanswered (an answer
would cost the bandwidth the limit protects).

Per-source limits key on :func:`p2pnet.dht.limits.source_key` (the IP, or ``(ip, port)``
on loopback, so every node of a local test network has its own bucket) and per-prefix
limits on :func:`~p2pnet.dht.limits.prefix_key` (the IPv4 /24, the IPv6 /64).  A flood
from one address empties that address's bucket only; a flood from many addresses of one
prefix, that prefix's; the global bucket bounds the work all strangers together can cause.

The global bucket counts work, not requests: each request is charged the weight of its
RPC (``Limits.rate_weight_*``, in pings: a store costs the node about eight pings' CPU),
so many sources each under their own limit cannot flood a node with costly requests
while the global bucket, sized for pings, never fires.  Cheap requests also get through
a flood of costly ones: between two stores the bucket holds a few tokens, enough for a
ping.  The per-source and per-prefix buckets still count requests (their limits are
sized for a pull's getvals and a handover's stores).
Loopback and private addresses (a network the operator runs, such as an in-memory test
network on 10.0.0.0/8) have no per-prefix bucket.

The tables of buckets are bounded (``rate_max_sources``): when one is full, the buckets
that have refilled (indistinguishable from new ones) are forgotten first, then the oldest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from p2pnet.dht.limits import Address, Limits, host_prefix, is_local_network, is_loopback

#: RPC numbers of the wire header (:class:`p2pnet.dht.codec.RPC`; this module stays
#: free of the codec)
PING, FIND_NODE, FIND_VALUE, STORE, GET_VALUE = 1, 2, 3, 4, 5


def rpc_weights(limits: Limits) -> tuple[float, ...]:
    """The global-bucket charge of each RPC byte 0-255: its ``rate_weight_*``, and the
    largest of them for a byte that names no RPC.  One table per set of weights for the
    whole process (256 floats are 2 KiB; a node each cost 2 MiB at 1,000 nodes)."""
    return _weights_table(limits.rate_weight_ping, limits.rate_weight_findnode,
                          limits.rate_weight_findval, limits.rate_weight_store,
                          limits.rate_weight_getval)


@functools.lru_cache(maxsize=16)
def _weights_table(ping: float, findnode: float, findval: float, store: float,
                   getval: float) -> tuple[float, ...]:
    named = {PING: ping, FIND_NODE: findnode, FIND_VALUE: findval, STORE: store,
             GET_VALUE: getval}
    most = max(named.values())
    return tuple(float(named.get(rpc, most)) for rpc in range(256))


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; a request takes one.

    A bucket with ``rate <= 0`` never refuses (the limit is off).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are that many; False (nothing taken) if not."""
        if self.rate <= 0:
            return True
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def full(self, now: float) -> bool:
        """Whether the bucket would be full now (then it is as good as a new one)."""
        return self.rate <= 0 or self.tokens + (now - self.stamp) * self.rate >= self.burst


class BucketTable:
    """Token buckets by key, at most ``max_keys`` of them, each stored as one float.

    A bucket of ``rate`` and ``burst`` is kept as the time it will be full again (the
    generic cell rate algorithm: ``tokens = burst - (full_at - now) * rate``), so a
    source costs a dict entry and a float instead of a :class:`TokenBucket`; the
    answers are those of a :class:`TokenBucket` taking one token a request.  With
    ``rate <= 0`` the limit is off and nothing is stored.

    A bucket that has refilled is as good as a new one, so refilled buckets are swept
    out whenever the table has doubled since the last sweep: the table holds about the
    sources heard from in the last ``burst / rate`` seconds (2 s by default), not every
    source ever seen (a node's memory matters at 1,000 nodes a process).
    """

    SWEEP_FROM = 8

    __slots__ = ("rate", "burst", "max_keys", "buckets", "_sweep_at", "_step", "_slack")

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst = max(burst, 1.0)
        self.max_keys = max(1, max_keys)
        #: key -> when its bucket is full again
        self.buckets: dict[Any, float] = {}
        self._sweep_at = min(self.max_keys, self.SWEEP_FROM)
        self._step = 1.0 / rate if rate > 0 else 0.0  # what one token is worth in time
        # how far ahead of now full_at may run (and a hair for the float sums)
        self._slack = (burst - 1.0 + 1e-9) * self._step

    def take(self, key: Any, now: float) -> bool:
        step = self._step
        if not step:
            return True
        buckets = self.buckets
        full_at = buckets.get(key)
        if full_at is None:
            if len(buckets) >= self._sweep_at:
                self._sweep(now)
            buckets[key] = now + step
            return True
        if full_at < now:
            full_at = now
        elif full_at - now > self._slack:
            return False
        buckets[key] = full_at + step
        return True

    def _sweep(self, now: float) -> None:
        if len(self.buckets) >= self.max_keys:
            self._shrink(now)
        else:
            self._forget_full(now)
        self._sweep_at = min(self.max_keys, max(self.SWEEP_FROM, 2 * len(self.buckets)))

    def _forget_full(self, now: float) -> None:
        buckets = self.buckets
        for k in [k for k, full_at in buckets.items() if full_at <= now]:
            del buckets[k]

    def _shrink(self, now: float) -> None:
        """Forget refilled buckets; if that frees less than a quarter, the oldest half."""
        self._forget_full(now)
        if len(self.buckets) > self.max_keys * 3 // 4:
            for k in list(self.buckets)[: len(self.buckets) // 2]:
                del self.buckets[k]

    def __len__(self) -> int:
        return len(self.buckets)


#: refusal kinds :meth:`RateLimiter.check` returns (and the protocol counts)
RATE_LIMITED_SOURCE = "rate_limited_source"
RATE_LIMITED_PREFIX = "rate_limited_prefix"
RATE_LIMITED_GLOBAL = "rate_limited_global"


class RateLimiter:
    """The three levels of buckets for one node's incoming requests."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.limits = limits
        self.sources = BucketTable(limits.rate_per_source, limits.rate_per_source_burst,
                                   limits.rate_max_sources)
        self.prefixes = BucketTable(limits.rate_per_prefix, limits.rate_per_prefix_burst,
                                    limits.rate_max_sources)
        self.everyone = TokenBucket(limits.rate_global, limits.rate_global_burst, clock())
        #: global-bucket charge by RPC byte (see :func:`rpc_weights`)
        self.weights = rpc_weights(limits)

    def check(self, address: Address, rpc: int = PING) -> str | None:
        """Charge one request of RPC byte ``rpc`` from ``address``: None when allowed,
        else the refusal kind.  The per-source and per-prefix buckets are charged one,
        the global bucket the RPC's weight (a byte outside 0-255 or naming no RPC: the
        largest weight).

        The source's bucket is charged first, so a flooding address is refused before
        it can drain the buckets it shares with others.
        """
        now = self.clock()
        host = address[0]
        # limits.source_key with cached facts; off loopback the IP alone is the key, on
        # 127.0.0.1 the port alone (no address tuple kept per source).  Loopback and
        # private networks (the operator's own) have no prefix bucket.
        if host == "127.0.0.1":  # a local network of many nodes: its facts are known
            source: Any = address[1]
            prefix = None
        else:
            prefix = None if is_local_network(host) else host_prefix(host)
            source = address if is_loopback(host) else host
        if not self.sources.take(source, now):
            return RATE_LIMITED_SOURCE
        if prefix is not None and not self.prefixes.take(prefix, now):
            return RATE_LIMITED_PREFIX
        if not self.everyone.take(now, self.weights[rpc & 0xFF]):
            return RATE_LIMITED_GLOBAL
        return None


__all__ = ["RATE_LIMITED_GLOBAL", "RATE_LIMITED_PREFIX", "RATE_LIMITED_SOURCE",
           "BucketTable", "RateLimiter", "TokenBucket", "rpc_weights"]
