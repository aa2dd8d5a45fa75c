"""Tests for :mod:`p2pnet.dht.routing`: k-buckets and the routing table.

The first class follows bytestag's ``tables_test`` (add node, add self, full bucket, node
equality, node in container); the rest cover the eviction protocol, the queries, and
hypothesis invariants over arbitrary sequences of updates.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht.errors import BucketFullError
from p2pnet.dht.limits import prefix_key, source_key
from p2pnet.dht.routing import (
    MAX_BUCKET_SIZE,
    AddressConflictError,
    Bucket,
    PrefixFullError,
    RoutingTable,
)
from p2pnet.models import Node

OWN = bytes(20)  # the local node: all zero, so a node's bucket is its leading zero bits
keys = st.binary(min_size=ids.KEY_BYTES, max_size=ids.KEY_BYTES)


def node(key: bytes, port: int = 4000, host: str = "10.0.0.1") -> Node:
    return Node(key, host, port)


def keys_in_bucket(number: int, count: int, own: bytes = OWN, seed: int = 0) -> list[bytes]:
    """``count`` distinct keys whose bucket relative to ``own`` is ``number``."""
    randbytes = random.Random(seed).randbytes
    out: list[bytes] = []
    while len(out) < count:
        k = ids.random_key_in_bucket(own, number, randbytes)
        if k not in out:
            out.append(k)
    return out


def fill(rt: RoutingTable, number: int, count: int = MAX_BUCKET_SIZE, seed: int = 0
         ) -> list[Node]:
    """Add ``count`` nodes to bucket ``number``; returns them, least recently seen first."""
    added = [node(k, 5000 + i) for i, k in enumerate(keys_in_bucket(number, count, rt.key, seed))]
    for n in added:
        rt.node_update(n)
    return added


class BytestagTablesTests(SynchronousTestCase):
    """bytestag's ``TestRoutingTable``."""

    def test_add_node(self) -> None:
        """It should add a node."""
        rt = RoutingTable(OWN)
        n = node(b"\x01" + bytes(19))
        rt.node_update(n)
        self.assertIn(n, rt)
        self.assertIn(n, rt.get_bucket(n))
        self.assertEqual(rt.get_bucket_number(n), 7)
        self.assertEqual(rt.num_contacts, 1)
        self.assertEqual(list(rt.nodes()), [n])

    def test_add_self(self) -> None:
        """It should not add a node whose id is ours (whatever its address)."""
        rt = RoutingTable(OWN)
        for port in (1, 4000):
            rt.node_update(node(OWN, port))
        self.assertEqual(rt.num_contacts, 0)
        self.assertNotIn(node(OWN), rt)
        self.assertIsNone(rt.find(OWN))
        self.assertEqual(rt.get_close_nodes(OWN), [])
        self.assertFalse(rt.remove(node(OWN)))

    def test_full_bucket(self) -> None:
        """A full bucket raises BucketFullError naming its least recently seen node."""
        self.assertEqual(MAX_BUCKET_SIZE, 20)
        self.assertEqual(Bucket.MAX_BUCKET_SIZE, 20)
        rt = RoutingTable(OWN)
        added = fill(rt, 8)
        bucket = rt.buckets[8]
        self.assertEqual(len(bucket), MAX_BUCKET_SIZE)
        self.assertFalse(bucket.locked)
        newcomer, another = (node(k, 6000) for k in keys_in_bucket(8, 2, seed=99))
        with self.assertRaises(BucketFullError) as cm:
            rt.node_update(newcomer)
        e = cm.exception
        self.assertEqual(e.bucket_number, 8)
        self.assertIs(e.bucket, bucket)
        self.assertEqual(e.node, added[0])
        self.assertTrue(bucket.locked)
        self.assertEqual(bucket.pending, newcomer)
        self.assertNotIn(newcomer, rt)
        # locked: further new nodes are kept aside too, without an exception
        rt.node_update(another)
        self.assertNotIn(another, rt)
        self.assertEqual(bucket.pending, another)
        rt.node_update(newcomer)  # seen again: the newest of the replacement cache
        self.assertEqual(bucket.replacements, [another, newcomer])
        self.assertEqual(bucket.nodes, added)
        self.assertEqual(rt.num_contacts, MAX_BUCKET_SIZE)
        # other buckets are not affected
        other = node(keys_in_bucket(9, 1)[0])
        rt.node_update(other)
        self.assertIn(other, rt)

    def test_node_equality(self) -> None:
        """Nodes are equal when their id and address are equal."""
        k = b"\x05" * 20
        self.assertEqual(node(k, 1, "a"), node(k, 1, "a"))
        self.assertEqual(hash(node(k, 1, "a")), hash(node(k, 1, "a")))
        self.assertNotEqual(node(k, 1, "a"), node(k, 2, "a"))
        self.assertNotEqual(node(k, 1, "a"), node(k, 1, "b"))
        self.assertNotEqual(node(k, 1, "a"), node(b"\x06" * 20, 1, "a"))
        self.assertNotEqual(node(k), (k, "10.0.0.1", 4000))

    def test_node_in_container(self) -> None:
        """Another instance with the same id and address is found in a container."""
        k = b"\x05" * 20
        self.assertIn(node(k), [node(k)])
        self.assertIn(node(k), {node(k)})
        self.assertNotIn(node(k, 2), [node(k, 1)])
        rt = RoutingTable(OWN)
        rt.node_update(node(k))
        self.assertIn(node(k), rt)
        self.assertIn(node(k), rt.get_bucket(k))
        self.assertNotIn(node(k, 4001), rt)
        self.assertNotIn("not a node", rt)


class EvictionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.rt = RoutingTable(OWN, now=self.clock.seconds)
        self.added = fill(self.rt, 3)
        self.bucket = self.rt.buckets[3]
        self.newcomer = node(keys_in_bucket(3, 1, seed=7)[0], 7000)
        self.clock.advance(10)
        with self.assertRaises(BucketFullError) as cm:
            self.rt.node_update(self.newcomer)
        self.error = cm.exception

    def test_keep_old_node(self) -> None:
        """The LRS answered: it moves to the end, the newcomer stays aside, unlocked."""
        self.bucket.keep_old_node()
        self.assertFalse(self.bucket.locked)
        self.assertEqual(self.bucket.replacements, [self.newcomer])
        self.assertEqual(self.bucket.nodes, self.added[1:] + self.added[:1])
        self.assertNotIn(self.newcomer, self.rt)
        self.assertEqual(self.bucket.last_update, 10)
        # unlocked: a new node raises again, naming the new LRS
        with self.assertRaises(BucketFullError) as cm:
            self.rt.node_update(self.newcomer)
        self.assertEqual(cm.exception.node, self.added[1])

    def test_keep_new_node(self) -> None:
        """The LRS did not answer: it is evicted and the newcomer added (most recent)."""
        self.bucket.keep_new_node()
        self.assertFalse(self.bucket.locked)
        self.assertEqual(self.bucket.nodes, self.added[1:] + [self.newcomer])
        self.assertNotIn(self.added[0], self.rt)
        self.assertIn(self.newcomer, self.rt)
        self.assertEqual(len(self.bucket), MAX_BUCKET_SIZE)
        self.assertEqual(self.bucket.replacements, [])

    def test_newest_replacement_is_promoted(self) -> None:
        later = [node(k, 7100 + i) for i, k in enumerate(keys_in_bucket(3, 3, seed=8))]
        for n in later:
            self.rt.node_update(n)  # locked: kept aside quietly
        self.assertEqual(self.bucket.replacements, [self.newcomer, *later])
        self.bucket.keep_new_node()
        self.assertEqual(self.bucket.nodes[-1], later[-1])
        self.assertEqual(self.bucket.replacements, [self.newcomer, *later[:-1]])
        self.assertTrue(self.rt.remove(self.added[7]))  # a stale contact leaves
        self.assertEqual(self.bucket.nodes[-1], later[-2])

    def test_replacement_cache_is_bounded(self) -> None:
        rt = RoutingTable(OWN, replacements=3)
        fill(rt, 3)
        extra = [node(k, 8000 + i) for i, k in enumerate(keys_in_bucket(3, 10, seed=9))]
        for n in extra:
            try:
                rt.node_update(n)
            except BucketFullError:
                pass
        self.assertEqual(rt.buckets[3].replacements, extra[-3:])

    def test_old_replacements_are_not_promoted(self) -> None:
        clock = task.Clock()
        rt = RoutingTable(OWN, now=clock.seconds, replacement_max_age=100)
        added = fill(rt, 3)
        old, fresh = (node(k, 9000 + i) for i, k in enumerate(keys_in_bucket(3, 2, seed=5)))
        with self.assertRaises(BucketFullError):
            rt.node_update(fresh)
        clock.advance(50)
        rt.node_update(old)  # newest, then nothing for a while
        clock.advance(60)
        rt.buckets[3].keep_new_node()
        self.assertIn(old, rt)  # 60 s old: promoted
        rt.remove(added[1])
        self.assertNotIn(fresh, rt)  # 110 s old: dropped
        self.assertEqual(len(rt.buckets[3]), MAX_BUCKET_SIZE - 1)
        self.assertEqual(rt.buckets[3].replacements, [])

    def test_keep_without_lock_is_a_no_op(self) -> None:
        self.bucket.keep_old_node()
        before = self.bucket.nodes
        self.bucket.keep_old_node()
        self.bucket.keep_new_node()
        self.assertEqual(self.bucket.nodes, before)

    def test_known_nodes_still_move_while_locked(self) -> None:
        self.rt.node_update(self.added[5])
        self.assertEqual(self.bucket.nodes[-1], self.added[5])
        self.assertTrue(self.bucket.locked)

    def test_keep_new_node_evicts_the_named_node(self) -> None:
        """If the named LRS is seen again while its ping is out, a failed ping must not
        evict another node that was never pinged."""
        lrs, second = self.added[0], self.added[1]
        self.assertEqual(self.error.node, lrs)
        self.rt.node_update(lrs)  # it sent us something meanwhile: now the most recent
        self.bucket.keep_new_node()  # ... but the ping got no answer
        self.assertIn(second, self.rt)
        self.assertNotIn(lrs, self.rt)
        self.assertIn(self.newcomer, self.rt)
        self.assertEqual(len(self.bucket), MAX_BUCKET_SIZE)

    def test_keep_old_node_moves_the_named_node(self) -> None:
        lrs = self.added[0]
        self.rt.node_update(lrs)
        self.bucket.keep_old_node()
        self.assertEqual(self.bucket.nodes, self.added[1:] + [lrs])

    def test_remove_lets_the_newcomer_in(self) -> None:
        self.assertTrue(self.rt.remove(self.added[4]))
        self.assertNotIn(self.added[4], self.rt)
        self.assertIn(self.newcomer, self.rt)
        self.assertEqual(self.bucket.nodes[-1], self.newcomer)
        self.assertEqual(len(self.bucket), MAX_BUCKET_SIZE)
        self.assertTrue(self.bucket.locked)  # the check of the LRS is still out
        self.bucket.keep_new_node()  # ... and it failed: evicted, nobody left aside
        self.assertNotIn(self.added[0], self.rt)
        self.assertEqual(len(self.bucket), MAX_BUCKET_SIZE - 1)
        self.assertFalse(self.bucket.locked)

    def test_remove_unknown(self) -> None:
        self.assertFalse(self.rt.remove(node(keys_in_bucket(3, 1, seed=1234)[0])))
        self.assertTrue(self.bucket.locked)

    def test_remove_by_id(self) -> None:
        """remove() goes by id: the contact leaves whatever its current address."""
        n = self.added[2]
        self.assertTrue(self.rt.remove(node(n.key, 1, "elsewhere")))
        self.assertIsNone(self.rt.find(n.key))


