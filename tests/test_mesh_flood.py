"""Tests of p2pnet.mesh.flood: the seen-cache and the relay rule."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.mesh import codec
from p2pnet.mesh.flood import MAX_HOPS, Flood, SeenCache


class Skewed:
    """A node's clock: ``base`` read ``offset`` seconds ahead (behind when negative)."""

    def __init__(self, base: task.Clock, offset: float) -> None:
        self.base = base
        self.offset = offset

    def seconds(self) -> float:
        return self.base.seconds() + self.offset


class SeenCacheTests(SynchronousTestCase):
    def test_add_once(self) -> None:
        cache = SeenCache(task.Clock())
        self.assertTrue(cache.add(b"a"))
        self.assertFalse(cache.add(b"a"))
        self.assertIn(b"a", cache)
        self.assertEqual(len(cache), 1)

    def test_forgets_after_ttl(self) -> None:
        clock = task.Clock()
        cache = SeenCache(clock, ttl=60)
        cache.add(b"a")
        clock.advance(30)
        cache.add(b"b")
        clock.advance(29.9)
        self.assertIn(b"a", cache)
        clock.advance(0.1)
        self.assertNotIn(b"a", cache)
        self.assertIn(b"b", cache)
        self.assertTrue(cache.add(b"a"))

    def test_bounded_in_size(self) -> None:
        cache = SeenCache(task.Clock(), max_entries=3)
        for i in range(10):
            cache.add(bytes([i]))
        self.assertEqual(len(cache), 3)
        self.assertEqual(cache.evicted, 7)
        self.assertNotIn(b"\x00", cache)
        self.assertIn(b"\x09", cache)

    def test_a_seen_id_is_not_refreshed(self) -> None:
        clock = task.Clock()
        cache = SeenCache(clock, ttl=10)
        cache.add(b"a")
        clock.advance(9)
        cache.add(b"a")
        clock.advance(1)
        self.assertNotIn(b"a", cache)

    def test_bad_bounds(self) -> None:
        self.assertRaises(ValueError, SeenCache, task.Clock(), ttl=0)
        self.assertRaises(ValueError, SeenCache, task.Clock(), max_entries=0)

    @given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 30)), max_size=200),
           st.integers(1, 10))
    def test_never_over_bound(self, ops: list[tuple[int, float]], bound: int) -> None:
        clock = task.Clock()
        cache = SeenCache(clock, ttl=60, max_entries=bound)
        for key, dt in ops:
            clock.advance(dt)
            cache.add(bytes([key]))
            self.assertLessEqual(len(cache._seen), bound)


