"""Tests for :mod:`p2pnet.dht.ratelimit` (pure, on an injected clock) and
:mod:`p2pnet.dht.proof`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.dht import codec
from p2pnet.dht.limits import (
    Limits,
    is_local_network,
    is_loopback,
    prefix_key,
    source_key,
)
from p2pnet.dht.proof import AddressProof
from p2pnet.dht.ratelimit import (
    RATE_LIMITED_GLOBAL,
    RATE_LIMITED_PREFIX,
    RATE_LIMITED_SOURCE,
    BucketTable,
    RateLimiter,
    TokenBucket,
    rpc_weights,
)


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        b = TokenBucket(rate=10, burst=5, now=0.0)
        self.assertEqual([b.take(0.0) for _ in range(6)], [True] * 5 + [False])
        self.assertFalse(b.take(0.05))
        self.assertTrue(b.take(0.1))   # one token a tenth of a second
        self.assertFalse(b.take(0.1))
        self.assertTrue(b.full(10.0))

    def test_off(self) -> None:
        b = TokenBucket(rate=0, burst=1, now=0.0)
        self.assertTrue(all(b.take(0.0) for _ in range(10_000)))

    @given(st.floats(0.5, 1000), st.floats(1, 500),
           st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
    def test_never_more_than_burst_plus_rate(self, rate: float, burst: float,
                                             gaps: list[float]) -> None:
        """In any run of requests, those allowed <= burst + rate * elapsed (+1 for the
        rounding of a token that has just refilled)."""
        b = TokenBucket(rate, burst, 0.0)
        now = 0.0
        allowed = 0
        for gap in gaps:
            now += gap
            allowed += b.take(now)
        self.assertLessEqual(allowed, max(burst, 1.0) + rate * now + 1e-6)


class BucketTableTests(SynchronousTestCase):
    @given(st.floats(0.5, 1000), st.floats(1, 500),
           st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
    def test_same_answers_as_a_token_bucket(self, rate: float, burst: float,
                                            gaps: list[float]) -> None:
        """A table stores a bucket as one float; it answers as a TokenBucket would
        (to a billionth of a token)."""
        t = BucketTable(rate, burst, max_keys=10)
        b = TokenBucket(rate, burst, 0.0)
        now = 0.0
        for gap in gaps:
            now += gap
            self.assertEqual(t.take("k", now), b.take(now), f"at {now}")

    def test_off_stores_nothing(self) -> None:
        t = BucketTable(rate=0, burst=1, max_keys=10)
        self.assertTrue(all(t.take(i, 0.0) for i in range(100)))
        self.assertEqual(len(t), 0)

    def test_bounded(self) -> None:
        t = BucketTable(rate=1, burst=1, max_keys=100)
        for i in range(10_000):
            t.take(i, float(i) / 1000)
            self.assertLessEqual(len(t), 100)

    def test_refilled_buckets_forgotten_first(self) -> None:
        t = BucketTable(rate=1, burst=2, max_keys=4)
        t.take("busy", 0.0)
        t.take("busy", 0.0)
        for k in ("a", "b", "c"):
            t.take(k, 0.0)
        t.take("new", 0.5)  # full table: a, b, c have not refilled yet either
        self.assertLessEqual(len(t), 4)
        t2 = BucketTable(rate=1, burst=1, max_keys=3)
        t2.take("busy", 0.0)
        t2.take("idle1", -10.0)
        t2.take("idle2", -10.0)
        t2.take("new", 0.0)  # idle ones have refilled: they go, busy stays empty
        self.assertFalse(t2.take("busy", 0.0))


class RateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.limits = Limits(rate_per_source=10, rate_per_source_burst=10, rate_per_prefix=30,
                             rate_per_prefix_burst=30, rate_global=100, rate_global_burst=100)
        self.rl = RateLimiter(self.limits, self.clock.seconds)

    def test_source_then_prefix_then_global(self) -> None:
        results = [self.rl.check(("93.184.1.1", 1)) for _ in range(12)]
        self.assertEqual(results, [None] * 10 + [RATE_LIMITED_SOURCE] * 2)
        # another port of the same public IP is the same source
        self.assertEqual(self.rl.check(("93.184.1.1", 2)), RATE_LIMITED_SOURCE)
        # other IPs of the /24 share the prefix bucket (30)
        res = [self.rl.check((f"93.184.1.{i}", 1)) for i in range(2, 30)]
        self.assertEqual(res.count(None), 20)
        self.assertEqual(res.count(RATE_LIMITED_PREFIX), 8)
        # other prefixes until the global bucket (100) is empty
        res = [self.rl.check((f"93.{i}.1.1", 1)) for i in range(1, 100)]
        self.assertEqual(res.count(None), 70)
        self.assertEqual(res.count(RATE_LIMITED_GLOBAL), 29)
        self.clock.advance(1.0)
        self.assertIsNone(self.rl.check(("93.184.1.1", 1)))

    def test_global_bucket_charged_by_weight(self) -> None:
        """#14: the global bucket is charged each RPC's weight, the per-source and
        per-prefix buckets one a request; an unknown RPC byte costs the most."""
        limits = Limits(rate_per_source=10, rate_per_source_burst=10, rate_per_prefix=0,
                        rate_global=80, rate_global_burst=80, rate_weight_ping=1,
                        rate_weight_findnode=2, rate_weight_findval=2, rate_weight_getval=4,
                        rate_weight_store=8)
        rl = RateLimiter(limits, self.clock.seconds)
        stores = [rl.check((f"93.{i}.1.1", 1), codec.RPC.STORE) for i in range(12)]
        self.assertEqual(stores, [None] * 10 + [RATE_LIMITED_GLOBAL] * 2)  # 80 / 8
        self.clock.advance(0.1)  # 8 tokens: eight pings, or four findnodes, or one store
        pings = [rl.check((f"94.{i}.1.1", 1), codec.RPC.PING) for i in range(9)]
        self.assertEqual(pings, [None] * 8 + [RATE_LIMITED_GLOBAL])
        self.clock.advance(0.1)
        finds = [rl.check((f"95.{i}.1.1", 1), codec.RPC.FIND_NODE) for i in range(5)]
        self.assertEqual(finds, [None] * 4 + [RATE_LIMITED_GLOBAL])
        self.clock.advance(0.1)
        self.assertIsNone(rl.check(("96.0.1.1", 1), codec.RPC.GET_VALUE))
        self.assertIsNone(rl.check(("96.0.1.1", 1), codec.RPC.GET_VALUE))
        self.assertEqual(rl.check(("96.0.1.1", 1), codec.RPC.PING), RATE_LIMITED_GLOBAL)
        self.clock.advance(0.1)
        self.assertEqual(rl.check(("97.0.1.1", 1), 0xEE), None)  # 8 tokens: the most
        self.assertEqual(rl.check(("97.0.1.2", 1), codec.RPC.PING), RATE_LIMITED_GLOBAL)
        # one source's bucket counts requests: ten stores fit its 10, whatever they weigh
        self.clock.advance(100.0)
        res = [rl.check(("98.0.1.1", 1), codec.RPC.STORE) for _ in range(11)]
        self.assertEqual(res, [None] * 10 + [RATE_LIMITED_SOURCE])

    def test_weights_from_limits(self) -> None:
        w = rpc_weights(Limits())
        self.assertEqual(w[codec.RPC.PING], Limits().rate_weight_ping)
        self.assertEqual(w[codec.RPC.STORE], Limits().rate_weight_store)
        self.assertEqual(len(w), 256)
        self.assertEqual(max(w), w[0])
        self.assertEqual(w[0], w[255])
        # the defaults: a store is charged more than a lookup step, and that more than a ping
        self.assertGreater(w[codec.RPC.STORE], w[codec.RPC.FIND_NODE])
        self.assertGreater(w[codec.RPC.FIND_NODE], w[codec.RPC.PING])

    def test_weights_table_shared_by_equal_weights(self) -> None:
        clock = task.Clock()
        a = RateLimiter(Limits(), clock.seconds)
        b = RateLimiter(Limits(), clock.seconds)
        self.assertIs(a.weights, b.weights)  # one 2 KiB table for a crowd of nodes
        c = RateLimiter(Limits(rate_weight_store=99.0), clock.seconds)
        self.assertEqual(c.weights[codec.RPC.STORE], 99.0)
        self.assertEqual(a.weights[codec.RPC.STORE], Limits().rate_weight_store)

    def test_loopback_keys_on_port(self) -> None:
        for port in range(1, 11):
            for _ in range(10):
                self.assertIsNone(self.rl.check(("127.0.0.1", port)))
        self.assertEqual(self.rl.check(("127.0.0.1", 1)), RATE_LIMITED_SOURCE)

    def test_bucket_keys_are_the_source_keys(self) -> None:
        """The per-source key is limits.source_key's (the port alone on 127.0.0.1, the
        IP off loopback) and the prefix key limits.prefix_key's where a prefix bucket
        exists (none on loopback and private networks)."""
        addresses = [("127.0.0.1", 4000), ("127.0.0.1", 4001), ("127.0.0.2", 4000),
                     ("::1", 4000), ("10.1.2.3", 4000), ("93.184.1.1", 4000),
                     ("93.184.1.1", 4001), ("2606:4700::1", 4000), ("fd00::1", 4000)]
        for address in addresses:
            rl = RateLimiter(self.limits, self.clock.seconds)
            rl.check(address)
            host, port = source_key(address)
            key: object = (port if host == "127.0.0.1" else (host, port)
                           if is_loopback(host) else host)
            self.assertEqual(list(rl.sources.buckets), [key], address)
            prefixes = [] if is_local_network(address[0]) else [prefix_key(address)]
            self.assertEqual(list(rl.prefixes.buckets), prefixes, address)

    def test_private_addresses_have_no_prefix_bucket(self) -> None:
        res = [self.rl.check((f"10.0.0.{i}", 1)) for i in range(1, 60)]
        self.assertEqual(res.count(None), 59)  # 59 > the /24's 30: no prefix bucket

    def test_ipv6_prefix_is_64(self) -> None:
        res = [self.rl.check((f"2606:4700::{i:x}", 1)) for i in range(1, 41)]
        self.assertEqual(res.count(RATE_LIMITED_PREFIX), 10)
        self.assertIsNone(self.rl.check(("2606:4700:0:1::1", 1)))


class AddressProofTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.proof = AddressProof(Limits(token_rotate_seconds=10, proven_seconds=30,
                                         proven_max=50), self.clock.seconds)

    def test_token_per_ip(self) -> None:
        t = self.proof.token_for("93.184.1.1")
        self.assertEqual(len(t), 8)
        self.assertEqual(t, self.proof.token_for("93.184.1.1"))
        self.assertNotEqual(t, self.proof.token_for("93.184.1.2"))
        self.assertTrue(self.proof.is_proven("93.184.1.1", t))
        self.assertFalse(self.proof.is_proven("93.184.1.2", t))
        self.assertFalse(self.proof.is_proven("93.184.1.1", None))
        self.assertFalse(self.proof.is_proven("93.184.1.1", b"\x00" * 8))

    def test_other_node_tokens_differ(self) -> None:
        other = AddressProof(Limits(), self.clock.seconds)
        self.assertNotEqual(other.token_for("93.184.1.1"), self.proof.token_for("93.184.1.1"))

    def test_rotation(self) -> None:
        t = self.proof.token_for("93.184.1.1")
        self.clock.advance(10)
        self.assertTrue(self.proof.valid("93.184.1.1", t))  # the previous secret
        self.assertNotEqual(self.proof.token_for("93.184.1.1"), t)
        self.clock.advance(10)
        self.assertFalse(self.proof.valid("93.184.1.1", t))

    def test_long_idle_forgets_both_secrets(self) -> None:
        t = self.proof.token_for("93.184.1.1")
        self.clock.advance(1000)
        self.assertFalse(self.proof.valid("93.184.1.1", t))

    def test_answered_proves_then_ages(self) -> None:
        self.proof.answered("93.184.1.1")
        self.assertTrue(self.proof.is_proven("93.184.1.1", None))
        self.clock.advance(31)
        self.assertFalse(self.proof.is_proven("93.184.1.1", None))

    def test_proven_table_bounded(self) -> None:
        for i in range(1000):
            self.proof.answered(f"10.{i // 250}.{i % 250}.1")
            self.assertLessEqual(len(self.proof), 50)
        self.assertTrue(self.proof.is_proven("10.3.249.1", None))  # the newest stays


class SweepTests(SynchronousTestCase):
    def test_table_holds_recent_sources_only(self) -> None:
        """A source heard from more than burst/rate seconds ago is forgotten once the
        table doubles; the ones still draining stay (their debt is not forgiven)."""
        t = BucketTable(rate=10, burst=20, max_keys=10_000)
        now = 0.0
        for i in range(5000):
            now += 0.01  # 100 sources a second: each refills 2 s later
            t.take(("10.0.0.1", i), now)
            self.assertLessEqual(len(t), 2 * 200 + BucketTable.SWEEP_FROM)
        busy = ("10.9.9.9", 1)
        for _ in range(25):
            t.take(busy, now)
        for i in range(1000):
            t.take(("10.0.0.2", i), now)  # many new sources at once: sweeps happen
        self.assertFalse(t.take(busy, now))  # the busy bucket was not swept