class UpdateTests(SynchronousTestCase):
    def test_update_moves_known_node_to_the_end(self) -> None:
        clock = task.Clock()
        rt = RoutingTable(OWN, now=clock.seconds)
        added = fill(rt, 2, 5)
        clock.advance(3)
        rt.node_update(added[1])
        self.assertEqual(rt.buckets[2].nodes, [added[0]] + added[2:] + [added[1]])
        self.assertEqual(rt.buckets[2].last_update, 3)
        clock.advance(3)
        rt.node_update(node(added[1].key, added[1].port))  # an equal instance
        self.assertEqual(rt.buckets[2].last_update, 6)
        self.assertEqual(rt.num_contacts, 5)

    def test_known_id_at_new_address_is_a_conflict(self) -> None:
        """Issue 11 #5: a known id seen at a new address does not take the slot; the
        incumbent is named, to be pinged; only replace() moves the id."""
        rt = RoutingTable(OWN)
        added = fill(rt, 2, 5)
        moved = node(added[0].key, 9999, "10.9.9.9")
        with self.assertRaises(AddressConflictError) as cm:
            rt.node_update(moved)
        self.assertIs(cm.exception.incumbent, added[0])
        self.assertIs(cm.exception.node, moved)
        self.assertIs(rt.find(added[0].key), added[0])
        self.assertEqual(rt.buckets[2].nodes, added)
        self.assertFalse(rt.seen(moved))  # a request from the new address refreshes nothing
        rt.replace(added[0], moved)  # the old address stayed silent
        self.assertEqual(rt.num_contacts, 5)
        self.assertNotIn(added[0], rt)
        self.assertIn(moved, rt)
        self.assertIs(rt.find(added[0].key), moved)
        self.assertEqual(rt.buckets[2].nodes[-1], moved)

    def test_last_update_on_add(self) -> None:
        clock = task.Clock()
        rt = RoutingTable(OWN, now=clock.seconds)
        clock.advance(42)
        n = node(keys_in_bucket(0, 1)[0])
        rt.node_update(n)
        self.assertEqual(rt.get_bucket(n).last_update, 42)
        self.assertEqual(rt.buckets[1].last_update, 0)