class FloodRuleTests(SynchronousTestCase):
    def test_relay_to_all_but_sender(self) -> None:
        flood = Flood(task.Clock())
        d = flood.receive(b"m", 7, b"b", [b"a", b"b", b"c"])
        self.assertTrue(d.deliver)
        self.assertEqual(d.relay_to, (b"a", b"c"))
        self.assertEqual(d.hops, 6)
        self.assertIsNone(d.dropped)
        self.assertFalse(d.expired)

    def test_drop_seen(self) -> None:
        flood = Flood(task.Clock())
        flood.receive(b"m", 5, b"b", [b"b"])
        d = flood.receive(b"m", 9, b"c", [b"b", b"c"])
        self.assertEqual((d.deliver, d.relay_to, d.dropped), (False, (), "seen"))

    def test_own_broadcast_never_delivered(self) -> None:
        flood = Flood(task.Clock(), max_hops=12)
        self.assertEqual(flood.originate(b"m"), 12)
        self.assertEqual(Flood(task.Clock()).originate(b"m"), 255)
        self.assertEqual(flood.receive(b"m", 11, b"b", [b"b"]).dropped, "seen")

    def test_spent_hop_limit_dropped_and_not_remembered(self) -> None:
        flood = Flood(task.Clock())
        d = flood.receive(b"m", 0, b"b", [b"b", b"c"])
        self.assertEqual((d.deliver, d.relay_to, d.dropped), (False, (), "hop_limit"))
        self.assertNotIn(b"m", flood.seen)
        self.assertTrue(flood.receive(b"m", 3, b"b", [b"b", b"c"]).deliver)

    def test_last_hop_delivers_without_relaying(self) -> None:
        flood = Flood(task.Clock())
        d = flood.receive(b"m", 1, b"b", [b"a", b"b"])
        self.assertEqual((d.deliver, d.relay_to, d.expired), (True, (), True))
        # nobody else to relay to: not counted as stopped by the limit
        d = flood.receive(b"n", 1, b"b", [b"b"])
        self.assertEqual((d.deliver, d.relay_to, d.expired), (True, (), False))
        d = flood.receive(b"o", 2, b"b", [b"a", b"b"])
        self.assertEqual((d.relay_to, d.hops, d.expired), ((b"a",), 1, False))

    def test_peer_cannot_raise_our_hop_limit(self) -> None:
        flood = Flood(task.Clock(), max_hops=4)
        d = flood.receive(b"m", 200, b"b", [b"a"])
        self.assertEqual((d.relay_to, d.hops), ((b"a",), 3))

    def test_bad_max_hops(self) -> None:
        self.assertRaises(ValueError, Flood, task.Clock(), max_hops=0)
        self.assertRaises(ValueError, Flood, task.Clock(), max_hops=256)

    def test_wire_carries_the_hop_limit(self) -> None:
        self.assertEqual(MAX_HOPS, codec.MAX_HOPS)

    def test_send_time_plays_no_part(self) -> None:
        # The origin's clock is 10 minutes ahead, or a day behind: nothing in the rule
        # reads it, and the seen-cache counts its ttl on the receiver's clock.
        base = task.Clock()
        base.advance(1_000_000)
        for offset in (600.0, -86_400.0, 0.0, 1e9):
            origin = Flood(Skewed(base, offset))
            receiver = Flood(base, ttl=60)
            msg_id = b"m%d" % offset
            hops = origin.originate(msg_id)
            d = receiver.receive(msg_id, hops, b"o", [b"o", b"x"])
            self.assertEqual((d.deliver, d.relay_to), (True, (b"x",)))
            self.assertEqual(receiver.receive(msg_id, hops, b"x", [b"o", b"x"]).dropped,
                             "seen")

    def test_seen_ttl_counts_on_the_receivers_clock(self) -> None:
        base = task.Clock()
        ahead = Flood(Skewed(base, 600.0), ttl=60)  # this node's clock is 10 min ahead
        ahead.receive(b"m", 5, b"b", [])
        base.advance(59.9)
        self.assertEqual(ahead.receive(b"m", 5, b"c", []).dropped, "seen")
        base.advance(0.1)
        self.assertNotIn(b"m", ahead.seen)

    def test_seen_kept_when_own_clock_steps_back(self) -> None:
        base = task.Clock()
        base.advance(1000)
        clock = Skewed(base, 0.0)
        f = Flood(clock, ttl=60)
        f.receive(b"m", 5, b"b", [])
        clock.offset = -3600.0  # our own clock is set back an hour
        self.assertEqual(f.receive(b"m", 5, b"c", []).dropped, "seen")


class RelayLoopTests(SynchronousTestCase):
    def test_forgetful_ring_is_bounded_by_the_hop_limit(self) -> None:
        # Every node forgets an id before the next hop: without a hop limit the message
        # would circle the ring for ever.  Each direction runs exactly max_hops links.
        clock = task.Clock()
        n, max_hops = 5, 20
        floods = [Flood(clock, ttl=0.001, max_hops=max_hops) for _ in range(n)]
        nbrs = {i: [bytes([(i - 1) % n]), bytes([(i + 1) % n])] for i in range(n)}
        hops = floods[0].originate(b"m")
        in_flight = [(nb[0], b"\x00", hops) for nb in nbrs[0]]
        sent = delivered = 0
        while in_flight:
            sent += 1
            self.assertLessEqual(sent, 2 * max_hops)
            dst, via, h = in_flight.pop(0)
            self.assertGreaterEqual(h, 1)
            clock.advance(0.01)
            d = floods[dst].receive(b"m", h, via, nbrs[dst])
            delivered += d.deliver
            in_flight.extend((p[0], bytes([dst]), d.hops) for p in d.relay_to)
        self.assertEqual(sent, 2 * max_hops)
        self.assertEqual(delivered, 2 * max_hops)


