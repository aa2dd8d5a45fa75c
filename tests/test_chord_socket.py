"""Tests for :mod:`p2pnet.chord.socket` on ``task.Clock``: the in-memory DHT network
(:mod:`p2pnet.sim.memory`) under the values and the in-memory mesh
(:mod:`p2pnet.mesh.memory`) under the key notices.  No socket is opened.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.chord import record
from p2pnet.chord.errors import (
    ChordTimeoutError,
    CorruptRecordError,
    KeySetFullError,
    ReactorThreadError,
    SocketClosedError,
)
from p2pnet.chord.keyset import Entry, encode_entries
from p2pnet.chord.socket import (
    CHANNEL,
    NOTICE,
    SET,
    SET_REQUEST,
    SET_REQUEST_INTERVAL,
    ChordSocket,
)
from p2pnet.dht.limits import Limits
from p2pnet.dht.network import DHTNetwork
from p2pnet.dht.publishing import Maintenance
from p2pnet.mesh.memory import MemoryMeshNetwork
from tests.dhthelpers import Sim


class ChordNet:
    """``n`` nodes: a DHT node and a chord socket on a mesh node each, one clock.

    The mesh is a tree (node i links to node (i - 1) // 2), so notices are relayed.
    """

    def __init__(self, n: int, *, seed: int = 0, link: bool = True, timeout: float = 10.0,
                 limits: Limits | None = None, **dht_kw: Any) -> None:
        self.sim = Sim(seed=seed)
        self.clock = self.sim.clock
        self.sim.add_many(n, **dht_kw)
        self.sim.join_all()
        self.mesh = MemoryMeshNetwork(self.clock, latency=0.005)
        self.socks: list[ChordSocket] = []
        self.events: list[Counter[tuple[str, bytes]]] = []
        self.timeout = timeout
        self.limits = limits
        for node in self.sim.nodes:
            self._add_socket(node)
        if link:
            for i in range(1, n):
                self.mesh.link(self.id(i), self.id((i - 1) // 2))
        self.flush()

    @staticmethod
    def id(i: int) -> bytes:
        return b"n%03d" % i

    def _add_socket(self, node: DHTNetwork) -> ChordSocket:
        i = len(self.socks)
        sock = ChordSocket(self.mesh.node(self.id(i)), node, timeout=self.timeout,
                           limits=self.limits)
        counts: Counter[tuple[str, bytes]] = Counter()
        sock.on("add", lambda s, k, c=counts, me=sock: c.update([("add", k)])
                if s is me else None)
        sock.on("delete", lambda s, k, c=counts: c.update([("delete", k)]))
        self.socks.append(sock)
        self.events.append(counts)
        return sock

    def add_node(self, link_to: int | None = 0) -> ChordSocket:
        node = self.sim.add()
        self.sim.run(node.join_network(self.sim.nodes[0].address))
        sock = self._add_socket(node)
        if link_to is not None:
            self.mesh.link(sock.mesh.peer_id, self.id(link_to))
        self.flush()
        return sock

    def flush(self) -> None:
        self.mesh.flush()

    def do(self, d: defer.Deferred[Any]) -> Any:
        """Run the clock until ``d`` fires, deliver the notices, return its result (or
        the Failure)."""
        self.sim.run(d)
        self.flush()
        return outcome(d)

    def ok(self, d: defer.Deferred[Any]) -> Any:
        result = self.do(d)
        if isinstance(result, Exception) or hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def kill(self, i: int) -> None:
        """Node ``i`` drops without a word: its UDP endpoint and mesh links vanish."""
        self.sim.nodes[i].protocol.transport.stopListening()
        self.mesh.remove(self.id(i))


def outcome(d: defer.Deferred[Any]) -> Any:
    """The result or Failure of a fired Deferred (the Failure is consumed)."""
    box: list[Any] = []
    d.addBoth(lambda r: box.append(r))
    if not box:
        raise AssertionError(f"{d!r} has not fired")
    return box[0]


def fails_with(test: SynchronousTestCase, result: Any, exc: type[BaseException]) -> Any:
    test.assertTrue(hasattr(result, "check"), f"expected a failure, got {result!r}")
    test.assertTrue(result.check(exc), f"expected {exc.__name__}, got {result!r}")
    return result.value


class DictAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = ChordNet(8)
        self.a, self.b, self.c = self.net.socks[0], self.net.socks[5], self.net.socks[7]

    def test_set_on_one_get_on_another(self) -> None:
        self.assertIsNone(self.net.ok(self.a.d_set(b"k", b"v")))
        self.assertEqual(self.net.ok(self.b.d_get(b"k")), b"v")
        self.assertEqual(self.net.ok(self.c.d_get("k")), b"v")

    def test_str_is_utf8(self) -> None:
        self.net.ok(self.a.d_set("clé", "valeur"))
        self.assertEqual(self.net.ok(self.b.d_get("clé".encode())), b"valeur")
        self.net.ok(self.a.d_set(bytearray(b"ba"), memoryview(b"mv")))
        self.assertEqual(self.net.ok(self.b.d_get(b"ba")), b"mv")
        self.assertIn("clé", self.c)
        self.assertFalse(self.c.__contains__(5))
        self.assertIsInstance(self.net.do(self.a.d_set(5, b"x")).value, TypeError)
        self.assertIsInstance(self.net.do(self.a.d_set(b"k", None)).value, TypeError)

    def test_missing_key(self) -> None:
        err = fails_with(self, self.net.do(self.b.d_get(b"nope")), KeyError)
        self.assertIs(type(err), KeyError)
        self.assertEqual(self.net.ok(self.b.d_get(b"nope", None)), None)
        self.assertEqual(self.net.ok(self.b.d_get(b"nope", b"dflt")), b"dflt")

    def test_delete_is_a_tombstone(self) -> None:
        self.net.ok(self.a.d_set(b"k", b"v"))
        self.net.ok(self.b.d_delete(b"k"))
        fails_with(self, self.net.do(self.c.d_get(b"k")), KeyError)
        fails_with(self, self.net.do(self.a.d_get(b"k")), KeyError)
        # the tombstone is in the DHT: the newest record under the key
        raw = self.net.ok(self.net.sim.nodes[3].get(record.dht_key(b"k")))
        self.assertFalse(record.decode(raw).present)
        # and the key can come back
        self.net.ok(self.c.d_set(b"k", b"again"))
        self.assertEqual(self.net.ok(self.a.d_get(b"k")), b"again")

    def test_delete_unknown_key(self) -> None:
        fails_with(self, self.net.do(self.a.d_delete(b"never")), KeyError)
        self.net.ok(self.a.d_set(b"k", b"v"))
        self.net.ok(self.a.d_delete(b"k"))
        fails_with(self, self.net.do(self.b.d_delete(b"k")), KeyError)

    def test_pop_popitem_setdefault(self) -> None:
        self.net.ok(self.a.d_set(b"x", b"1"))
        self.net.ok(self.a.d_set(b"y", b"2"))
        self.assertEqual(self.net.ok(self.b.d_pop(b"x")), b"1")
        fails_with(self, self.net.do(self.b.d_pop(b"x")), KeyError)
        self.assertEqual(self.net.ok(self.b.d_pop(b"x", b"d")), b"d")
        self.assertEqual(self.net.ok(self.c.d_setdefault(b"y", b"9")), b"2")
        self.assertEqual(self.net.ok(self.c.d_setdefault(b"z", b"3")), b"3")
        self.assertEqual(self.net.ok(self.a.d_get(b"z")), b"3")
        fails_with(self, self.net.do(self.c.d_setdefault(b"w")), TypeError)
        # popitem takes the last key added
        self.assertEqual(self.net.ok(self.a.d_popitem()), (b"z", b"3"))
        self.assertEqual(self.net.ok(self.b.d_popitem()), (b"y", b"2"))
        err = fails_with(self, self.net.do(self.c.d_popitem()), KeyError)
        self.assertIn("empty", str(err))

    def test_update_keys_values_items_copy_clear(self) -> None:
        self.net.ok(self.a.d_update({b"a": b"1", "b": "2"}, c=b"3"))
        self.net.ok(self.a.d_update([(b"d", b"4")]))
        for s in self.net.socks:
            self.assertEqual(sorted(s.keys()), [b"a", b"b", b"c", b"d"])
            self.assertEqual(len(s), 4)
        # the writes of one update run in parallel: the order they land in is not defined
        self.assertEqual(sorted(self.b), [b"a", b"b", b"c", b"d"])
        keys = self.net.ok(self.b.d_keys())
        self.assertEqual(keys, list(self.b))  # the key set's order
        self.assertEqual(sorted(keys), [b"a", b"b", b"c", b"d"])
        self.assertEqual(self.net.ok(self.b.d_len()), 4)
        self.assertTrue(self.net.ok(self.b.d_contains("a")))
        self.assertEqual(sorted(self.net.ok(self.c.d_values())), [b"1", b"2", b"3", b"4"])
        items = self.net.ok(self.c.d_items())
        self.assertEqual([k for k, _ in items], list(self.c))  # in the key set's order
        self.assertEqual(sorted(items), [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"),
                                         (b"d", b"4")])
        self.assertEqual(self.net.ok(self.c.d_copy()),
                         {b"a": b"1", b"b": b"2", b"c": b"3", b"d": b"4"})
        self.net.ok(self.b.d_clear())
        for s in self.net.socks:
            self.assertEqual(list(s.keys()), [])
        fails_with(self, self.net.do(self.a.d_get(b"c")), KeyError)
        self.assertIsInstance(self.net.do(self.a.d_update([(b"only one",)])).value,
                              ValueError)

    def test_update_with_one_key_twice_keeps_the_last(self) -> None:
        """As ``dict.update``: a key given twice (``"k"`` and ``b"k"`` are one key) ends
        with the last value, though the writes of an update run in parallel."""
        pairs = []
        for i in range(8):
            pairs += [(b"k%d" % i, b"first"), (f"k{i}", b"last")]
        self.net.ok(self.a.d_update(pairs))
        for i in range(8):
            self.assertEqual(self.net.ok(self.b.d_get(b"k%d" % i)), b"last", i)
        self.net.ok(self.a.d_update({b"x": b"1"}, x=b"2"))
        self.assertEqual(self.net.ok(self.b.d_get(b"x")), b"2")

    def test_overwrite_keeps_one_key(self) -> None:
        self.net.ok(self.a.d_set(b"k", b"1"))
        self.net.ok(self.b.d_set(b"k", b"2"))
        self.net.ok(self.c.d_set(b"k", b"3"))
        for s in self.net.socks:
            self.assertEqual(list(s.keys()), [b"k"])
        self.assertEqual(self.net.ok(self.a.d_get(b"k")), b"3")

    def test_same_clock_time_writes_are_ordered(self) -> None:
        """Writes in the same instant still order: each is just past the newest known."""
        for i in range(5):
            d = self.a.d_set(b"k", b"%d" % i)
            self.net.ok(d)
        self.assertEqual(self.net.ok(self.b.d_get(b"k")), b"4")

    def test_sizes(self) -> None:
        big_key = b"k" * (Limits().chord_max_key_size + 1)
        self.assertIsInstance(self.net.do(self.a.d_set(big_key, b"v")).value, ValueError)
        self.assertIsInstance(self.net.do(self.a.d_get(big_key)).value, ValueError)
        too_big = b"v" * (record.max_value_size(b"k", 1024 * 1024) + 1)
        self.assertIsInstance(self.net.do(self.a.d_set(b"k", too_big)).value, ValueError)

    def test_hops_counted(self) -> None:
        self.assertIsNone(self.a.last_hops)
        self.net.ok(self.a.d_set(b"k", b"v"))
        self.assertGreaterEqual(self.a.last_hops, 1)
        self.net.ok(self.b.d_get(b"k"))
        self.assertGreaterEqual(self.b.last_hops, 1)
        self.assertEqual(self.a.stats.ops["set"], 1)
        self.assertEqual(self.b.stats.ops["get"], 1)
        self.assertGreaterEqual(self.b.stats.mean_hops("get"), 1.0)
        self.assertEqual(self.b.stats.mean_hops("set"), 0.0)
        self.net.do(self.b.d_get(b"nope"))
        self.assertEqual(self.b.stats.failures["get"], 1)

    def test_hops_grow_like_log_n(self) -> None:
        """Few contacts per bucket (k = 3), so lookups must hop: the hops of sets and
        gets grow with the network, and stay within about log2(n)."""
        means = []
        for n in (4, 16, 64):
            net = ChordNet(n, seed=1, k=3, link=False)
            hops = []
            for j in range(12):
                writer, reader = net.socks[(j * 7) % n], net.socks[(j * 5 + 3) % n]
                net.ok(writer.d_set(b"k%d" % j, b"v"))
                hops.append(writer.last_hops)
                self.assertEqual(net.ok(reader.d_get(b"k%d" % j)), b"v")
                hops.append(reader.last_hops)
            self.assertLessEqual(max(hops), math.ceil(math.log2(n)) + 1, f"n = {n}")
            means.append(sum(hops) / len(hops))
        self.assertLess(means[0], means[1])
        self.assertLess(means[1], means[2])

    def test_corrupt_record(self) -> None:
        """Bytes under a chord key that are not its record: a typed error, counted."""
        node = self.net.sim.nodes[2]
        self.net.ok(node.put(record.dht_key(b"k"), b"garbage"))
        fails_with(self, self.net.do(self.a.d_get(b"k")), CorruptRecordError)
        other = record.encode(record.Record.value_of(b"other", b"v", 1e6))
        self.net.ok(node.put(record.dht_key(b"k"), other, 2e6))
        fails_with(self, self.net.do(self.a.d_get(b"k")), CorruptRecordError)
        self.assertEqual(self.a.refused["corrupt_record"], 2)

    def test_read_repair(self) -> None:
        """A node that missed a notice learns the write when it reads the key."""
        lone = self.net.add_node(link_to=None)
        self.net.ok(self.a.d_set(b"k", b"v"))
        self.assertNotIn(b"k", lone)
        self.assertEqual(self.net.ok(lone.d_get(b"k")), b"v")
        self.assertIn(b"k", lone)
        self.assertEqual(self.net.events[-1][("add", b"k")], 1)


class EventTests(SynchronousTestCase):
    def test_exactly_once_on_every_node(self) -> None:
        net = ChordNet(12)
        s = net.socks
        net.ok(s[0].d_set(b"a", b"1"))         # add a
        net.ok(s[5].d_set(b"a", b"2"))         # overwrite: no event
        net.ok(s[7].d_set(b"b", b"1"))         # add b
        net.ok(s[11].d_delete(b"a"))           # delete a
        net.ok(s[3].d_set(b"a", b"3"))         # add a again
        net.ok(s[2].d_pop(b"b"))               # delete b
        net.ok(s[9].d_update({b"c": b"1", b"d": b"2"}))
        net.ok(s[4].d_clear())                 # delete a, c, d
        want = Counter({("add", b"a"): 2, ("delete", b"a"): 2, ("add", b"b"): 1,
                        ("delete", b"b"): 1, ("add", b"c"): 1, ("delete", b"c"): 1,
                        ("add", b"d"): 1, ("delete", b"d"): 1})
        for i, counts in enumerate(net.events):
            self.assertEqual(counts, want, f"node {i}")

    def test_events_with_reordering_and_duplicates(self) -> None:
        net = ChordNet(10)
        net.mesh.jitter = 0.05
        net.mesh.duplicate = 0.3
        for i in range(6):
            net.ok(net.socks[i].d_set(b"k%d" % i, b"v"))
        net.ok(net.socks[9].d_delete(b"k2"))
        for i, counts in enumerate(net.events):
            self.assertEqual(sum(v for (ev, _), v in counts.items() if ev == "add"), 6,
                             f"node {i}")
            self.assertEqual(counts[("delete", b"k2")], 1)

    def test_handler_gets_socket_and_key(self) -> None:
        net = ChordNet(3)
        seen: list[tuple[Any, bytes]] = []
        net.socks[1].on("add")(lambda sock, key: seen.append((sock, key)))
        net.ok(net.socks[0].d_set("k", b"v"))
        self.assertEqual(seen, [(net.socks[1], b"k")])
        self.assertRaises(ValueError, net.socks[1].on, "update", print)


class ConnectTests(SynchronousTestCase):
    def test_connecting_node_receives_whole_set(self) -> None:
        net = ChordNet(6)
        net.ok(net.socks[0].d_update({b"a": b"1", b"b": b"2", b"c": b"3"}))
        net.ok(net.socks[1].d_delete(b"b"))
        late = net.add_node(link_to=3)
        self.assertEqual(list(late.keys()), [b"a", b"c"])
        # tombstones came too: an old notice cannot bring b back
        self.assertFalse(late.keyset.get(b"b").present)
        self.assertEqual(net.events[-1], Counter({("add", b"a"): 1, ("add", b"c"): 1}))
        self.assertEqual(net.ok(late.d_get(b"c")), b"3")

    def test_partition_heals(self) -> None:
        """Both sides write while cut; one link heals them and the news spreads to all."""
        net = ChordNet(10)
        cut = net.mesh.partition([net.id(i) for i in (0, 1, 3, 4, 7, 8, 9)],
                                 [net.id(i) for i in (2, 5, 6)])
        self.assertTrue(cut)
        net.ok(net.socks[7].d_set(b"left", b"1"))
        net.ok(net.socks[5].d_set(b"right", b"2"))
        net.ok(net.socks[0].d_set(b"both", b"L"))
        net.ok(net.socks[6].d_set(b"both", b"R"))  # later: wins
        net.mesh.link(net.id(9), net.id(6))  # a different link than the ones cut
        net.flush()
        for i, s in enumerate(net.socks):
            self.assertEqual(sorted(s.keys()), [b"both", b"left", b"right"], f"node {i}")
            self.assertEqual(s.keyset.get(b"both"), net.socks[6].keyset.get(b"both"))
        self.assertGreater(sum(s.counters["passed_on"] for s in net.socks), 0)
        self.assertEqual(net.ok(net.socks[0].d_get(b"both")), b"R")


    def test_socket_made_on_a_connected_mesh_asks_for_the_sets(self) -> None:
        net = ChordNet(4)
        net.ok(net.socks[0].d_update({b"a": b"1", b"b": b"2"}))
        mesh = net.mesh.node(b"already")
        net.mesh.link(b"already", net.id(2))
        net.flush()
        sock = ChordSocket(mesh, net.sim.nodes[1])
        net.flush()
        self.assertEqual(list(sock.keys()), [b"a", b"b"])
        self.assertEqual(net.socks[2].counters["set_requests"], 1)

    def test_concurrent_writes_converge(self) -> None:
        """Writes of one key from several nodes at once: every node ends with the same
        entry, and every reader gets the value that entry names."""
        net = ChordNet(8)
        net.mesh.jitter = 0.02
        ds = [net.socks[i].d_set(b"k", b"from %d" % i) for i in (1, 4, 6)]
        ds.append(net.socks[3].d_set(b"other", b"x"))
        for d in ds:
            net.ok(d)
        entries = {s.keyset.get(b"k") for s in net.socks}
        self.assertEqual(len(entries), 1)
        got = {net.ok(s.d_get(b"k")) for s in net.socks}
        self.assertEqual(len(got), 1)
        winner = entries.pop()
        raw = record.encode(record.Record.value_of(b"k", got.pop(), winner.timestamp))
        self.assertEqual(record.digest(raw), winner.digest)


class HostileNoticeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = ChordNet(2, limits=Limits(chord_max_keys=50, chord_max_key_size=16))
        self.sock = self.net.socks[1]
        self.evil = self.net.mesh.node(b"evil")
        self.net.mesh.link(b"evil", self.sock.mesh.peer_id)
        self.net.flush()

    def send(self, *parts: bytes) -> None:
        self.evil.send(self.sock.mesh.peer_id, *parts, channel=CHANNEL)
        self.net.flush()

    def test_malformed_dropped_and_counted(self) -> None:
        self.send(b"N")
        self.send(b"X", encode_entries([]))
        self.send(NOTICE, b"\x00\x01garbage")
        self.send(SET, b"", b"")
        self.assertEqual(self.sock.refused["malformed"], 4)
        self.assertEqual(len(self.sock), 0)
        # still works
        self.net.ok(self.net.socks[0].d_set(b"k", b"v"))
        self.assertEqual(list(self.sock.keys()), [b"k"])

    def test_future_notice_cannot_poison_a_key(self) -> None:
        self.net.ok(self.net.socks[0].d_set(b"k", b"v"))
        far = Entry(b"k", self.net.clock.seconds() + 1e9, b"\x01" * 20, False)
        self.send(NOTICE, encode_entries([far]))
        self.assertEqual(self.sock.refused["future_timestamp"], 1)
        self.assertIn(b"k", self.sock)
        self.net.ok(self.sock.d_set(b"k", b"w"))
        self.assertEqual(self.net.ok(self.net.socks[0].d_get(b"k")), b"w")

    def test_set_requests_are_rate_limited(self) -> None:
        self.net.ok(self.net.socks[0].d_set(b"k", b"v"))
        got: list[Any] = []
        self.evil.handle(CHANNEL, got.append)
        for _ in range(3):
            self.send(SET_REQUEST, b"")
        self.assertEqual(len(got), 1)
        self.assertEqual(self.sock.refused["set_request_too_soon"], 2)
        self.net.sim.settle(SET_REQUEST_INTERVAL)
        self.send(SET_REQUEST, b"")
        self.assertEqual(len(got), 2)

    def test_key_set_is_bounded(self) -> None:
        entries = [Entry(b"k%d" % i, 1.0, b"\x01" * 20, True) for i in range(200)]
        self.send(SET, encode_entries(entries))
        self.send(NOTICE, encode_entries([Entry(b"x" * 17, 1.0, b"\x01" * 20, True)]))
        self.assertEqual(self.sock.keyset.size, 50)
        self.assertEqual(self.sock.refused["keyset_full"], 150)
        self.assertEqual(self.sock.refused["key_too_large"], 1)
        # a local write of a new key is refused with a clear error, not dropped
        fails_with(self, self.net.do(self.sock.d_set(b"new", b"v")), KeySetFullError)
        # an existing key can still be written and deleted (the tombstone makes room)
        self.net.ok(self.sock.d_set(b"k3", b"v"))
        self.net.ok(self.sock.d_delete(b"k3"))
        self.net.ok(self.sock.d_set(b"new", b"v"))
        self.assertEqual(self.sock.refused["tombstone_evicted"], 1)


class FailureTests(SynchronousTestCase):
    def test_timeout_is_typed_and_not_keyerror(self) -> None:
        net = ChordNet(6, timeout=1.0)
        for i in range(1, 6):
            net.sim.net.blocked_hosts.add(net.sim.nodes[i].address[0])
        result = net.do(net.socks[0].d_get(b"k"))
        err = fails_with(self, result, ChordTimeoutError)
        self.assertNotIsInstance(err, KeyError)
        self.assertIsInstance(err, TimeoutError)
        fails_with(self, net.do(net.socks[0].d_set(b"k", b"v")), ChordTimeoutError)
        self.assertEqual(net.socks[0].stats.failures["set"], 1)
        self.assertEqual(list(net.socks[0].keys()), [])  # a failed write adds nothing
        self.assertFalse(net.clock.getDelayedCalls() and
                         any(c.func.__name__ == "expire" for c in net.clock.getDelayedCalls()))

    def test_timeout_when_all_holders_are_partitioned(self) -> None:
        """Every holder of a key cut off (the rest of the network answers): a read runs
        out of the socket's time and says so with the typed error, not ``KeyError``."""
        net = ChordNet(24)  # the DHT's defaults: k = 20, 2 s requests, one retry
        net.ok(net.socks[0].d_set(b"k", b"v"))
        holders = {i for i, n in enumerate(net.sim.nodes)
                   if n.kvp_table.records_for_key(record.dht_key(b"k"))}
        self.assertGreaterEqual(len(holders), 3)
        reader = net.socks[min(set(range(24)) - holders)]
        for i in holders:
            net.sim.net.blocked_hosts.add(net.sim.nodes[i].address[0])
        self.assertIn(b"k", reader)
        start = net.clock.seconds()
        err = fails_with(self, net.do(reader.d_get(b"k")), ChordTimeoutError)
        self.assertNotIsInstance(err, KeyError)
        self.assertAlmostEqual(net.clock.seconds() - start, reader.timeout, delta=1.0)
        self.assertEqual(reader.stats.failures["get"], 1)
        # a default does not hide a timeout: it is for absent keys only
        fails_with(self, net.do(reader.d_get(b"k", b"dflt")), ChordTimeoutError)
        fails_with(self, net.do(reader.d_delete(b"k")), ChordTimeoutError)
        self.assertIn(b"k", reader)  # a failed delete removes nothing

    def test_unreachable_holders_are_a_timeout_even_when_the_lookup_ends_early(self) -> None:
        """With short lookups (k = 4) the DHT's lookup ends well before the socket's time;
        holders that did not answer are still the typed timeout, never ``KeyError``."""
        net = ChordNet(24, timeout=600.0, k=4)
        net.ok(net.socks[0].d_set(b"k", b"v"))
        holders = {i for i, n in enumerate(net.sim.nodes)
                   if n.kvp_table.records_for_key(record.dht_key(b"k"))}
        reader = net.socks[min(set(range(24)) - holders)]
        for i in holders:
            net.sim.net.blocked_hosts.add(net.sim.nodes[i].address[0])
        start = net.clock.seconds()
        err = fails_with(self, net.do(reader.d_get(b"k")), ChordTimeoutError)
        self.assertNotIsInstance(err, KeyError)
        self.assertLess(net.clock.seconds() - start, 60.0)  # the DHT said so, not our timer

    def test_a_write_no_other_node_took_fails(self) -> None:
        """A writer whose DHT reaches no other node (its mesh still does): the write is
        not reported done -- it would die with the writer -- and no notice goes out."""
        net = ChordNet(6, timeout=600.0)
        for i in range(1, 6):
            net.sim.net.blocked_hosts.add(net.sim.nodes[i].address[0])
        err = fails_with(self, net.do(net.socks[0].d_set(b"k", b"v")), ChordTimeoutError)
        self.assertIn("no other node", str(err))
        for i, s in enumerate(net.socks):
            self.assertNotIn(b"k", s, f"node {i}")
            self.assertEqual(net.events[i], Counter())
        net.sim.net.blocked_hosts.clear()
        net.ok(net.socks[0].d_set(b"k", b"v"))
        net.kill(0)
        self.assertEqual(net.ok(net.socks[3].d_get(b"k")), b"v")

    def test_a_lone_node_is_a_dict(self) -> None:
        net = ChordNet(1)
        net.ok(net.socks[0].d_set(b"k", b"v"))
        self.assertEqual(net.ok(net.socks[0].d_get(b"k")), b"v")
        net.ok(net.socks[0].d_delete(b"k"))
        self.assertEqual(list(net.socks[0].keys()), [])

    def test_values_may_raise_keyerror_when_holders_gone(self) -> None:
        net = ChordNet(12, k=3)
        net.ok(net.socks[0].d_set(b"k", b"v"))
        holders = [i for i, n in enumerate(net.sim.nodes)
                   if n.kvp_table.records_for_key(record.dht_key(b"k"))]
        reader = next(i for i in range(12) if i not in holders)
        for i in holders:
            net.sim.nodes[i].protocol.transport.stopListening()
        self.assertIn(b"k", net.socks[reader])
        fails_with(self, net.do(net.socks[reader].d_values()), KeyError)
        fails_with(self, net.do(net.socks[reader].d_items()), KeyError)

    def test_stop_fails_pending(self) -> None:
        net = ChordNet(3)
        sock = net.socks[0]
        sock.startService()
        d = sock.d_set(b"k", b"v")
        self.assertFalse(d.called)
        self.successResultOf(sock.stopService())
        fails_with(self, outcome(d), SocketClosedError)
        fails_with(self, outcome(sock.d_get(b"k")), SocketClosedError)
        sock.startService()
        net.ok(sock.d_set(b"k", b"v"))

    def test_blocking_api_refuses_without_reactor_thread(self) -> None:
        net = ChordNet(2)
        sock = net.socks[0]
        with self.assertRaises(ReactorThreadError) as cm:
            sock[b"k"]
        self.assertIn("d_get", str(cm.exception))
        self.assertRaises(ReactorThreadError, sock.__setitem__, b"k", b"v")
        self.assertRaises(ReactorThreadError, sock.pop, b"k")
        # local reads need no lookup and work anywhere
        self.assertEqual(list(sock.keys()), [])
        self.assertEqual(len(sock), 0)

    def test_constructor(self) -> None:
        net = ChordNet(1)
        self.assertRaises(ValueError, ChordSocket, net.mesh.node(b"x"), net.sim.nodes[0],
                          timeout=0)
        self.assertIn("0 keys", repr(net.socks[0]))


class SurvivalTests(SynchronousTestCase):

    def test_values_are_handed_on_when_holders_go(self) -> None:
        """Few copies (k = 3), a third of the nodes killed in waves without a word, each
        wave taking holders of the values: the DHT's replication hands every value on
        before its last holder goes, so every value outlives all its first holders."""
        net = ChordNet(30, seed=5, k=3)
        for node in net.sim.nodes:
            m = Maintenance(node, wait_for_join=False)
            m.startService()
            self.addCleanup(m.stopService)
        values = {b"key%d" % i: b"value%d" % i for i in range(10)}
        for i, (k, v) in enumerate(values.items()):
            net.ok(net.socks[i + 10].d_set(k, v))

        def holders(k: bytes) -> set[int]:
            return {i for i, n in enumerate(net.sim.nodes)
                    if i not in dead and n.kvp_table.records_for_key(record.dht_key(k))}

        dead: set[int] = set()
        first = {k: holders(k) for k in values}
        while len(dead) < 10:
            # a wave of at most 4: the first holders of the values that have fewest left,
            # each value keeping one live holder through the wave (were they all killed
            # at once, nothing could save it)
            held = {k: holders(k) for k in values}
            wave: set[int] = set()
            targets = sorted(values, key=lambda k: (len(first[k] - dead), k))
            for i in [i for k in targets for i in sorted(first[k] - dead)]:
                if len(wave) < min(4, 10 - len(dead)) and all(
                        len(h - wave - {i}) >= 1 for h in held.values()):
                    wave.add(i)
            if not wave:  # no first holder may go now: any other node then
                wave = {min(set(range(30)) - dead - set().union(*held.values()))}
            self.assertTrue(wave)
            for i in wave:
                net.kill(i)
            dead |= wave
            net.sim.settle(net.sim.nodes[0].TIME_REPLICATE + 60)  # replication runs
        orphaned = [k for k in values if first[k] <= dead]
        self.assertGreaterEqual(len(orphaned), 2)  # handed on, or they would be lost
        alive = [s for i, s in enumerate(net.socks) if i not in dead]
        for j, (k, v) in enumerate(values.items()):
            self.assertEqual(net.ok(alive[j % len(alive)].d_get(k)), v)
            self.assertGreaterEqual(len(holders(k)), 2)

    def test_values_survive_killing_a_third(self) -> None:
        net = ChordNet(30, seed=3)
        values = {b"key%d" % i: b"value%d" % i for i in range(30)}
        for i, (k, v) in enumerate(values.items()):
            net.ok(net.socks[i].d_set(k, v))
        for i in range(0, 30, 3):  # every third node, writers included, no goodbye
            net.kill(i)
        alive = [s for i, s in enumerate(net.socks) if i % 3]
        for j, (k, v) in enumerate(values.items()):
            reader = alive[j % len(alive)]
            self.assertEqual(net.ok(reader.d_get(k)), v)
            self.assertIn(k, reader)
        self.assertEqual(sorted(alive[0].keys()), sorted(values))
        # and the dict still works
        net.ok(alive[3].d_delete(b"key4"))
        fails_with(self, net.do(alive[5].d_get(b"key4")), KeyError)