class AddressLimitTests(SynchronousTestCase):
    """Issue 11 #6: one contact per address, a few per /24 or /64 per bucket."""

    def table(self) -> RoutingTable:
        return RoutingTable(OWN, one_per_address=True, max_per_prefix=2)

    def test_one_contact_per_address(self) -> None:
        rt = self.table()
        a, b = keys_in_bucket(5, 2)
        first = Node(a, "192.0.2.7", 4000)
        rt.node_update(first)
        for port in (4000, 4001):  # another id at that IP, whatever the port
            with self.assertRaises(AddressConflictError) as cm:
                rt.node_update(Node(b, "192.0.2.7", port))
            self.assertIs(cm.exception.incumbent, first)
        self.assertEqual(list(rt.nodes()), [first])
        self.assertIs(rt.holder_of(("192.0.2.7", 1)), first)
        rt.remove(first)
        self.assertIsNone(rt.holder_of(("192.0.2.7", 1)))
        rt.node_update(Node(b, "192.0.2.7", 4001))
        self.assertEqual(rt.num_contacts, 1)

    def test_loopback_keys_on_port(self) -> None:
        """A 1,000-node local network shares 127.0.0.1: there a port is an address."""
        rt = self.table()
        added = [Node(k, "127.0.0.1", 5000 + i)
                 for i, k in enumerate(keys_in_bucket(0, 20) + keys_in_bucket(1, 20))]
        for n in added:
            rt.node_update(n)
        self.assertEqual(rt.num_contacts, 40)
        with self.assertRaises(AddressConflictError):
            rt.node_update(Node(keys_in_bucket(2, 1)[0], "127.0.0.1", 5000))
        six = Node(keys_in_bucket(3, 1)[0], "::1", 5000)
        rt.node_update(six)
        self.assertIn(six, rt)

    def test_few_per_prefix_per_bucket(self) -> None:
        rt = self.table()
        in5 = keys_in_bucket(5, 4)
        rt.node_update(Node(in5[0], "198.51.100.1", 1))
        rt.node_update(Node(in5[1], "198.51.100.2", 1))
        with self.assertRaises(PrefixFullError) as cm:
            rt.node_update(Node(in5[2], "198.51.100.3", 1))
        self.assertEqual(cm.exception.bucket_number, 5)
        rt.node_update(Node(in5[3], "198.51.101.3", 1))  # the next /24 is another prefix
        rt.node_update(Node(keys_in_bucket(6, 1)[0], "198.51.100.9", 1))  # another bucket
        self.assertEqual(rt.num_contacts, 4)

    def test_ipv6_prefix_is_the_64(self) -> None:
        rt = self.table()
        k = keys_in_bucket(9, 4)
        rt.node_update(Node(k[0], "2001:db8:0:1::1", 1))
        rt.node_update(Node(k[1], "2001:db8:0:1:ffff::2", 1))
        with self.assertRaises(PrefixFullError):
            rt.node_update(Node(k[2], "2001:db8:0:1::3", 1))
        rt.node_update(Node(k[3], "2001:db8:0:2::3", 1))
        self.assertEqual(rt.num_contacts, 3)

    def test_promotion_respects_the_limits(self) -> None:
        rt = RoutingTable(OWN, bucket_size=2, one_per_address=True, max_per_prefix=2)
        k = keys_in_bucket(4, 4)
        a, b = Node(k[0], "203.0.113.1", 1), Node(k[1], "203.0.114.1", 1)
        rt.node_update(a)
        rt.node_update(b)
        clash = Node(k[2], "203.0.114.1", 1)  # b's address: refused outright
        with self.assertRaises(AddressConflictError):
            rt.node_update(clash)
        spare = Node(k[3], "203.0.115.1", 1)
        with self.assertRaises(BucketFullError):
            rt.node_update(spare)
        rt.buckets[4]._keep_aside(Node(k[2], "203.0.113.1", 1))  # would clash with a
        rt.buckets[4].keep_new_node()  # a (the LRS) is evicted: its address frees up
        self.assertEqual(rt.buckets[4].nodes, [b, Node(k[2], "203.0.113.1", 1)])
        rt.remove(b)
        self.assertEqual(rt.buckets[4].nodes, [Node(k[2], "203.0.113.1", 1), spare])


