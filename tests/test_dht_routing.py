"""Tests for :mod:`p2pnet.dht.routing`: k-buckets and the routing table.

The first class follows bytestag's ``tables_test`` (add node, add self, full bucket, node
equality, node in container); the rest cover the eviction protocol, the queries, and
hypothesis invariants over arbitrary sequences of updates.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht.errors import BucketFullError
from p2pnet.dht.routing import MAX_BUCKET_SIZE, Bucket, RoutingTable
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
        # locked: further new nodes are ignored, without an exception
        rt.node_update(another)
        rt.node_update(newcomer)
        self.assertNotIn(another, rt)
        self.assertEqual(bucket.pending, newcomer)
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
        """The LRS answered: it moves to the end, the newcomer is dropped, unlocked."""
        self.bucket.keep_old_node()
        self.assertFalse(self.bucket.locked)
        self.assertIsNone(self.bucket.pending)
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
        self.assertFalse(self.bucket.locked)
        self.assertNotIn(self.added[4], self.rt)
        self.assertIn(self.newcomer, self.rt)
        self.assertEqual(self.bucket.nodes[-1], self.newcomer)
        self.assertEqual(len(self.bucket), MAX_BUCKET_SIZE)
        self.bucket.keep_new_node()  # the late ping result changes nothing
        self.bucket.keep_old_node()
        self.assertIn(self.added[0], self.rt)
        self.assertEqual(len(self.bucket), MAX_BUCKET_SIZE)

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

    def test_update_replaces_address_of_known_id(self) -> None:
        rt = RoutingTable(OWN)
        added = fill(rt, 2, 5)
        moved = node(added[0].key, 9999, "10.9.9.9")
        rt.node_update(moved)
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


def table_with(own: bytes, nodes: list[Node]) -> tuple[RoutingTable, dict[bytes, Node]]:
    """A table of big buckets (nothing evicted) and the model of what it holds by id."""
    rt = RoutingTable(own, bucket_size=1000)
    model: dict[bytes, Node] = {}
    for n in nodes:
        rt.node_update(n)
        if n.key != own:
            model[n.key] = n
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

    @given(own_and_nodes())
    def test_find_and_contains(self, own_nodes: tuple[bytes, list[Node]]) -> None:
        own, nodes = own_nodes
        rt, model = table_with(own, nodes)
        for k, n in model.items():
            self.assertIs(rt.find(k), n)
            self.assertIn(n, rt)


# A pool crowded into a few buckets of OWN_H, so buckets fill up and lock.
OWN_H = b"\x5a" * 20
POOL = ([OWN_H] + keys_in_bucket(0, 30, OWN_H, 1) + keys_in_bucket(1, 24, OWN_H, 2)
        + keys_in_bucket(2, 10, OWN_H, 3) + keys_in_bucket(150, 5, OWN_H, 4))
_update = st.tuples(st.just("update"), st.integers(0, len(POOL) - 1), st.integers(1, 3))
op_strategy = st.one_of(
    _update, _update, _update, _update,
    st.tuples(st.just("keep_old"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("keep_new"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("remove"), st.integers(0, len(POOL) - 1), st.just(0)),
    st.tuples(st.just("refresh_lrs"), st.integers(0, 3), st.just(0)),
)


class InvariantTests(SynchronousTestCase):
    def check_invariants(self, rt: RoutingTable) -> None:
        seen: set[bytes] = set()
        for bucket in rt.buckets:
            self.assertLessEqual(len(bucket), MAX_BUCKET_SIZE)
            for n in bucket:
                self.assertNotEqual(n.key, rt.key)
                self.assertEqual(ids.bucket_number(rt.key, n.key), bucket.number)
                self.assertNotIn(n.key, seen)
                seen.add(n.key)
            self.assertEqual(bucket.locked, bucket.pending is not None)
            if bucket.pending is not None:
                self.assertEqual(len(bucket), MAX_BUCKET_SIZE)
                self.assertNotIn(bucket.pending.key, {n.key for n in bucket})
                self.assertEqual(ids.bucket_number(rt.key, bucket.pending.key), bucket.number)
        self.assertEqual(rt.num_contacts, len(seen))

    @given(st.randoms(use_true_random=False), st.sampled_from([len(POOL), 60, 40, 20, 0]),
           st.lists(op_strategy, min_size=20, max_size=80))
    def test_invariants_after_any_sequence(self, rnd: random.Random, first: int,
                                           ops: list[tuple[str, int, int]]) -> None:
        """Updates (some of the pool, in any order) then any mix of updates, keep_old,
        keep_new and remove; ourselves is in the pool too."""
        rt = RoutingTable(OWN_H)
        touched: list[int] = []
        named: dict[int, tuple[bytes, bytes]] = {}
        order = rnd.sample(range(len(POOL)), first)
        for step, (op, i, port) in enumerate([("update", j, 1) for j in order] + ops):
            if op == "update":
                n = node(POOL[i], port)
                try:
                    rt.node_update(n)
                except BucketFullError as e:
                    self.assertIs(e.bucket, rt.buckets[e.bucket_number])
                    self.assertEqual(e.node, e.bucket.nodes[0])  # type: ignore[attr-defined]
                    touched.append(e.bucket_number)
                    named[e.bucket_number] = (e.node.key, n.key)  # type: ignore[attr-defined]
                else:
                    if n.key != OWN_H and not rt.get_bucket(n).locked:
                        self.assertEqual(rt.get_bucket(n).nodes[-1], n)
            elif op in ("keep_old", "keep_new") and touched:
                bucket = rt.buckets[touched[i % len(touched)]]
                was_locked = bucket.locked
                getattr(bucket, op + "_node")()
                self.assertFalse(bucket.locked)
                if was_locked:
                    old_key, new_key = named[bucket.number]
                    if op == "keep_new":  # the named node is evicted, the newcomer is in
                        self.assertIsNone(rt.find(old_key))
                        self.assertEqual(bucket.nodes[-1].key, new_key)
                    else:  # the named node is the most recent, the newcomer is dropped
                        self.assertEqual(bucket.nodes[-1].key, old_key)
                        self.assertIsNone(rt.find(new_key))
            elif op == "refresh_lrs" and touched:  # the LRS is seen again
                bucket = rt.buckets[touched[i % len(touched)]]
                if len(bucket):
                    rt.node_update(bucket.nodes[0])
            elif op == "remove":
                rt.remove(node(POOL[i]))
                if POOL[i] != OWN_H:
                    self.assertIsNone(rt.find(POOL[i]))
            if step >= first - 1:
                self.check_invariants(rt)

    @given(st.lists(st.builds(node, keys, st.integers(1, 3)), max_size=200))
    def test_invariants_with_plain_updates(self, nodes: list[Node]) -> None:
        own = nodes[0].key if nodes else OWN
        rt = RoutingTable(own)
        for n in nodes:
            try:
                rt.node_update(n)
            except BucketFullError:
                pass
        self.check_invariants(rt)
        self.assertNotIn(nodes[0] if nodes else node(OWN), rt)

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
