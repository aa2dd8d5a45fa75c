"""Tests for :mod:`p2pnet.mesh.memory`: the in-memory mesh on a clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from p2pnet.mesh.interfaces import IMesh, MeshMessage
from p2pnet.mesh.memory import MemoryMesh, MemoryMeshNetwork, SkewedClock


def ids(n: int) -> list[bytes]:
    return [b"n%02d" % i for i in range(n)]


def build(net: MemoryMeshNetwork, n: int, shape: str) -> list[MemoryMesh]:
    nodes = [net.node(i) for i in ids(n)]
    names = [m.peer_id for m in nodes]
    if shape == "line":
        pairs = list(zip(names, names[1:], strict=False))
    elif shape == "ring":
        pairs = list(zip(names, names[1:] + names[:1], strict=False))
    elif shape == "star":
        pairs = [(names[0], other) for other in names[1:]]
    elif shape == "full":
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    else:
        raise ValueError(shape)
    net.link_all(pairs)
    return nodes


class Recorder:
    def __init__(self, mesh: MemoryMesh, channel: bytes = b"app") -> None:
        self.got: list[MeshMessage] = []
        mesh.handle(channel, self.got.append)


class NodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.net = MemoryMeshNetwork(self.clock, latency=0.01)

    def test_provides_imesh(self) -> None:
        self.assertTrue(verifyObject(IMesh, self.net.node(b"a")))

    def test_node_id_checked(self) -> None:
        self.net.node(b"a")
        self.assertRaises(ValueError, self.net.node, b"a")
        self.assertRaises(TypeError, self.net.node, "a")

    def test_link_fires_connect_both_sides(self) -> None:
        a, b = self.net.node(b"a"), self.net.node(b"b")
        events: list[tuple[bytes, bytes, str]] = []
        a.on("connect", lambda m, p: events.append((m.peer_id, p, "c")))

        @b.on("connect")
        def on_b(m: MemoryMesh, p: bytes) -> None:
            events.append((m.peer_id, p, "c"))

        b.on("disconnect", lambda m, p: events.append((m.peer_id, p, "d")))
        self.assertTrue(self.net.link(b"a", b"b"))
        self.assertFalse(self.net.link(b"b", b"a"))
        self.assertEqual(a.peers(), [b"b"])
        self.assertEqual(b.peers(), [b"a"])
        self.assertTrue(self.net.unlink(b"b", b"a"))
        self.assertFalse(self.net.unlink(b"a", b"b"))
        self.assertEqual(events, [(b"a", b"b", "c"), (b"b", b"a", "c"), (b"b", b"a", "d")])
        self.assertEqual(a.peers(), [])
        self.assertRaises(ValueError, self.net.link, b"a", b"a")
        self.assertRaises(KeyError, self.net.link, b"a", b"zz")

    def test_unknown_event_refused(self) -> None:
        a = self.net.node(b"a")
        self.assertRaises(ValueError, a.on, "conect", lambda *x: None)

    def test_send_after_latency(self) -> None:
        a, b = self.net.node(b"a"), self.net.node(b"b")
        rec = Recorder(b)
        self.net.link(b"a", b"b")
        self.clock.advance(5)
        a.send(b"b", b"x", b"y", channel=b"app")
        self.clock.advance(0.009)
        self.assertEqual(rec.got, [])
        self.clock.advance(0.001)
        self.assertEqual(len(rec.got), 1)
        msg = rec.got[0]
        self.assertEqual((msg.origin, msg.via, msg.channel, msg.parts, msg.msg_id),
                         (b"a", b"a", b"app", (b"x", b"y"), None))
        self.assertEqual(msg.sent_at, 5.0)
        self.assertFalse(msg.broadcast)

    def test_jitter_reorders_and_duplicate_repeats(self) -> None:
        # the hypothesis tests of the sync socket rely on both really happening
        net = MemoryMeshNetwork(self.clock, latency=0.01, jitter=0.05, duplicate=0.5,
                                seed=1)
        a, b = net.node(b"a"), net.node(b"b")
        rec = Recorder(b)
        net.link(b"a", b"b")
        sent = [b"%d" % i for i in range(40)]
        for part in sent:
            a.send(b"b", part, channel=b"app")
        net.flush()
        got = [m.parts[0] for m in rec.got]
        self.assertEqual(set(got), set(sent))
        self.assertGreater(len(got), len(sent))  # some came twice
        deduplicated = list(dict.fromkeys(got))
        self.assertNotEqual(deduplicated, sent)  # and not in the order sent

    def test_send_to_unconnected_raises(self) -> None:
        a = self.net.node(b"a")
        self.net.node(b"b")
        self.assertRaises(KeyError, a.send, b"b", b"x")

    def test_parts_must_be_bytes(self) -> None:
        a = self.net.node(b"a")
        self.assertRaises(TypeError, a.broadcast, "x")
        self.assertRaises(TypeError, a.broadcast, b"x", channel="c")

    def test_unhandled_channel_fires_message(self) -> None:
        a, b = self.net.node(b"a"), self.net.node(b"b")
        got: list[MeshMessage] = []
        b.on("message", lambda m, msg: got.append(msg))
        Recorder(b, b"app")
        self.net.link(b"a", b"b")
        a.send(b"b", b"1", channel=b"app")
        a.send(b"b", b"2", channel=b"other")
        self.net.flush()
        self.assertEqual([m.parts for m in got], [(b"2",)])
        self.assertEqual(b.stats["unhandled"], 1)

    def test_handler_registered_once(self) -> None:
        a = self.net.node(b"a")
        a.handle(b"c", lambda m: None)
        self.assertRaises(ValueError, a.handle, b"c", lambda m: None)

    def test_failing_handler_counted(self) -> None:
        a, b = self.net.node(b"a"), self.net.node(b"b")

        def boom(msg: MeshMessage) -> None:
            raise RuntimeError("boom")

        b.handle(b"app", boom)
        self.net.link(b"a", b"b")
        a.send(b"b", b"x", channel=b"app")
        self.net.flush()
        self.assertEqual(b.stats["handler_failed"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_in_flight_lost_on_unlink(self) -> None:
        a, b = self.net.node(b"a"), self.net.node(b"b")
        rec = Recorder(b)
        self.net.link(b"a", b"b")
        a.send(b"b", b"x", channel=b"app")
        self.net.unlink(b"a", b"b")
        self.net.link(b"a", b"b")  # a new connection does not carry the old one's data
        self.net.flush()
        self.assertEqual(rec.got, [])
        self.assertEqual(self.net.lost, 1)

    def test_drop_in_flight(self) -> None:
        a, b = self.net.node(b"a"), self.net.node(b"b")
        rec = Recorder(b)
        self.net.link(b"a", b"b")
        a.send(b"b", b"1", channel=b"app")
        a.broadcast(b"2", channel=b"app")
        self.assertEqual(self.net.drop_in_flight(), 2)
        self.assertEqual((self.net.in_flight, self.net.lost), (0, 2))
        a.send(b"b", b"3", channel=b"app")  # the network goes on
        self.net.flush()
        self.assertEqual([m.parts for m in rec.got], [(b"3",)])

    def test_remove_and_reuse_id(self) -> None:
        self.net.node(b"a")
        b = self.net.node(b"b")
        self.net.link(b"a", b"b")
        self.net.remove(b"a")
        self.assertEqual(b.peers(), [])
        self.net.node(b"a")

    def test_partition_and_heal(self) -> None:
        build(self.net, 4, "ring")
        cut = self.net.partition([b"n00", b"n01"], [b"n02", b"n03"])
        self.assertEqual(cut, [(b"n00", b"n03"), (b"n01", b"n02")])
        self.assertEqual(self.net.links(), [(b"n00", b"n01"), (b"n02", b"n03")])
        self.net.link_all(cut)
        self.assertEqual(len(self.net.links()), 4)


class FloodTests(SynchronousTestCase):
    def flood(self, n: int, shape: str, **kw: float) -> tuple[list[Counter[bytes]],
                                                               MemoryMeshNetwork]:
        clock = task.Clock()
        net = MemoryMeshNetwork(clock, **kw)  # type: ignore[arg-type]
        nodes = build(net, n, shape)
        recs = [Recorder(m) for m in nodes]
        sent = [m.broadcast(b"from " + m.peer_id, channel=b"app") for m in nodes]
        net.flush()
        self.assertEqual(len(set(sent)), n)
        counts = [Counter(msg.msg_id for msg in r.got) for r in recs]
        return counts, net

    def check_once(self, n: int, shape: str, **kw: float) -> None:
        counts, net = self.flood(n, shape, **kw)
        for i, count in enumerate(counts):
            origins = sorted(set(count))
            self.assertEqual(len(origins), n - 1, (shape, i))  # everyone but itself
            self.assertEqual(set(count.values()), {1}, (shape, i))

    def test_line_ring_star_full(self) -> None:
        for shape in ("line", "ring", "star", "full"):
            for n in (2, 3, 10):
                self.check_once(n, shape)

    def test_once_with_reordering_and_duplicates(self) -> None:
        for shape in ("line", "ring", "full"):
            self.check_once(8, shape, jitter=0.05, duplicate=0.5, seed=3)

    def test_relay_keeps_origin_and_sets_via(self) -> None:
        clock = task.Clock()
        net = MemoryMeshNetwork(clock)
        a, b, c = build(net, 3, "line")
        rec = Recorder(c)
        msg_id = a.broadcast(b"x", channel=b"app")
        net.flush()
        (msg,) = rec.got
        self.assertEqual((msg.origin, msg.via, msg.msg_id), (b"n00", b"n01", msg_id))
        self.assertTrue(msg.broadcast)

    def test_slow_links_still_deliver(self) -> None:
        # 90 s on the way to the third hop: no age limit drops it (version 1 did)
        clock = task.Clock()
        net = MemoryMeshNetwork(clock, latency=30.0, seen_ttl=60.0)
        nodes = build(net, 4, "line")
        rec = Recorder(nodes[3])
        nodes[0].broadcast(b"x", channel=b"app")
        net.flush()
        self.assertEqual(len(rec.got), 1)
        self.assertEqual(clock.seconds(), 90.0)

    def test_hop_limit(self) -> None:
        clock = task.Clock()
        net = MemoryMeshNetwork(clock, max_hops=2)
        nodes = build(net, 4, "line")
        recs = [Recorder(m) for m in nodes]
        nodes[0].broadcast(b"x", channel=b"app")
        net.flush()
        self.assertEqual([len(r.got) for r in recs], [0, 1, 1, 0])
        self.assertEqual((nodes[1].stats["relayed"], nodes[2].stats["last_hop"]), (1, 1))

    def skewed_mesh(self, shape: str, n: int = 6) -> tuple[MemoryMeshNetwork,
                                                         list[MemoryMesh]]:
        """A mesh where n01 runs 10 minutes ahead, n02 10 minutes behind (on a skewed
        view of the network's clock) and n03 on a task.Clock of its own, 10 minutes
        ahead, that nobody advances."""
        clock = task.Clock()
        clock.advance(10_000)
        own = task.Clock()
        own.advance(10_600)
        clocks: dict[int, Any] = {1: SkewedClock(clock, 600.0),
                                  2: SkewedClock(clock, -600.0), 3: own}
        net = MemoryMeshNetwork(clock, jitter=0.02, duplicate=0.3, seed=5)
        nodes = [net.node(b"n%02d" % i, clocks.get(i)) for i in range(n)]
        names = [m.peer_id for m in nodes]
        if shape == "ring":
            net.link_all(zip(names, names[1:] + names[:1], strict=True))
        else:
            net.link_all((a, b) for i, a in enumerate(names) for b in names[i + 1:])
        return net, nodes

    def test_skewed_clocks_receive_every_broadcast_once(self) -> None:
        for shape in ("ring", "full"):
            net, nodes = self.skewed_mesh(shape)
            recs = [Recorder(m) for m in nodes]
            sent = {}
            for _ in range(3):  # over more than a ttl of the network's clock
                for i, m in enumerate(nodes):
                    sent[m.broadcast(b"from %d" % i, channel=b"app")] = i
                net.flush()
                net.clock.advance(45)  # type: ignore[attr-defined]
            for i, rec in enumerate(recs):
                got = Counter(msg.msg_id for msg in rec.got)
                self.assertEqual(set(got), {mid for mid, s in sent.items() if s != i},
                                 (shape, i))
                self.assertEqual(set(got.values()), {1}, (shape, i))
            for m in nodes:
                self.assertEqual(m.stats["hop_limit"], 0)
                self.assertEqual(m.stats["last_hop"], 0)

    def test_sent_at_is_the_origins_clock(self) -> None:
        net, nodes = self.skewed_mesh("full", 4)
        rec = Recorder(nodes[0])
        for m in nodes[1:]:
            m.broadcast(b"x", channel=b"app")
        net.flush()
        by_origin = {msg.origin: msg.sent_at for msg in rec.got}
        self.assertEqual(by_origin, {b"n01": 10_600.0, b"n02": 9_400.0, b"n03": 10_600.0})

    def test_relay_loop_bounded_when_ids_are_forgotten(self) -> None:
        # seen ids forgotten before the next hop arrives: only the hop limit ends it
        clock = task.Clock()
        net = MemoryMeshNetwork(clock, latency=0.01, seen_ttl=0.001, max_hops=30)
        nodes = build(net, 5, "ring")
        net.unlink(b"n00", b"n04")  # n00 hangs off the ring n01 n02 n03 n04
        net.link(b"n01", b"n04")
        recs = [Recorder(m) for m in nodes]
        nodes[0].broadcast(b"x", channel=b"app")
        net.flush()
        # one link to n01, then at most one copy each way round the ring (two copies
        # that reach a node at the same instant are one), until the hop limit ends it
        self.assertGreater(net.sent, 3 * 4)  # round the ring of 4 more than 3 times
        self.assertLessEqual(net.sent, 1 + 2 * 29)
        self.assertEqual(sum(len(r.got) for r in recs), net.sent - sum(
            m.stats["seen"] for m in nodes))
        self.assertGreaterEqual(sum(m.stats["last_hop"] for m in nodes), 1)
        self.assertGreater(len(recs[1].got), 3)  # n01 delivered it again and again

    def test_seen_cache_bounded(self) -> None:
        clock = task.Clock()
        net = MemoryMeshNetwork(clock, seen_size=10, seen_ttl=5.0)
        a, b = build(net, 2, "line")
        Recorder(b)
        for _ in range(50):
            a.broadcast(b"x", channel=b"app")
        net.flush()
        self.assertLessEqual(len(b.flood.seen), 10)
        clock.advance(10)
        b.broadcast(b"y")
        self.assertEqual(len(b.flood.seen), 1)  # the rest aged out

    def test_flush_bounded(self) -> None:
        clock = task.Clock()
        net = MemoryMeshNetwork(clock)
        a, b = build(net, 2, "line")
        # ping-pong forever: flush must give up, not hang
        a.handle(b"pp", lambda m: a.send(b"n01", b"p", channel=b"pp"))
        b.handle(b"pp", lambda m: b.send(b"n00", b"p", channel=b"pp"))
        a.send(b"n01", b"p", channel=b"pp")
        self.assertRaises(RuntimeError, net.flush, 50)

    def test_fifo_per_link_without_jitter(self) -> None:
        clock = task.Clock()
        net = MemoryMeshNetwork(clock, latency=0.5)
        a, b = build(net, 2, "line")
        rec = Recorder(b)
        for i in range(50):
            a.send(b"n01", b"%d" % i, channel=b"app")
            if i % 10 == 0:
                clock.advance(0.1)
        net.flush()
        self.assertEqual([m.parts[0] for m in rec.got], [b"%d" % i for i in range(50)])

    def test_max_age_is_the_old_name_of_seen_ttl(self) -> None:
        net = MemoryMeshNetwork(task.Clock(), max_age=5.0)
        self.assertEqual(net.seen_ttl, 5.0)
        self.assertEqual(net.node(b"a").flood.seen.ttl, 5.0)

    def test_bad_parameters(self) -> None:
        clock = task.Clock()
        self.assertRaises(ValueError, MemoryMeshNetwork, clock, latency=-1)
        self.assertRaises(ValueError, MemoryMeshNetwork, clock, latency=0)
        self.assertRaises(ValueError, MemoryMeshNetwork, clock, duplicate=1.0)

    @given(
        n=st.integers(2, 9),
        extra=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=12),
        senders=st.lists(st.integers(0, 8), min_size=1, max_size=6),
        seed=st.integers(0, 2**16),
    )
    def test_any_connected_shape_delivers_once(self, n: int,
                                               extra: list[tuple[int, int]],
                                               senders: list[int], seed: int) -> None:
        clock = task.Clock()
        net = MemoryMeshNetwork(clock, jitter=0.02, duplicate=0.3, seed=seed)
        nodes = build(net, n, "line")  # connected
        for i, j in extra:
            if i < n and j < n and i != j:
                net.link(nodes[i].peer_id, nodes[j].peer_id)
        recs = [Recorder(m) for m in nodes]
        sent: dict[bytes, int] = {}
        for s in senders:
            s %= n
            sent[nodes[s].broadcast(b"m", channel=b"app")] = s
        net.flush()
        for i, rec in enumerate(recs):
            got = Counter(m.msg_id for m in rec.got)
            want = {mid for mid, s in sent.items() if s != i}
            self.assertEqual(set(got), want)
            self.assertTrue(all(v == 1 for v in got.values()))