class QueryTests(SynchronousTestCase):
    def test_num_contacts(self) -> None:
        rt = RoutingTable(OWN)
        self.assertEqual(rt.num_contacts, 0)
        fill(rt, 0, 3)
        fill(rt, 159, 1)
        fill(rt, 40, 7)
        self.assertEqual(rt.num_contacts, 11)
        self.assertEqual(len(list(rt.nodes())), 11)

    def test_find(self) -> None:
        rt = RoutingTable(OWN)
        added = fill(rt, 10, 4)
        for n in added:
            self.assertIs(rt.find(n.key), n)
        self.assertIsNone(rt.find(keys_in_bucket(10, 1, seed=55)[0]))
        self.assertIsNone(rt.find(keys_in_bucket(11, 1)[0]))
        self.assertIsNone(rt.find(OWN))

    def test_closest_bucket_number(self) -> None:
        rt = RoutingTable(OWN)
        self.assertIsNone(rt.closest_bucket_number())
        fill(rt, 3, 2)
        self.assertEqual(rt.closest_bucket_number(), 3)
        fill(rt, 77, 1)
        self.assertEqual(rt.closest_bucket_number(), 77)
        fill(rt, 12, 1)
        self.assertEqual(rt.closest_bucket_number(), 77)
        (last,) = rt.buckets[77].nodes
        rt.remove(last)
        self.assertEqual(rt.closest_bucket_number(), 12)

    def test_touch(self) -> None:
        clock = task.Clock()
        rt = RoutingTable(OWN, now=clock.seconds)
        clock.advance(1234.5)
        key = keys_in_bucket(17, 1)[0]
        rt.touch(key)
        self.assertEqual(rt.buckets[17].last_lookup, 1234.5)
        self.assertEqual([b.number for b in rt.buckets if b.last_lookup], [17])
        rt.touch(OWN)  # our own id has no bucket: nothing happens
        self.assertEqual([b.number for b in rt.buckets if b.last_lookup], [17])

    def test_bucket_numbers(self) -> None:
        own = b"\x80" + bytes(19)
        rt = RoutingTable(own)
        self.assertEqual(rt.get_bucket_number(bytes(20)), 0)
        self.assertEqual(rt.get_bucket_number(b"\x81" + bytes(19)), 7)
        self.assertEqual(rt.get_bucket_number(own[:-1] + b"\x01"), 159)
        self.assertRaises(ValueError, rt.get_bucket_number, own)

    def test_get_close_nodes_small(self) -> None:
        rt = RoutingTable(OWN)
        ns = [node(bytes(19) + bytes([b])) for b in (1, 2, 3, 4, 8, 16)]
        for n in ns:
            rt.node_update(n)
        target = bytes(19) + b"\x05"
        # distances to 5: 1->4, 2->7, 3->6, 4->1, 8->13, 16->21
        self.assertEqual(rt.get_close_nodes(target, 3), [ns[3], ns[0], ns[2]])
        self.assertEqual(rt.get_close_nodes(target, 100), [ns[3], ns[0], ns[2], ns[1],
                                                           ns[4], ns[5]])
        self.assertEqual(rt.get_close_nodes(target, 0), [])
        self.assertEqual(len(rt.get_close_nodes(target)), 6)

    def test_has_room(self) -> None:
        now = [100.0]
        rt = RoutingTable(OWN, now=lambda: now[0], bucket_size=2)
        k = keys_in_bucket(0, 4)
        self.assertTrue(rt.has_room(k[0], fresh_since=50.0))  # an empty bucket
        self.assertFalse(rt.has_room(OWN, fresh_since=50.0))  # never the local node
        rt.node_update(node(k[0], host="10.0.0.1"))
        now[0] = 110.0
        rt.node_update(node(k[1], host="10.0.0.2"))
        self.assertTrue(rt.has_room(keys_in_bucket(1, 1)[0], fresh_since=200.0))  # another
        self.assertFalse(rt.has_room(k[2], fresh_since=99.0))  # full, oldest seen at 100
        self.assertTrue(rt.has_room(k[2], fresh_since=100.0))  # its oldest is that old
        with self.assertRaises(BucketFullError):  # locks the bucket for an eviction check
            rt.node_update(node(k[2], host="10.0.0.3"))
        self.assertFalse(rt.has_room(k[3], fresh_since=200.0))  # a check is out

    def test_count_close_small(self) -> None:
        rt = RoutingTable(OWN)
        for b in (1, 2, 3, 4, 8, 16):
            rt.node_update(node(bytes(19) + bytes([b])))
        # own distance to 5 is 5; closer: 4 (1), 1 (4)
        self.assertEqual(rt.count_close(bytes(19) + b"\x05"), 2)
        self.assertEqual(rt.count_close(OWN), 0)


# -- hypothesis ------------------------------------------------------------------------


def own_and_nodes() -> st.SearchStrategy[tuple[bytes, list[Node]]]:
    return st.tuples(keys, st.lists(st.builds(node, keys, st.integers(1, 3)), max_size=60))


def table_with(own: bytes, nodes: list[Node], now: Callable[[], float] = lambda: 0.0
               ) -> tuple[RoutingTable, dict[bytes, Node]]:
    """A table of big buckets (nothing evicted) and the model of what it holds by id."""
    rt = RoutingTable(own, now, bucket_size=1000)
    model: dict[bytes, Node] = {}
    for n in nodes:
        try:
            rt.node_update(n)
        except AddressConflictError:
            pass  # a known id at another port: the first address stays
        if n.key != own:
            model.setdefault(n.key, n)
    return rt, model


