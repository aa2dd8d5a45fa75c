"""Tests for :mod:`p2pnet.dht.network` and :mod:`p2pnet.dht.rpcs` on an in-memory network.

bytestag's ``network_test`` list (ping address, ping RPC adds both contacts, find node
RPC, store to node, find binary value size from node, get value from other node), the
store rules, routing-table upkeep, and iterative lookups and put/get across 30 nodes.
Every node runs on one ``task.Clock``; no socket is opened.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.errors import RemoteError, ValueNotFoundError
from p2pnet.dht.lookup import Until
from p2pnet.dht.network import (
    EVICT_PING_AFTER,
    INLINE_MAX,
    STALE_AFTER,
    TIME_EXPIRE,
    DHTNetwork,
)
from p2pnet.dht.protocol import DEFAULT_RETRIES, DEFAULT_TIMEOUT, IRequestHandler
from p2pnet.dht.rpcs import FindValueFromNodeResult
from p2pnet.dht.shortlist import Shortlist
from p2pnet.dht.table import IKVPTable, KVPRecord
from p2pnet.models import MAX_VALUE_SIZE, Node, NodeList
from tests.dhthelpers import Sim, key_near

GIVE_UP = (DEFAULT_RETRIES + 1) * DEFAULT_TIMEOUT


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class TwoNodeMixin:
    """Nodes ``a`` and ``b`` (and ``c``) on one in-memory network; nobody knows anybody."""

    def setUp(self) -> None:
        self.sim = Sim()
        self.a, self.b, self.c = self.sim.add_many(3)

    def go(self, d):  # type: ignore[no-untyped-def]
        return self.sim.run(d)


class FacadeTests(TwoNodeMixin, SynchronousTestCase):
    def test_interfaces(self) -> None:
        verifyObject(IRequestHandler, self.a)

    def test_inline_max_must_fit_a_findval_answer(self) -> None:
        from p2pnet.dht.network import MAX_INLINE
        clock = task.Clock()
        self.assertEqual(DHTNetwork(clock, inline_max=MAX_INLINE).inline_max, MAX_INLINE)
        for bad in (-1, MAX_INLINE + 1):
            self.assertRaises(ValueError, DHTNetwork, clock, inline_max=bad)
        # the largest findval answer with the largest inline value fits one datagram
        values = tuple(codec.ValueInfo(bytes([i]) * 20, MAX_INLINE, 1.0)
                       for i in range(codec.MAX_VALUES))
        data = codec.encode(b"x" * codec.MAX_NETWORK_ID, b"t" * 8, b"s" * 20,
                            codec.ValuesResponse(values, bytes(MAX_INLINE)),
                            codec.RPC.FIND_VALUE, b"k" * 8)
        self.assertLessEqual(len(data), codec.MAX_DATAGRAM)
        verifyObject(IKVPTable, self.a.kvp_table)

    def test_properties(self) -> None:
        self.assertEqual(self.a.address, ("10.0.0.1", 4000))
        self.assertEqual(self.a.node, Node(self.a.key, "10.0.0.1", 4000))
        self.assertEqual(len(self.a.key), 20)
        self.assertNotEqual(self.a.key, self.b.key)
        self.assertEqual(self.a.routing_table.key, self.a.key)
        self.assertEqual(self.a.routing_table.num_contacts, 0)

    def test_given_node_id(self) -> None:
        node_id = ids.key_for(b"chosen")
        node = self.sim.add(node_id=node_id)
        self.assertEqual(node.key, node_id)

    def test_bad_network_id(self) -> None:
        self.assertRaises(ValueError, DHTNetwork, self.sim.clock, network_id=b"")
        self.assertRaises(ValueError, DHTNetwork, self.sim.clock, network_id=b"x" * 33)

    def test_other_network_ignored(self) -> None:
        other = self.sim.add(network_id=b"elsewhere")
        self.assertFalse(self.successResultOf(self.go(self.a.ping_address(other.address))))
        self.assertEqual(other.protocol.stats.wrong_network, 2)  # the request and its retry
        self.assertEqual(other.routing_table.num_contacts, 0)


class PingTests(TwoNodeMixin, SynchronousTestCase):
    def test_ping_address(self) -> None:
        d = self.go(self.a.ping_address(self.b.address))
        rtt, node = self.successResultOf(d)
        self.assertEqual(node, self.b.node)
        # (trial's assertAlmostEqual ignores delta=)
        self.assertLessEqual(abs(rtt - 2 * self.sim.net.latency), 1e-5)

    def test_ping_silent_address(self) -> None:
        d = self.a.ping_address(("10.9.9.9", 1))
        self.sim.settle(GIVE_UP - 0.01)
        self.assertNoResult(d)
        self.sim.settle(0.02)  # (each hop lands a nanosecond late: see dhthelpers)
        self.assertIs(self.successResultOf(d), False)

    def test_ping_hostname_without_resolver(self) -> None:
        # task.Clock cannot resolve names: a clean False, not an exception.
        self.assertIs(self.successResultOf(self.a.ping_address(("example.invalid", 1))), False)

    def test_ping_rpc_adds_both_contacts(self) -> None:
        self.successResultOf(self.go(self.a.ping_address(self.b.address)))
        self.assertIn(self.b.node, self.a.routing_table)
        # b enters a's table by answering; a enters b's once it answers b's ping back
        self.assertNotIn(self.a.node, self.b.routing_table)
        self.sim.settle(1)
        self.assertIn(self.a.node, self.b.routing_table)
        self.assertEqual(self.a.routing_table.num_contacts, 1)
        self.assertEqual(self.b.routing_table.num_contacts, 1)

    def test_ping_node(self) -> None:
        rtt, node = self.successResultOf(self.go(self.a.ping_node(self.b.node)))
        self.assertEqual(node, self.b.node)

    def test_failed_ping_is_not_a_contact(self) -> None:
        self.sim.net.blocked_hosts.add(self.b.address[0])
        self.assertIs(self.successResultOf(self.go(self.a.ping_address(self.b.address))),
                      False)
        self.assertEqual(self.a.routing_table.num_contacts, 0)


class FindNodeTests(TwoNodeMixin, SynchronousTestCase):
    def test_find_node_rpc(self) -> None:
        others = self.sim.add_many(5)
        for n in others:
            self.successResultOf(self.go(n.ping_address(self.b.address)))
        self.successResultOf(self.go(self.a.ping_address(self.b.address)))
        key = ids.key_for(b"somewhere")
        found = self.successResultOf(self.go(self.a.find_nodes_from_node(self.b.node, key)))
        self.assertIsInstance(found, NodeList)
        # Everything b knows but the asker, closest first.
        expected = sorted((n.node for n in others), key=lambda n: n.distance(key))
        self.assertEqual(list(found), expected)

    def test_find_node_caps_at_k(self) -> None:
        for n in self.sim.add_many(25):
            self.successResultOf(self.go(n.ping_address(self.b.address)))
        found = self.successResultOf(self.go(self.a.find_nodes_from_node(self.b.node,
                                                                          self.a.key)))
        self.assertEqual(len(found), 20)
        self.assertNotIn(self.a.node, found)

    def test_find_node_silent(self) -> None:
        self.sim.net.blocked_hosts.add(self.b.address[0])
        self.assertIsNone(self.successResultOf(
            self.go(self.a.find_nodes_from_node(self.b.node, self.a.key))))


class StoreTests(TwoNodeMixin, SynchronousTestCase):
    """store / findval / getval between two nodes."""

    def setUp(self) -> None:
        super().setUp()
        # A key next to b's id: b knows nobody closer, so c = 0 in the expiry rule.
        self.key = key_near(self.b.key, 1)
        # a and b know each other (b pings a stranger back before it becomes a contact),
        # so the datagram counts below are the store's own.
        self.successResultOf(self.go(self.a.ping_address(self.b.address)))
        self.sim.settle(1)
        # The timestamps used below (1000, 2000) must not lie in the future.
        self.sim.clock.advance(10_000)

    def store(self, value: bytes, timestamp: float = 1000.0, node: DHTNetwork | None = None,
              index: bytes | None = None) -> bool:
        node = node or self.b
        index = ids.key_for(value) if index is None else index
        return self.successResultOf(self.go(
            self.a.store_to_node(node.node, self.key, index, value, timestamp)))

    def status(self, value: bytes, timestamp: float) -> codec.StoreStatus:
        d = self.a.store.call(self.b.node, self.key, ids.key_for(value), value, timestamp)
        return self.successResultOf(self.go(d))

    def test_store_small_inline(self) -> None:
        value = b"small value"
        before = self.sim.net.sent
        self.assertTrue(self.store(value))
        self.assertEqual(self.sim.net.sent - before, 2)  # one request, one answer
        record = self.b.kvp_table.get_record(self.key, ids.key_for(value))
        self.assertEqual((record.size, record.timestamp, record.is_original),
                         (len(value), 1000.0, False))
        self.assertEqual(self.successResultOf(self.b.kvp_table.read(self.key, record.index)),
                         value)
        self.assertEqual(self.b.stats_stored, 1)

    def test_store_whose_write_fails_at_once_is_answered_with_an_error(self) -> None:
        """A table whose put fails synchronously: the store is answered with an error
        (not STORED), and the failure is not left unhandled."""
        self.b.kvp_table.put = lambda record, value: defer.fail(  # type: ignore
            OSError("disk full"))
        d = self.a.store.call(self.b.node, self.key, ids.key_for(b"lost"), b"lost", 1000.0)
        failure = self.failureResultOf(self.go(d), RemoteError)
        self.assertEqual(failure.value.code, codec.ErrorCode.INTERNAL)
        self.assertEqual(self.b.stats_stored, 1)  # counted as taken, then failed
        self.flushLoggedErrors(OSError)

    def test_getval_size_from_metadata(self) -> None:
        """What a getval answer would carry, known without reading the value (the
        protocol refuses an unproven requester a chunk too large before any read)."""
        value = b"small value"
        self.assertTrue(self.store(value))
        index = ids.key_for(value)
        size = self.b.getval_size
        self.assertEqual(size(codec.GetValueRequest(self.key, index, 0, 16384)), len(value))
        self.assertEqual(size(codec.GetValueRequest(self.key, index, 6, 2)), 2)
        self.assertEqual(size(codec.GetValueRequest(self.key, index, len(value), 9)), 0)
        self.assertIsNone(size(codec.GetValueRequest(self.key, index, len(value) + 1, 9)))
        self.assertIsNone(size(codec.GetValueRequest(self.key, ids.key_for(b"no"), 0, 9)))
        big = blob(200 * 1024)
        self.b.offer(self.key, ids.key_for(big), big)
        self.assertEqual(size(codec.GetValueRequest(self.key, ids.key_for(big), 0, 10**6)),
                         60 * 1024)

    def test_store_large_pulled(self) -> None:
        value = blob(200 * 1024)
        self.assertGreater(len(value), INLINE_MAX)
        before = self.sim.net.sent
        self.assertTrue(self.store(value))
        index = ids.key_for(value)
        self.assertEqual(self.successResultOf(self.b.kvp_table.read(self.key, index)), value)
        chunks = math.ceil(len(value) / self.a.chunk_size)
        self.assertLessEqual(self.sim.net.sent - before, 2 + 2 * chunks)
        self.assertIsNone(self.a.offered(self.key, index))  # the offer is withdrawn

    def test_pulls_at_once_are_bounded(self) -> None:
        from p2pnet.dht.rpcs import MAX_PULLS

        self.b.limits.pull_max_per_source = MAX_PULLS  # one source here
        self.b.limits.pull_max_per_prefix = MAX_PULLS
        values = [blob(INLINE_MAX + 1, seed) for seed in range(MAX_PULLS + 3)]
        calls = [self.a.store.call(self.b.node, self.key, ids.key_for(v), v, 1000.0)
                 for v in values]
        statuses = [self.successResultOf(self.go(d)) for d in calls]
        self.assertEqual(statuses.count(codec.StoreStatus.STORED), MAX_PULLS)
        self.assertEqual(statuses.count(codec.StoreStatus.REFUSED), 3)
        # Once the pulls are done, the refused ones are taken.
        self.assertTrue(self.store(values[-1]))

    def test_store_max_size_value(self) -> None:
        value = blob(MAX_VALUE_SIZE, 1)
        self.assertTrue(self.store(value))
        self.assertEqual(self.b.kvp_table.get_record(self.key, ids.key_for(value)).size,
                         MAX_VALUE_SIZE)

    def test_store_wrong_index_refused(self) -> None:
        wrong = ids.key_for(b"something else")
        self.assertFalse(self.store(b"the value", index=wrong))
        self.assertIsNone(self.b.kvp_table.get_record(self.key, wrong))
        self.assertEqual(len(self.b.kvp_table), 0)

    def test_store_wrong_index_pulled_refused(self) -> None:
        wrong = ids.key_for(b"something else")
        self.assertFalse(self.store(blob(5000), index=wrong))
        self.assertEqual(len(self.b.kvp_table), 0)
        self.assertIsNone(self.a.offered(self.key, wrong))

    def test_same_timestamp_held_refreshes_expiry(self) -> None:
        value = b"v" * 10
        self.assertEqual(self.status(value, 1000.0), codec.StoreStatus.STORED)
        record = self.b.kvp_table.get_record(self.key, ids.key_for(value))
        self.assertEqual(record.expires_at, record.last_update + TIME_EXPIRE)  # c = 0
        self.sim.settle(5000)
        self.assertEqual(self.status(value, 1000.0), codec.StoreStatus.HELD)
        later = self.b.kvp_table.get_record(self.key, ids.key_for(value))
        self.assertLessEqual(abs(later.expires_at - (record.expires_at + 5000)), 0.01)
        self.assertEqual(later.timestamp, 1000.0)
        self.assertEqual(self.b.stats_stored, 1)
        self.assertTrue(self.store(value, 1000.0))  # HELD counts as held by the facade

    def test_older_timestamp_refused(self) -> None:
        value = b"v" * 10
        self.assertEqual(self.status(value, 1000.0), codec.StoreStatus.STORED)
        self.assertEqual(self.status(value, 999.0), codec.StoreStatus.REFUSED)
        self.assertFalse(self.store(value, 500.0))
        self.assertEqual(self.b.kvp_table.get_record(self.key, ids.key_for(value)).timestamp,
                         1000.0)
        self.assertEqual(self.b.stats_refused, 2)

    def test_newer_timestamp_replaces(self) -> None:
        value = b"v" * 10
        self.assertEqual(self.status(value, 1000.0), codec.StoreStatus.STORED)
        self.assertEqual(self.status(value, 2000.0), codec.StoreStatus.STORED)
        self.assertEqual(self.b.kvp_table.get_record(self.key, ids.key_for(value)).timestamp,
                         2000.0)

    def test_over_quota_refused(self) -> None:
        # Every record is charged its size plus Limits.store_record_overhead.
        self.b.kvp_table.max_bytes = 100 + self.b.limits.store_record_overhead
        self.assertFalse(self.store(b"x" * 101))
        self.assertTrue(self.store(b"x" * 100))

    def test_put_over_max_size(self) -> None:
        before = self.sim.net.sent
        self.failureResultOf(self.a.put("big", b"x" * (MAX_VALUE_SIZE + 1)), ValueError)
        self.failureResultOf(self.a.put("s", "not bytes"), TypeError)  # type: ignore[arg-type]
        self.assertEqual(self.sim.net.sent, before)
        self.assertEqual(len(self.a.kvp_table), 0)

    def test_find_value_size_from_node(self) -> None:
        value = blob(3000)
        index = ids.key_for(value)
        self.assertTrue(self.store(value, 1234.5))
        result = self.successResultOf(self.go(self.a.find_value_from_node(self.b.node,
                                                                           self.key)))
        self.assertIsInstance(result, FindValueFromNodeResult)
        self.assertTrue(result.useful)
        self.assertEqual(result.values, (codec.ValueInfo(index, 3000, 1234.5),))
        by_index = self.successResultOf(self.go(
            self.a.find_value_from_node(self.b.node, self.key, index)))
        self.assertEqual(by_index.values, result.values)

    def test_find_value_lists_every_index_newest_first(self) -> None:
        self.assertTrue(self.store(b"old", 1.0))
        self.assertTrue(self.store(b"new", 2.0))
        result = self.successResultOf(self.go(self.a.find_value_from_node(self.b.node,
                                                                           self.key)))
        self.assertEqual([v.index for v in result.values],
                         [ids.key_for(b"new"), ids.key_for(b"old")])

    def test_find_value_without_value_gives_nodes(self) -> None:
        self.successResultOf(self.go(self.c.ping_address(self.b.address)))
        self.assertTrue(self.store(b"held"))
        other_key = ids.key_for(b"not held")
        result = self.successResultOf(self.go(self.a.find_value_from_node(self.b.node,
                                                                           other_key)))
        self.assertFalse(result.useful)
        self.assertEqual(list(result.nodes), [self.c.node])
        # Asking for an index b does not hold answers with the entries of every index
        # of the key b holds (SEMANTICS §3), not with nodes.
        result = self.successResultOf(self.go(self.a.find_value_from_node(
            self.b.node, self.key, ids.key_for(b"other"))))
        self.assertTrue(result.useful)
        self.assertEqual([v.index for v in result.values], [ids.key_for(b"held")])

    def test_find_value_hides_expired(self) -> None:
        self.assertTrue(self.store(b"short-lived"))
        self.sim.settle(TIME_EXPIRE + 1)
        result = self.successResultOf(self.go(self.a.find_value_from_node(self.b.node,
                                                                           self.key)))
        self.assertFalse(result.useful)

    def test_get_value_from_other_node(self) -> None:
        value = blob(200 * 1024, 3)
        index = ids.key_for(value)
        self.assertTrue(self.store(value))
        got = self.successResultOf(self.go(self.a.get_value_from_node(self.b.node, self.key,
                                                                       index)))
        self.assertEqual(got, value)
        part = self.successResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, index, offset=50_000)))
        self.assertEqual(part, value[50_000:])
        sized = self.successResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, index, size=len(value))))
        self.assertEqual(sized, value)

    def test_get_value_small_and_offset_at_end(self) -> None:
        value = b"0123456789"
        index = ids.key_for(value)
        self.assertTrue(self.store(value))
        self.assertEqual(self.successResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, index, offset=3))), b"3456789")
        self.assertEqual(self.successResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, index, offset=len(value)))), b"")
        f = self.failureResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, index, offset=len(value) + 1)), RemoteError)
        self.assertEqual(f.value.code, codec.ErrorCode.BAD_REQUEST)

    def test_get_empty_value(self) -> None:
        index = ids.key_for(b"")
        self.assertTrue(self.store(b""))
        self.assertEqual(self.successResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, index))), b"")

    def test_get_value_wrong_size_announced(self) -> None:
        from p2pnet.dht.errors import VerificationError

        value = b"0123456789"
        self.assertTrue(self.store(value))
        self.failureResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, ids.key_for(value), size=11)), VerificationError)

    def test_get_value_not_held(self) -> None:
        f = self.failureResultOf(self.go(self.a.get_value_from_node(
            self.b.node, self.key, ids.key_for(b"nothing"))), RemoteError)
        self.assertEqual(f.value.code, codec.ErrorCode.NOT_FOUND)

    def test_expiry_with_closer_nodes_known(self) -> None:
        # b knows three nodes closer to the key than itself: c = 3.
        key = key_near(self.b.key, 1 << 100)
        for i in range(3):
            n = self.sim.add(node_id=key_near(key, i + 1))
            self.successResultOf(self.go(n.ping_address(self.b.address)))
        self.sim.settle(1)  # b pings each back: it is a contact once it answers
        self.assertEqual(self.b.routing_table.count_close(key), 3)
        value = b"far copy"
        self.successResultOf(self.go(self.a.store_to_node(self.b.node, key, ids.key_for(value),
                                                           value, 1.0)))
        record = self.b.kvp_table.get_record(key, ids.key_for(value))
        self.assertAlmostEqual(record.expires_at - record.last_update,
                               TIME_EXPIRE / math.exp(3 / 20))


class RoutingUpkeepTests(SynchronousTestCase):
    def full_bucket(self) -> tuple[Sim, DHTNetwork, DHTNetwork, DHTNetwork, DHTNetwork]:
        """Node a with k = 2, whose bucket 0 is full of b and c; d also falls in it."""
        sim = Sim()
        a = sim.add(k=2)
        bucket_ids = [ids.random_key_in_bucket(a.key, 0, random.Random(i).randbytes)
                      for i in range(3)]
        b, c, d = (sim.add(node_id=i) for i in bucket_ids)
        for n in (b, c):
            self.successResultOf(sim.run(n.ping_address(a.address)))
            sim.settle(1)  # a pings each back: it is a contact once it answers
        return sim, a, b, c, d

    def test_full_bucket_keeps_answering_node(self) -> None:
        sim, a, b, c, d = self.full_bucket()
        bucket = a.routing_table.buckets[0]
        self.assertEqual(bucket.nodes, [b.node, c.node])
        sim.settle(EVICT_PING_AFTER)  # b was heard from too long ago to be kept unasked
        before = b.protocol.stats.requests_in
        self.successResultOf(sim.run(d.ping_address(a.address)))
        sim.settle(GIVE_UP + 1)
        self.assertEqual(b.protocol.stats.requests_in, before + 1)  # a pinged b
        # b answered: it is now the most recently seen, and the newcomer is dropped.
        self.assertEqual(bucket.nodes, [c.node, b.node])
        self.assertNotIn(d.node, a.routing_table)
        self.assertFalse(bucket.locked)

    def test_full_bucket_evicts_silent_node(self) -> None:
        sim, a, b, c, d = self.full_bucket()
        b_node = b.node
        b.protocol.transport.stopListening()
        sim.settle(EVICT_PING_AFTER)
        self.successResultOf(sim.run(d.ping_address(a.address)))
        sim.settle(0.01)  # a pings d back; d answers and is offered to the full bucket
        bucket = a.routing_table.buckets[0]
        self.assertTrue(bucket.locked)
        self.assertEqual(bucket.nodes, [b_node, c.node])
        self.assertEqual(bucket.replacements, [d.node])
        sim.settle(GIVE_UP - 0.1)
        self.assertTrue(bucket.locked)
        sim.settle(0.2)
        self.assertEqual(bucket.nodes, [c.node, d.node])
        self.assertFalse(bucket.locked)

    def test_full_bucket_keeps_recently_seen_node_unasked(self) -> None:
        sim, a, b, c, d = self.full_bucket()
        before = b.protocol.stats.requests_in
        d_before = d.protocol.stats.requests_in
        self.successResultOf(sim.run(d.ping_address(a.address)))
        sim.settle(GIVE_UP + 1)
        bucket = a.routing_table.buckets[0]
        self.assertEqual(b.protocol.stats.requests_in, before)  # no eviction ping
        self.assertEqual(bucket.nodes, [b.node, c.node])  # nothing moves
        self.assertNotIn(d.node, a.routing_table)
        # d could only wait aside: a does not ping it back for that
        self.assertEqual(d.protocol.stats.requests_in, d_before)
        self.assertEqual(bucket.replacements, [])
        self.assertFalse(bucket.locked)
        # once d answers one of a's requests it is proven and waits aside
        self.successResultOf(sim.run(a.ping_address(d.address)))
        self.assertEqual(bucket.replacements, [d.node])
        self.assertEqual(bucket.nodes, [b.node, c.node])

    def test_other_buckets_unaffected(self) -> None:
        sim = Sim()
        a = sim.add(k=2)
        far = [sim.add(node_id=ids.random_key_in_bucket(a.key, 0, random.Random(i).randbytes))
               for i in range(2)]
        near = sim.add(node_id=ids.random_key_in_bucket(a.key, 5, random.Random(9).randbytes))
        for n in [*far, near]:
            self.successResultOf(sim.run(n.ping_address(a.address)))
        sim.settle(1)
        self.assertEqual(a.routing_table.num_contacts, 3)
        self.assertIn(near.node, a.routing_table)

    def test_stale_node_leaves_routing_table(self) -> None:
        sim = Sim()
        a, b = sim.add_many(2)
        self.successResultOf(sim.run(a.ping_address(b.address)))
        b_node = b.node
        b.protocol.transport.stopListening()
        for _ in range(STALE_AFTER):
            self.assertIn(b_node, a.routing_table)
            self.assertIs(self.successResultOf(sim.run(a.ping_node(b_node))), False)
        self.assertNotIn(b_node, a.routing_table)

    def test_answer_resets_failure_count(self) -> None:
        sim = Sim()
        a, b = sim.add_many(2)
        self.successResultOf(sim.run(a.ping_address(b.address)))
        sim.net.blocked_hosts.add(b.address[0])
        for _ in range(STALE_AFTER - 1):
            self.assertIs(self.successResultOf(sim.run(a.ping_node(b.node))), False)
        sim.net.blocked_hosts.clear()
        self.successResultOf(sim.run(a.ping_node(b.node)))
        sim.net.blocked_hosts.add(b.address[0])
        for _ in range(STALE_AFTER - 1):
            self.assertIs(self.successResultOf(sim.run(a.ping_node(b.node))), False)
        self.assertIn(b.node, a.routing_table)

    def test_error_answers_do_not_make_a_node_stale(self) -> None:
        # A node that answers (even with an error) is alive: it stays a contact.
        sim = Sim()
        a, b = sim.add_many(2)
        self.successResultOf(sim.run(a.ping_address(b.address)))
        wrong = ids.key_for(b"not the value's hash")
        for _ in range(STALE_AFTER + 1):
            self.assertIs(self.successResultOf(sim.run(
                a.store_to_node(b.node, a.key, wrong, b"value", 1.0))), False)
        self.assertIn(b.node, a.routing_table)

    def test_new_address_replaces_old_only_when_old_is_silent(self) -> None:
        """Issue 11 #5: an id seen at a new address is handled like a newcomer to a full
        bucket -- the old address is pinged first and keeps the slot if it answers (see
        tests.test_dht_attacks_routing); here the node really moved, so it is silent."""
        sim = Sim()
        a, b = sim.add_many(2)
        self.successResultOf(sim.run(b.ping_address(a.address)))
        sim.settle(EVICT_PING_AFTER)  # not heard from lately: the old address is asked
        b.protocol.transport.stopListening()
        sim.net.attach(b.protocol, "10.0.5.5", 4001)
        self.successResultOf(sim.run(b.ping_address(a.address)))
        sim.settle(1)
        old = [n for n in a.routing_table.nodes()]
        self.assertEqual([(n.key, n.address) for n in old], [(b.key, ("10.0.1.1", 4000))])
        sim.settle(GIVE_UP + 1)  # the ping of the old address times out
        self.assertEqual(list(a.routing_table.nodes()), [Node(b.key, "10.0.5.5", 4001)])


class HandlerFuzzTests(SynchronousTestCase):
    """A real node fed arbitrary message bodies: it answers or drops, never crashes."""

    @settings(max_examples=300)
    @given(st.sampled_from([0, 1, 2]), st.sampled_from([1, 2, 3, 4, 5]),
           st.binary(max_size=80))
    def test_arbitrary_bodies(self, kind: int, rpc: int, body: bytes) -> None:
        sim = Sim()
        node = sim.add()
        node.kvp_table.put(KVPRecord(b"k" * 20, ids.key_for(b"v"), 1, 1.0), b"v")
        data = (bytes([codec.VERSION, len(b"p2pnet")]) + b"p2pnet"
                + bytes([kind, rpc]) + b"T" * 8 + b"S" * 20 + body)
        node.protocol.datagramReceived(data, ("10.9.9.9", 9))
        sim.settle(1)
        self.assertEqual(node.protocol.stats.datagrams_in, 1)
        self.assertEqual(self.flushLoggedErrors(), [])


class LookupTests(SynchronousTestCase):
    """Thirty nodes joined through the first one."""

    def setUp(self) -> None:
        self.sim = Sim(seed=1)
        self.nodes = self.sim.add_many(30)
        self.joined = self.sim.join_all()

    def test_join_results(self) -> None:
        self.assertEqual(self.joined, [True] * 29)
        for n in self.nodes:
            self.assertEqual(n.routing_table.num_contacts, 29)

    def test_join_knows_true_closest(self) -> None:
        for n in self.nodes:
            true = self.sim.closest(n.key, 20, exclude=[n])
            self.assertEqual(n.routing_table.get_close_nodes(n.key, 20), true)

    def test_join_silent_address(self) -> None:
        newcomer = self.sim.add()
        d = newcomer.join_network(("10.9.9.9", 1))
        self.sim.settle(GIVE_UP - 0.01)
        self.assertNoResult(d)
        self.sim.settle(0.02)  # (each hop lands a nanosecond late: see dhthelpers)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(newcomer.routing_table.num_contacts, 0)

    def test_late_joiner_is_known_by_its_neighbours(self) -> None:
        newcomer = self.sim.add()
        self.assertIs(self.successResultOf(self.sim.run(
            newcomer.join_network(self.nodes[5].address))), True)
        for n in self.sim.closest(newcomer.key, 5, exclude=[newcomer]):
            holder = next(x for x in self.nodes if x.key == n.key)
            self.assertIn(newcomer.node, holder.routing_table)

    def test_find_node_shortlist_finds_true_closest(self) -> None:
        rnd = random.Random(5)
        for asker in (self.nodes[0], self.nodes[13], self.nodes[29]):
            key = rnd.randbytes(20)
            sl = self.successResultOf(self.sim.run(asker.find_node_shortlist(key)))
            self.assertEqual(sl.closest(20), self.sim.closest(key, 20, exclude=[asker]))

    def test_find_node_shortlist_from_sparse_table(self) -> None:
        # A node that knows only the bootstrap node still finds the true closest.
        newcomer = self.sim.add()
        self.successResultOf(self.sim.run(newcomer.ping_address(self.nodes[0].address)))
        key = random.Random(6).randbytes(20)
        sl = self.successResultOf(self.sim.run(newcomer.find_node_shortlist(key)))
        self.assertEqual(sl.closest(20), self.sim.closest(key, 20, exclude=[newcomer]))

    def test_find_value_shortlist_reports_holders(self) -> None:
        value = b"held by three"
        key, index = ids.key_for(b"some key"), ids.key_for(value)
        holders = self.nodes[3:6]
        for n in holders:
            n.kvp_table.put(KVPRecord(key, index, len(value), 77.0), value)
        sl = self.successResultOf(self.sim.run(self.nodes[20].find_value_shortlist(key)))
        self.assertTrue(sl.useful_nodes)
        self.assertLessEqual(sl.useful_nodes, {n.node for n in holders})
        self.assertEqual(sl.get_common_kvp_exchange_info(),
                         codec.ValueInfo(index, len(value), 77.0))

    def test_get_value_with_index_stops_at_first_holder(self) -> None:
        value = b"content addressed"
        key, index = ids.key_for(b"indexed key"), ids.key_for(value)
        for n in self.nodes[3:6]:
            n.kvp_table.put(KVPRecord(key, index, len(value), 5.0), value)
        asker = self.nodes[20]
        before = asker.lookup_contacts
        got = self.successResultOf(self.sim.run(asker.get_value(key, index)))
        self.assertEqual(got, value)
        quick = asker.lookup_contacts - before
        before = asker.lookup_contacts
        self.successResultOf(self.sim.run(asker.find_value_shortlist(key, index)))
        self.assertLess(quick, asker.lookup_contacts - before)

    def test_get_value_with_index_falls_back_when_first_holder_fails(self) -> None:
        value = b"served elsewhere"
        key, index = ids.key_for(b"fallback key"), ids.key_for(value)
        asker = self.nodes[20]
        by_distance = self.sim.closest(key, 30, exclude=[asker])
        # The closest node is asked first; it announces the value but cannot serve it
        # (no bytes behind the record), so only the full lookup finds the honest one.
        net_of = {n.key: n for n in self.nodes}
        liar, honest = net_of[by_distance[0].key], net_of[by_distance[14].key]
        liar.kvp_table.records_for_key = lambda k: (  # type: ignore[method-assign]
            [KVPRecord(key, index, len(value), 5.0)] if k == key else [])
        honest.kvp_table.put(KVPRecord(key, index, len(value), 5.0), value)
        lookups = asker.lookups
        got = self.successResultOf(self.sim.run(asker.get_value(key, index)))
        self.assertEqual(got, value)
        self.assertEqual(asker.lookups - lookups, 2)  # the quick one, then the full one

    def count_getvals(self, node: DHTNetwork) -> list[bytes]:
        """The keys ``node`` asks getval for from now on."""
        asked: list[bytes] = []
        call = node.get_value_rpc.call

        def spy(address: Any, key: bytes, *a: Any) -> Any:
            asked.append(key)
            return call(address, key, *a)

        node.get_value_rpc.call = spy  # type: ignore[method-assign]
        return asked

    def test_small_value_comes_inline_with_findval(self) -> None:
        """A value up to ``inline_max`` bytes comes in the findval answer: a get sends no
        getval.  A larger one is pulled with getvals."""
        key = ids.key_for(b"inline key")
        farthest = self.sim.closest(key, 30)[-1]  # holds no copy, nor a cached one
        reader = next(n for n in self.nodes if n.key == farthest.key)
        for value, getvals in [(b"small" * 10, 0), (blob(self.nodes[0].inline_max + 1), 1)]:
            self.successResultOf(self.sim.run(self.nodes[2].put("inline key", value)))
            asked = self.count_getvals(reader)
            self.assertEqual(self.successResultOf(self.sim.run(reader.get("inline key"))),
                             value)
            self.assertEqual(len(asked), getvals)

    def test_inline_bytes_that_do_not_match_are_not_used(self) -> None:
        """Inline bytes are checked against the announced size and index: bytes that do
        not match are counted and the value is fetched with getval instead."""
        value = b"the real thing"
        key, index = ids.key_for(b"lying key"), ids.key_for(value)
        for n in self.nodes:
            if n is not self.nodes[20]:
                n.kvp_table.put(KVPRecord(key, index, len(value), 5.0), value)
                n.kvp_table.peek = lambda k, i: b"x" * len(value)  # type: ignore[method-assign]
        reader = self.nodes[20]
        asked = self.count_getvals(reader)
        self.assertEqual(self.successResultOf(self.sim.run(reader.get_value(key))), value)
        self.assertEqual(len(asked), 1)
        self.assertGreater(reader.refused["lookup_inline_mismatch"], 0)

    def check_put_get(self, value: bytes, publisher: int) -> None:
        count = self.successResultOf(self.sim.run(self.nodes[publisher].put("the key", value)))
        self.assertEqual(count, 20)
        key = ids.key_for(b"the key")
        holders = self.sim.holders(key, ids.key_for(value))
        closest = {n.key for n in self.sim.closest(key, 20, exclude=[self.nodes[publisher]])}
        self.assertLessEqual(closest, {n.key for n in holders})
        for n in self.nodes:
            self.assertEqual(self.successResultOf(self.sim.run(n.get("the key"))), value)

    def test_tables_share_each_contact_instance(self) -> None:
        # many nodes in one process hold one Node per contact, not one per table
        by_key: dict[bytes, Node] = {}
        for n in self.nodes:
            for c in n.routing_table.nodes():
                self.assertIs(c, by_key.setdefault(c.key, c))
        self.assertEqual(len(by_key), 30)

    def test_put_replaces_a_silent_node_with_the_next_closest(self) -> None:
        # The put's lookup asks only the closest few; a silent node further down the k
        # closest is found out by its store, and the next closest node takes its place.
        writer = self.nodes[3]
        key = ids.key_for(b"the key")
        ranked = self.sim.closest(key, 21, exclude=[writer])
        silent = next(n for n in self.nodes if n.key == ranked[15].key)
        silent.protocol.transport.stopListening()
        tried: list[bytes] = []
        store_to_node = writer.store_to_node

        def spy(node: Node, *a: Any, **kw: Any) -> defer.Deferred[bool]:
            tried.append(node.key)
            return store_to_node(node, *a, **kw)

        writer.store_to_node = spy  # type: ignore[method-assign]
        value = b"twenty copies"
        count = self.successResultOf(self.sim.run(writer.put("the key", value)))
        self.assertIn(silent.key, tried)  # never asked by the lookup: its store found it out
        self.assertEqual(count, 20)
        holders = {n.key for n in self.sim.holders(key, ids.key_for(value))}
        self.assertLessEqual({n.key for n in self.sim.closest(key, 20, exclude=[writer])},
                             holders)
        self.assertIn(ranked[20].key, holders)  # the 21st closest stood in

    def test_put_get_small_everywhere(self) -> None:
        self.check_put_get(b"hello world" * 10, 7)

    def test_put_get_1mib_everywhere(self) -> None:
        self.check_put_get(blob(MAX_VALUE_SIZE, 2), 11)

    def test_newest_value_wins(self) -> None:
        self.successResultOf(self.sim.run(self.nodes[1].put("k", b"first")))
        self.sim.settle(10)
        self.successResultOf(self.sim.run(self.nodes[2].put("k", b"second")))
        self.assertEqual(self.successResultOf(self.sim.run(self.nodes[9].get("k"))),
                         b"second")

    def test_get_missing_key(self) -> None:
        self.failureResultOf(self.sim.run(self.nodes[4].get("no such key")),
                             ValueNotFoundError)
        self.failureResultOf(self.sim.run(self.nodes[4].get_value_at(
            ids.key_for(b"k"), ids.key_for(b"i"))), ValueNotFoundError)

    def test_fetched_value_cached_at_closest_lacking_node(self) -> None:
        key = ids.key_for(b"cached")
        value = b"cache me" * 100
        index = ids.key_for(value)
        by_distance = sorted(self.nodes, key=lambda n: ids.distance(n.key, key))
        # A holder among the k closest (a lookup never asks farther nodes).
        holder, getter = by_distance[5], by_distance[15]
        holder.kvp_table.put(KVPRecord(key, index, len(value), 5.0, is_original=True), value)
        self.assertEqual(self.successResultOf(self.sim.run(getter.get(key))), value)
        self.sim.settle(1)
        self.assertEqual([n.key for n in self.sim.holders(key, index)],
                         [by_distance[0].key, holder.key])
        cached = by_distance[0].kvp_table.get_record(key, index)
        self.assertFalse(cached.is_original)
        self.assertEqual(cached.timestamp, 5.0)

    def test_value_not_matching_index_is_not_accepted(self) -> None:
        # A holder announcing a value under the wrong index: the getter finds nothing.
        key = ids.key_for(b"lying")
        wrong = ids.key_for(b"another value")
        self.nodes[8].kvp_table.put(KVPRecord(key, wrong, 5, 1.0), b"value")
        self.failureResultOf(self.sim.run(self.nodes[3].get_value_at(key, wrong)),
                             ValueNotFoundError)

    def test_stopped_node_does_not_break_lookups(self) -> None:
        key = ids.key_for(b"key near a dead node")
        by_distance = sorted(self.nodes, key=lambda n: ids.distance(n.key, key))
        dead = by_distance[0]
        dead_node = dead.node
        dead.protocol.transport.stopListening()
        asker = by_distance[15]
        sl = self.successResultOf(self.sim.run(asker.find_node_shortlist(key)))
        self.assertEqual(sl.closest(20), self.sim.closest(key, 20, exclude=[asker]))
        self.assertNotIn(dead_node, sl.nodes)
        self.assertGreater(asker.protocol.stats.timeouts, 0)
        count = self.successResultOf(self.sim.run(asker.put(key, b"still works")))
        self.assertEqual(count, 20)
        for n in self.sim.live():
            self.assertEqual(self.successResultOf(self.sim.run(n.get(key))), b"still works")

    def test_datagrams_per_operation_bounded(self) -> None:
        n = len(self.nodes)
        net = self.sim.net
        before = net.sent
        self.successResultOf(self.sim.run(self.nodes[3].put("counted", b"x" * 100)))
        put_cost = net.sent - before
        # One findnode per other node at most, then one store per replica.
        self.assertLessEqual(put_cost, 2 * ((n - 1) + 20))
        before = net.sent
        self.successResultOf(self.sim.run(self.nodes[17].get("counted")))
        get_cost = net.sent - before
        # One findval per other node at most, one getval, one caching store.
        self.assertLessEqual(get_cost, 2 * ((n - 1) + 2))
        big = blob(MAX_VALUE_SIZE, 4)
        chunks = math.ceil(len(big) / self.nodes[0].chunk_size)
        before = net.sent
        self.successResultOf(self.sim.run(self.nodes[5].put("big", big)))
        self.assertLessEqual(net.sent - before, 2 * ((n - 1) + 20 * (1 + chunks)))
        before = net.sent
        self.successResultOf(self.sim.run(self.nodes[21].get("big")))
        self.assertLessEqual(net.sent - before, 2 * ((n - 1) + 2 * chunks + 1))


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


class ConvenienceKeyTests(TwoNodeMixin, SynchronousTestCase):
    def test_str_key_is_sha1_of_utf8(self) -> None:
        self.successResultOf(self.go(self.a.put("ключ", b"value")))
        record = next(self.a.kvp_table.records())
        self.assertEqual(record.key, _sha1("ключ".encode()))
        self.assertTrue(record.is_original)

    def test_put_replaces_own_older_value(self) -> None:
        self.successResultOf(self.go(self.a.put("k", b"one")))
        self.successResultOf(self.go(self.a.put("k", b"two")))
        self.assertEqual([r.index for r in self.a.kvp_table.records()], [_sha1(b"two")])
        self.assertEqual(self.successResultOf(self.go(self.a.get("k"))), b"two")

    def test_lonely_node_put_and_get(self) -> None:
        self.assertEqual(self.successResultOf(self.go(self.a.put("alone", b"v"))), 0)
        self.assertEqual(self.successResultOf(self.go(self.a.get("alone"))), b"v")


class StoreToClosestTests(SynchronousTestCase):
    """``DHTNetwork._store_to_closest``: every store counted once, whatever the timing."""

    def setUp(self) -> None:
        self.net = DHTNetwork(task.Clock(), k=3)
        self.asked: list[Node] = []

    def nodes(self, n: int) -> list[Node]:
        return [Node(bytes([i + 1]) * 20, f"10.0.0.{i + 1}", 4000) for i in range(n)]

    def run_with(self, behaviour: Any, candidates: list[Node]) -> Any:
        def store_to_node(node: Node, *a: Any, **kw: Any) -> Any:
            self.asked.append(node)
            return behaviour(node)

        self.net.store_to_node = store_to_node  # type: ignore[method-assign]
        self.tried: dict[Node, bool] = {}
        d = self.net._store_to_closest(candidates, b"k" * 20, b"i" * 20, b"v", 1.0, 0.0,
                                       self.tried)
        self.assertEqual(set(self.tried), set(self.asked))
        return d

    def test_answers_at_once_are_all_counted(self) -> None:
        d = self.run_with(lambda n: defer.succeed(True), self.nodes(5))
        self.assertEqual(self.successResultOf(d), (3, 0))
        self.assertEqual(self.asked, self.nodes(3))  # the first k, no spare needed

    def test_a_failure_takes_the_next_candidate_then_counts_missing(self) -> None:
        d = self.run_with(lambda n: defer.succeed(n.key[0] != 2), self.nodes(4))
        self.assertEqual(self.successResultOf(d), (3, 0))  # node 2 failed, node 4 stood in
        d = self.run_with(lambda n: defer.succeed(n.key[0] > 2), self.nodes(4))
        self.assertEqual(self.successResultOf(d), (2, 1))  # two failed, one spare
        self.assertEqual([ok for n, ok in sorted(self.tried.items(), key=lambda e: e[0].key)],
                         [False, False, True, True])

    def test_a_store_that_raises_fails_the_call(self) -> None:
        pending: dict[bytes, defer.Deferred[bool]] = {}

        def behaviour(n: Node) -> Any:
            if n.key[0] <= 3:
                pending[n.key] = defer.Deferred()
                return pending[n.key]
            raise RuntimeError("a store_to_node bug")

        d = self.run_with(behaviour, self.nodes(6))
        self.assertNoResult(d)
        for p in list(pending.values()):
            p.callback(False)  # the first spare's store raises: the call fails, once
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(len(self.asked), 4)  # no spare after our own error

    def test_no_candidates(self) -> None:
        self.assertEqual(self.successResultOf(self.run_with(lambda n: None, [])), (0, 0))


class MadeUpContactsTests(SynchronousTestCase):
    """Made-up contacts close to a key cannot cost a put its replicas: a store to one
    fails and the next candidate stands in; when no candidate is left, the full lookup
    asks every one of the k closest, and the value reaches the k closest that answer."""

    def setUp(self) -> None:
        self.sim = Sim(seed=5)
        self.nodes = self.sim.add_many(30)
        self.sim.join_all()
        self.writer = self.nodes[9]
        self.key = ids.key_for(b"the key")
        self.real = self.sim.closest(self.key, 29, exclude=[self.writer])
        d3, d20 = self.real[2].distance(self.key), self.real[19].distance(self.key)
        # made-up ids between the 3rd and the 20th closest real nodes, each at its own
        # unreachable address
        self.fakes = [Node(key_near(self.key, d3 + (d20 - d3) * (i + 1) // 41),
                           f"10.250.0.{i + 1}", 4000) for i in range(40)]

    def check_put(self, lookups: int) -> None:
        before = self.writer.lookups
        count = self.successResultOf(self.sim.run(self.writer.put("the key", b"copies")))
        self.assertEqual(self.writer.lookups - before, lookups)
        self.assertEqual(count, 20)
        holders = {n.key for n in self.sim.holders(self.key, ids.key_for(b"copies"))}
        self.assertLessEqual({n.key for n in self.real[:20]}, holders)

    def test_the_closest_name_made_up_contacts(self) -> None:
        # The 3 closest name made-up contacts that a lookup stopping at the closest 3
        # never asks; the stores find them out and real nodes stand in.
        for j in range(3):
            liar = next(n for n in self.nodes if n.key == self.real[j].key)
            named = tuple(self.fakes[j:20:3])

            def lying_answer(body: Any, sender: bytes, address: Any,
                             honest: Any = liar.find_node.answer,
                             named: tuple[Node, ...] = named) -> Any:
                if body.key == self.key:
                    return codec.NodesResponse(named)
                return honest(body, sender, address)

            liar.find_node.answer = lying_answer  # type: ignore[method-assign]
        self.check_put(lookups=1)

    def test_no_candidate_left_then_the_full_lookup(self) -> None:
        # The quick lookup's candidates: half the 20 closest real nodes and 30 made-up
        # ones; the stores leave 10 replicas short, and the full lookup finds the rest.
        find = self.writer.find_node_shortlist

        def quick_with_fakes(key: bytes, *, until: Until = Until.CLOSEST,
                             stats: Any = None) -> defer.Deferred[Shortlist]:
            if until is not Until.QUORUM:
                return find(key, until=until, stats=stats)
            sl = Shortlist(key, self.writer.key, 20)
            sl.add_nodes(self.real[0:20:2] + self.fakes[:30])
            return defer.succeed(sl)

        self.writer.find_node_shortlist = quick_with_fakes  # type: ignore[method-assign]
        self.check_put(lookups=1)  # the quick one was faked: only the one going on counts
