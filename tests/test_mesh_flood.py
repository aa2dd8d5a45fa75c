"""Tests of p2pnet.mesh.flood: the seen-cache and the relay rule."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.mesh.flood import Flood, SeenCache


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
        d = flood.receive(b"m", 0.0, b"b", [b"a", b"b", b"c"])
        self.assertTrue(d.deliver)
        self.assertEqual(d.relay_to, (b"a", b"c"))
        self.assertIsNone(d.dropped)

    def test_drop_seen(self) -> None:
        flood = Flood(task.Clock())
        flood.receive(b"m", 0.0, b"b", [b"b"])
        d = flood.receive(b"m", 0.0, b"c", [b"b", b"c"])
        self.assertEqual((d.deliver, d.relay_to, d.dropped), (False, (), "seen"))

    def test_own_broadcast_never_delivered(self) -> None:
        clock = task.Clock()
        clock.advance(5)
        flood = Flood(clock)
        self.assertEqual(flood.originate(b"m"), 5)
        self.assertEqual(flood.receive(b"m", 5, b"b", [b"b"]).dropped, "seen")

    def test_drop_too_old_and_from_future(self) -> None:
        clock = task.Clock()
        clock.advance(1000)
        flood = Flood(clock, ttl=60)
        self.assertEqual(flood.receive(b"m", 939.9, b"b", []).dropped, "too_old")
        self.assertEqual(flood.receive(b"n", 1060.1, b"b", []).dropped, "from_future")
        self.assertTrue(flood.receive(b"o", 940.0, b"b", []).deliver)
        # a dropped message was not remembered
        self.assertNotIn(b"m", flood.seen)

    def test_seen_forgotten_after_ttl_but_message_too_old_then(self) -> None:
        clock = task.Clock()
        flood = Flood(clock, ttl=60)
        flood.receive(b"m", 0.0, b"b", [])
        clock.advance(61)
        self.assertNotIn(b"m", flood.seen)
        self.assertEqual(flood.receive(b"m", 0.0, b"c", []).dropped, "too_old")


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
        nbrs: dict[int, list[bytes]] = {i: [] for i in range(n)}
        for a, b in edges:
            nbrs[a].append(bytes([b]))
            nbrs[b].append(bytes([a]))
        floods = {i: Flood(clock) for i in range(n)}
        delivered: dict[tuple[int, bytes], int] = {}
        in_flight: list[tuple[int, bytes, bytes, float]] = []  # (dst, via, msg id, sent)
        origins = [rng.randrange(n) for _ in range(senders)]
        for k, origin in enumerate(origins):
            msg_id = b"msg%d" % k
            sent = floods[origin].originate(msg_id)
            in_flight.extend((nb[0], bytes([origin]), msg_id, sent) for nb in nbrs[origin])
        steps = 0
        while in_flight:
            steps += 1
            self.assertLess(steps, 10 * n * n * senders + 10)
            dst, via, msg_id, sent = in_flight.pop(rng.randrange(len(in_flight)))
            clock.advance(rng.random() * 0.01)
            decision = floods[dst].receive(msg_id, sent, via, nbrs[dst])
            if decision.deliver:
                delivered[(dst, msg_id)] = delivered.get((dst, msg_id), 0) + 1
            in_flight.extend((p[0], bytes([dst]), msg_id, sent) for p in decision.relay_to)
        for k, origin in enumerate(origins):
            msg_id = b"msg%d" % k
            for i in range(n):
                self.assertEqual(delivered.get((i, msg_id), 0), 0 if i == origin else 1)