class HypothesisQueryTests(SynchronousTestCase):
    @given(own_and_nodes(), keys, st.integers(0, 70))
    def test_get_close_nodes_vs_brute_force(self, own_nodes: tuple[bytes, list[Node]],
                                            target: bytes, count: int) -> None:
        own, nodes = own_nodes
        rt, model = table_with(own, nodes)
        expected = sorted(model.values(), key=lambda n: ids.distance(n.key, target))[:count]
        self.assertEqual(rt.get_close_nodes(target, count), expected)

    @given(own_and_nodes(), keys)
    def test_count_close_vs_brute_force(self, own_nodes: tuple[bytes, list[Node]],
                                        target: bytes) -> None:
        own, nodes = own_nodes
        rt, model = table_with(own, nodes)
        own_d = ids.distance(own, target)
        expected = sum(1 for k in model if ids.distance(k, target) < own_d)
        self.assertEqual(rt.count_close(target), expected)
        self.assertEqual(rt.num_contacts, len(model))
        # stopping early counts at least that many (or all there are)
        for stop in (1, 2, 5):
            got = rt.count_close(target, stop_at=stop)
            self.assertGreaterEqual(got, min(stop, expected))
            self.assertLessEqual(got, expected)
        # leaving one contact out of the count
        for n in list(model.values())[:3]:
            closer = ids.distance(n.key, target) < own_d
            self.assertEqual(rt.count_close(target, excluding=n), expected - closer)

    @given(own_and_nodes(), keys, st.integers(1, 30))
    def test_could_be_closest_vs_brute_force(self, own_nodes: tuple[bytes, list[Node]],
                                             target: bytes, count: int) -> None:
        """False exactly when ``count`` contacts share more leading bits with us than
        ``target`` does (so each is closer to us than ``target``)."""
        own, nodes = own_nodes
        rt, model = table_with(own, nodes)
        if target == own:
            self.assertFalse(rt.could_be_closest(target, count))
            return
        own_d = ids.distance(own, target)
        in_higher = sum(1 for k in model
                        if ids.distance(own, k).bit_length() < own_d.bit_length())
        self.assertEqual(rt.could_be_closest(target, count), in_higher < count)
        if not rt.could_be_closest(target, count):  # then truly not among our closest
            self.assertGreaterEqual(sum(1 for k in model if ids.distance(own, k) < own_d),
                                    count)

    @given(own_and_nodes())
    def test_find_and_contains(self, own_nodes: tuple[bytes, list[Node]]) -> None:
        own, nodes = own_nodes
        rt, model = table_with(own, nodes)
        for k, n in model.items():
            self.assertIs(rt.find(k), n)
            self.assertIn(n, rt)

    @given(own_and_nodes(), st.lists(st.tuples(st.integers(0, 59), st.integers(1, 3),
                                               st.booleans()), max_size=30))
    def test_refresh_and_find_at_vs_their_definition(
            self, own_nodes: tuple[bytes, list[Node]], queries: list[tuple[int, int, bool]]
    ) -> None:
        """``refresh`` is find, compare the address, ``node_update``; ``find_at`` the
        first two; on a table whose recent contact changes as they go."""
        own, nodes = own_nodes
        clock = task.Clock()
        rt, model = table_with(own, nodes, clock.seconds)
        reference, _ = table_with(own, nodes, clock.seconds)
        known = list(model.values())
        strangers = [node(bytes([i]) * 20, 1) for i in range(1, 4)]
        for i, port, stranger in queries:
            clock.advance(1)
            pool = strangers if stranger or not known else known
            key = pool[i % len(pool)].key
            found = reference.find(key)
            expected = found if found is not None and found.address == ("10.0.0.1", port) \
                else None
            self.assertIs(rt.find_at(key, "10.0.0.1", port), expected)
            self.assertIs(rt.refresh(key, "10.0.0.1", port), expected)
            if expected is not None:
                reference.node_update(expected)
            for ours, theirs in zip(rt.buckets, reference.buckets, strict=True):
                self.assertEqual(ours.nodes, theirs.nodes)
                self.assertEqual(ours.last_update, theirs.last_update)
            for n in known:
                self.assertEqual(rt.last_seen(n.key), reference.last_seen(n.key))


# A pool crowded into a few buckets of OWN_H, so buckets fill up and lock.
OWN_H = b"\x5a" * 20
POOL = ([OWN_H] + keys_in_bucket(0, 30, OWN_H, 1) + keys_in_bucket(1, 24, OWN_H, 2)
        + keys_in_bucket(2, 10, OWN_H, 3) + keys_in_bucket(150, 5, OWN_H, 4))
# Addresses from a few /24s, and loopback (which keys on IP and port).
ADDRESSES = ([(f"10.0.{p}.{h}", 4000) for p in range(3) for h in range(1, 5)]
             + [(f"10.0.0.{h}", 4001) for h in range(1, 3)]
             + [("127.0.0.1", port) for port in range(1, 4)] + [("::1", 1)]
             + [(f"2001:db8::{h}", 1) for h in range(1, 4)])
SIZE, PER_PREFIX, SPARES = 6, 2, 3
_update = st.tuples(st.just("update"), st.integers(0, len(POOL) - 1),
                    st.integers(0, len(ADDRESSES) - 1), st.booleans())