@st.composite
def connected_graphs(draw: st.DrawFn) -> tuple[int, set[tuple[int, int]]]:
    n = draw(st.integers(1, 25))
    edges: set[tuple[int, int]] = set()
    for i in range(1, n):  # a random spanning tree keeps it connected
        j = draw(st.integers(0, i - 1))
        edges.add((j, i))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                          max_size=2 * n))
    edges.update((min(a, b), max(a, b)) for a, b in extra if a != b)
    return n, edges


class FloodOverGraphTests(SynchronousTestCase):
    @given(connected_graphs(), st.integers(0, 2**32 - 1), st.integers(1, 3))
    def test_every_node_delivers_exactly_once(
        self, graph: tuple[int, set[tuple[int, int]]], seed: int, senders: int
    ) -> None:
        n, edges = graph
        rng = random.Random(seed)
        clock = task.Clock()
        clock.advance(100)
        self.run_floods(n, edges, rng, {i: Flood(clock) for i in range(n)}, clock, senders)

    @given(connected_graphs(), st.integers(0, 2**32 - 1), st.integers(1, 3),
           st.lists(st.floats(-1e8, 1e8), min_size=25, max_size=25),
           st.integers(24, 255))
    def test_skewed_clocks_and_hop_limits_still_exactly_once(
        self, graph: tuple[int, set[tuple[int, int]]], seed: int, senders: int,
        offsets: list[float], max_hops: int,
    ) -> None:
        # Every node on its own clock (up to three years off), a hop limit of at least
        # n - 1: every node still delivers every broadcast once.
        n, edges = graph
        clock = task.Clock()
        clock.advance(1e9)
        floods = {i: Flood(Skewed(clock, offsets[i]), max_hops=max_hops) for i in range(n)}
        self.run_floods(n, edges, random.Random(seed), floods, clock, senders)

    def run_floods(self, n: int, edges: set[tuple[int, int]], rng: random.Random,
                   floods: dict[int, Flood], clock: task.Clock, senders: int) -> None:
        nbrs: dict[int, list[bytes]] = {i: [] for i in range(n)}
        for a, b in edges:
            nbrs[a].append(bytes([b]))
            nbrs[b].append(bytes([a]))
        delivered: dict[tuple[int, bytes], int] = {}
        in_flight: list[tuple[int, bytes, bytes, int]] = []  # (dst, via, msg id, hops)
        origins = [rng.randrange(n) for _ in range(senders)]
        for k, origin in enumerate(origins):
            msg_id = b"msg%d" % k
            hops = floods[origin].originate(msg_id)
            in_flight.extend((nb[0], bytes([origin]), msg_id, hops) for nb in nbrs[origin])
        steps = 0
        while in_flight:
            steps += 1
            self.assertLess(steps, 10 * n * n * senders + 10)
            dst, via, msg_id, hops = in_flight.pop(rng.randrange(len(in_flight)))
            clock.advance(rng.random() * 0.01)
            decision = floods[dst].receive(msg_id, hops, via, nbrs[dst])
            if decision.deliver:
                delivered[(dst, msg_id)] = delivered.get((dst, msg_id), 0) + 1
            in_flight.extend((p[0], bytes([dst]), msg_id, decision.hops)
                             for p in decision.relay_to)
        for k, origin in enumerate(origins):
            msg_id = b"msg%d" % k
            for i in range(n):
                self.assertEqual(delivered.get((i, msg_id), 0), 0 if i == origin else 1)