op_strategy = st.one_of(
    _update, _update, _update, _update,
    st.tuples(st.just("keep_old"), st.integers(0, 3), st.just(0), st.just(False)),
    st.tuples(st.just("keep_new"), st.integers(0, 3), st.just(0), st.just(False)),
    st.tuples(st.just("remove"), st.integers(0, len(POOL) - 1), st.just(0), st.just(False)),
    st.tuples(st.just("seen"), st.integers(0, len(POOL) - 1),
              st.integers(0, len(ADDRESSES) - 1), st.just(False)),
    st.tuples(st.just("refresh_lrs"), st.integers(0, 3), st.just(0), st.just(False)),
)


class InvariantTests(SynchronousTestCase):
    def check_invariants(self, rt: RoutingTable, size: int = MAX_BUCKET_SIZE,
                         per_prefix: int | None = None, spares: int | None = None,
                         per_address: bool = False) -> None:
        """Brute force over every contact: ids unique and in their bucket, buckets at
        most ``size``, at most one contact per address key, at most ``per_prefix`` of a
        /24 or /64 per bucket, replacement caches at most ``spares``."""
        seen: set[bytes] = set()
        by_address: dict[object, list[Node]] = {}
        for bucket in rt.buckets:
            self.assertLessEqual(len(bucket), size)
            prefixes: dict[str, int] = {}
            for n in bucket:
                self.assertNotEqual(n.key, rt.key)
                self.assertEqual(ids.bucket_number(rt.key, n.key), bucket.number)
                self.assertNotIn(n.key, seen)
                self.assertIs(rt.find(n.key), n)
                seen.add(n.key)
                by_address.setdefault(source_key(n.address), []).append(n)
                p = prefix_key(n.address)
                prefixes[p] = prefixes.get(p, 0) + 1
            if per_prefix is not None:
                self.assertLessEqual(max(prefixes.values(), default=0), per_prefix)
            if spares is not None:
                self.assertLessEqual(len(bucket.replacements), spares)
            for n in bucket.replacements:
                self.assertEqual(ids.bucket_number(rt.key, n.key), bucket.number)
        if per_address:
            for holders in by_address.values():
                self.assertEqual(len(holders), 1)
                self.assertIs(rt.holder_of(holders[0].address), holders[0])
        self.assertEqual(rt.num_contacts, len(seen))
        recent = rt._recent  # the shortcut of find and node_update: the newest of its bucket
        if recent is not None:
            self.assertEqual(rt.get_bucket(recent).nodes[-1], recent)
            self.assertIs(rt._recent_bucket, rt.get_bucket(recent))

    @given(st.randoms(use_true_random=False), st.sampled_from([len(POOL), 60, 40, 20, 0]),
           st.lists(op_strategy, min_size=20, max_size=80), st.booleans())
    def test_invariants_after_any_sequence(self, rnd: random.Random, first: int,
                                           ops: list[tuple[str, int, int, bool]],
                                           limited: bool) -> None:
        """Updates (some of the pool, in any order) then any mix of updates (a conflict
        resolved either way), keep_old, keep_new, remove and seen; ourselves is in the
        pool too.  ``limited``: small buckets, one contact per address, two per prefix
        per bucket, three kept aside."""
        if limited:
            rt = RoutingTable(OWN_H, bucket_size=SIZE, one_per_address=True,
                              max_per_prefix=PER_PREFIX, replacements=SPARES)
            bounds = dict(size=SIZE, per_prefix=PER_PREFIX, spares=SPARES, per_address=True)
        else:
            rt = RoutingTable(OWN_H)
            bounds = dict(spares=8)
        touched: list[int] = []
        named: dict[int, bytes] = {}
        order = rnd.sample(range(len(POOL)), first)
        start = [("update", j, j % len(ADDRESSES), False) for j in order]
        for step, (op, i, a, resolve) in enumerate(start + ops):
            if op == "update":
                n = Node(POOL[i], *ADDRESSES[a])
                try:
                    rt.node_update(n)
                except BucketFullError as e:
                    self.assertIs(e.bucket, rt.buckets[e.bucket_number])
                    self.assertEqual(e.node, e.bucket.nodes[0])  # type: ignore[attr-defined]
                    self.assertTrue(e.bucket.locked)  # type: ignore[attr-defined]
                    self.assertEqual(e.bucket.pending, n)  # type: ignore[attr-defined]
                    touched.append(e.bucket_number)
                    named[e.bucket_number] = e.node.key  # type: ignore[attr-defined]
                except AddressConflictError as e:
                    self.assertIn(e.incumbent, rt)
                    self.assertTrue(e.incumbent.key == n.key
                                    or source_key(e.incumbent.address) == source_key(n.address))
                    if resolve:  # the incumbent stayed silent
                        try:
                            rt.replace(e.incumbent, n)
                        except BucketFullError as full:
                            touched.append(full.bucket_number)
                            named[full.bucket_number] = full.node.key  # type: ignore[attr-defined]
                        except (AddressConflictError, PrefixFullError):
                            pass
                        self.assertNotIn(e.incumbent, rt)
                except PrefixFullError as e:
                    bucket = rt.buckets[e.bucket_number]
                    same = [m for m in bucket if prefix_key(m.address) == prefix_key(n.address)]
                    self.assertEqual(len(same), PER_PREFIX)
                    self.assertNotIn(n, rt)
                else:
                    if n.key != OWN_H and n in rt:
                        self.assertEqual(rt.get_bucket(n).nodes[-1], n)
            elif op in ("keep_old", "keep_new") and touched:
                bucket = rt.buckets[touched[i % len(touched)]]
                was_locked = bucket.locked
                getattr(bucket, op + "_node")()
                self.assertFalse(bucket.locked)
                if was_locked:
                    old_key = named[bucket.number]
                    if op == "keep_new":  # the named node is evicted
                        self.assertIsNone(rt.find(old_key))
                    elif rt.find(old_key) is not None:  # the named node is the most recent
                        self.assertEqual(bucket.nodes[-1].key, old_key)
            elif op == "refresh_lrs" and touched:  # the LRS is seen again
                bucket = rt.buckets[touched[i % len(touched)]]
                if len(bucket):
                    rt.node_update(bucket.nodes[0])
            elif op == "seen":
                n = Node(POOL[i], *ADDRESSES[a])
                before = rt.num_contacts
                self.assertEqual(rt.seen(n), n in rt)
                self.assertEqual(rt.num_contacts, before)
            elif op == "remove":
                rt.remove(node(POOL[i]))
                if POOL[i] != OWN_H:
                    self.assertIsNone(rt.find(POOL[i]))
            if step >= first - 1:
                self.check_invariants(rt, **bounds)  # type: ignore[arg-type]

    @given(st.lists(st.builds(node, keys, st.integers(1, 3)), max_size=200))
    def test_invariants_with_plain_updates(self, nodes: list[Node]) -> None:
        own = nodes[0].key if nodes else OWN
        rt = RoutingTable(own)
        for n in nodes:
            try:
                rt.node_update(n)
            except (BucketFullError, AddressConflictError):
                pass
        self.check_invariants(rt)
        self.assertNotIn(nodes[0] if nodes else node(OWN), rt)

    @given(st.lists(st.tuples(keys, st.sampled_from(ADDRESSES)), max_size=300))
    def test_address_limits_vs_brute_force(self, offers: list[tuple[bytes, tuple[str, int]]]
                                           ) -> None:
        """A flood of answers from few addresses: the table holds exactly what a
        brute-force model of the admission rule admits (no evictions: buckets of 1000)."""
        rt = RoutingTable(OWN, bucket_size=1000, one_per_address=True, max_per_prefix=2)
        model: list[Node] = []
        for key, address in offers:
            n = Node(key, *address)
            try:
                rt.node_update(n)
            except (AddressConflictError, PrefixFullError):
                pass
            if key == OWN or any(m.key == key for m in model):
                continue
            if any(source_key(m.address) == source_key(address) for m in model):
                continue
            b = ids.bucket_number(OWN, key)
            if sum(1 for m in model if ids.bucket_number(OWN, m.key) == b
                   and prefix_key(m.address) == prefix_key(address)) >= 2:
                continue
            model.append(n)
        self.assertEqual(sorted(rt.nodes(), key=lambda n: n.key),
                         sorted(model, key=lambda n: n.key))
        self.check_invariants(rt, size=1000, per_prefix=2, per_address=True)

    def test_iteration_is_a_snapshot(self) -> None:
        rt = RoutingTable(OWN)
        added = fill(rt, 0, 5)
        it: Iterator[Node] = iter(rt.buckets[0])
        rt.remove(added[0])
        self.assertEqual(list(it), added)


class BucketArrayTests(SynchronousTestCase):
    def test_buckets_made_on_first_use(self) -> None:
        own = ids.key_for(b"own")
        rt = RoutingTable(own)
        self.assertEqual(list(rt.buckets), [])
        self.assertEqual(rt.num_contacts, 0)
        self.assertIsNone(rt.closest_bucket_number())
        far = ids.random_key_in_bucket(own, 3)
        rt.node_update(Node(far, "127.0.0.1", 5000))
        self.assertEqual([b.number for b in rt.buckets], [3])
        self.assertIs(rt.buckets[3], rt.buckets[3])
        self.assertEqual(len(rt.buckets[100]), 0)  # indexing makes an empty bucket
        self.assertEqual([b.number for b in rt.buckets], [3, 100])
        self.assertEqual([b.number for b in reversed(rt.buckets)], [100, 3])
        self.assertEqual([b.number for b in rt.buckets[2:5]], [2, 3, 4])
        self.assertEqual(rt.closest_bucket_number(), 3)
        for bad in (-1, 160):
            self.assertRaises(IndexError, rt.buckets.__getitem__, bad)
