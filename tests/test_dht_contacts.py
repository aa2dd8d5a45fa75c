"""Tests for :mod:`p2pnet.dht.contacts`: admission, ping backs, incumbents, failures,
bounds and value handover.

The unit tests drive a :class:`ContactBook` against a fake node whose pings are
Deferreds the test fires by hand; the rest run whole nodes on the in-memory network.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht.contacts import ContactBook, is_remote_fault
from p2pnet.dht.errors import (
    DecodeError,
    ProtocolStoppedError,
    RemoteError,
    RPCTimeoutError,
    VerificationError,
)
from p2pnet.dht.limits import Limits, RefusalCounter
from p2pnet.dht.routing import RoutingTable
from p2pnet.dht.table import KVPRecord, MemoryKVPTable
from p2pnet.models import Node
from tests.dhthelpers import Sim, key_near, result_of

OWN = ids.key_for(b"own")


def timeout() -> Failure:
    return Failure(RPCTimeoutError("ping", ("10.0.0.1", 1), 5.0, 2))


class FakePing:
    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def call(self, address: tuple[str, int]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.host.pings.append((address, d))
        return d


class FakeProtocol:
    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def request(self, address: tuple[str, int], body: Any, timeout: float | None = None,
                retries: int | None = None) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.host.pings.append((address, d))
        return d


class FakeHost:
    """The node a ContactBook works for; every ping waits for the test to answer it."""

    k = 20

    def __init__(self, limits: Limits) -> None:
        self.key = OWN
        self.kvp_table = MemoryKVPTable()
        self.ping = FakePing(self)
        self.protocol = FakeProtocol(self)
        self.pings: list[tuple[tuple[str, int], defer.Deferred[Any]]] = []
        self.stores: list[tuple[Node, bytes]] = []

    def store_to_node(self, node: Node, key: bytes, index: bytes, bytes_: bytes,
                      timestamp: float) -> defer.Deferred[bool]:
        self.stores.append((node, key))
        return defer.succeed(True)


class BookMixin:
    limits = Limits()

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.host = FakeHost(self.limits)
        self.table = RoutingTable(
            OWN, self.clock.seconds, one_per_address=self.limits.routing_one_per_address,
            max_per_prefix=self.limits.routing_max_per_prefix,
            replacements=self.limits.routing_replacements,
            replacement_max_age=self.limits.routing_replacement_max_age)
        self.refused = RefusalCounter()
        self.book = ContactBook(self.host, self.table, self.clock, self.limits, self.refused)

    def answer_pings(self, as_id: dict[tuple[str, int], bytes] | None = None) -> int:
        """Answer every outstanding ping as the id in ``as_id`` (or time it out)."""
        n = 0
        while self.host.pings:
            address, d = self.host.pings.pop(0)
            node_id = (as_id or {}).get(address)
            if node_id is None:
                d.errback(timeout())
            else:
                self.book.contact_answered(node_id, address)  # (the protocol's call)
                d.callback((0.001, Node(node_id, *address)))
            n += 1
        return n


def key_in(bucket: int, seed: int) -> bytes:
    return ids.random_key_in_bucket(OWN, bucket, random.Random(seed).randbytes)


class AdmissionTests(BookMixin, SynchronousTestCase):
    def test_requester_is_pinged_back_and_enters_when_it_answers(self) -> None:
        k = key_in(3, 1)
        self.book.contact_seen(k, ("192.0.2.1", 4000))
        self.assertEqual(self.table.num_contacts, 0)  # a request proves nothing
        self.assertEqual([a for a, _ in self.host.pings], [("192.0.2.1", 4000)])
        self.answer_pings({("192.0.2.1", 4000): k})
        self.assertIsNotNone(self.table.find(k))

    def test_node_we_asked_is_not_pinged_back(self) -> None:
        # its answer to our request proves its address: a ping-back would be a second
        # proof (a node pings its requester back before it answers)
        asked = ("192.0.2.1", 4000)
        self.host.protocol.awaiting = lambda address: address == asked  # type: ignore
        self.book.contact_seen(key_in(3, 1), asked)
        self.assertEqual(self.host.pings, [])
        self.book.contact_seen(key_in(3, 2), ("192.0.2.2", 4000))  # not asked: pinged
        self.assertEqual([a for a, _ in self.host.pings], [("192.0.2.2", 4000)])

    def test_answerer_kept_out_is_not_pinged_back(self) -> None:
        for i in range(self.host.k):  # a full bucket, all heard from lately
            self.book.contact_answered(key_in(0, 100 + i), (f"10.{i}.0.1", 4000))
        kept_out = Node(key_in(0, 999), "10.99.0.1", 4000)
        self.book.contact_answered(kept_out.key, kept_out.address)
        self.assertIsNone(self.table.find(kept_out.key))
        self.book.contact_seen(kept_out.key, kept_out.address)
        self.assertEqual(self.host.pings, [])  # its answer proved the address
        # the bucket's contacts are not heard from for a while: a request from it is
        # pinged back again once its proof is old (it may take a stale contact's place)
        self.clock.advance(max(self.limits.routing_verify_interval,
                               self.limits.routing_evict_ping_after))
        self.book.contact_seen(kept_out.key, kept_out.address)
        self.assertEqual([a for a, _ in self.host.pings], [kept_out.address])

    def test_requester_into_a_full_fresh_bucket_is_not_pinged_back(self) -> None:
        for i in range(self.host.k):  # a full bucket, all heard from lately
            self.book.contact_answered(key_in(0, 100 + i), (f"10.{i}.0.1", 4000))
        stranger = ("10.99.0.1", 4000)
        self.book.contact_seen(key_in(0, 999), stranger)
        self.assertEqual(self.host.pings, [])  # it could only wait aside
        self.assertEqual(self.book.refused["routing_verify_no_room"], 1)
        self.book.contact_seen(key_in(3, 1), ("192.0.2.1", 4000))  # a bucket with room
        self.assertEqual([a for a, _ in self.host.pings], [("192.0.2.1", 4000)])
        # once the bucket's oldest contact is old, a requester may replace it: verified
        self.clock.advance(self.limits.routing_evict_ping_after)
        self.book.contact_seen(key_in(0, 998), ("10.98.0.1", 4000))
        self.assertEqual(self.host.pings[-1][0], ("10.98.0.1", 4000))

    def test_silent_requester_never_enters(self) -> None:
        self.book.contact_seen(key_in(3, 1), ("192.0.2.1", 4000))
        self.answer_pings()
        self.assertEqual(self.table.num_contacts, 0)
        self.assertEqual(self.book.sizes()["verifying"], 0)

    def test_ping_back_once_per_address_per_interval(self) -> None:
        for i in range(50):
            self.book.contact_seen(key_in(3, i), ("192.0.2.1", 4000 + i))  # one IP
        self.assertEqual(len(self.host.pings), 1)
        self.answer_pings()
        self.clock.advance(self.limits.routing_verify_interval)
        self.book.contact_seen(key_in(3, 99), ("192.0.2.1", 4000))
        self.assertEqual(len(self.host.pings), 1)

    def test_known_contact_is_refreshed_not_pinged(self) -> None:
        k = key_in(3, 1)
        self.book.contact_answered(k, ("192.0.2.1", 4000))
        self.clock.advance(5)
        self.book.contact_seen(k, ("192.0.2.1", 4000))
        self.assertEqual(self.host.pings, [])
        self.assertEqual(self.table.last_seen(k), self.clock.seconds())
        self.assertIs(self.book.node_for(k, ("192.0.2.1", 4000)), self.table.find(k))
        self.assertIsNot(self.book.node_for(k, ("192.0.2.1", 4001)), self.table.find(k))

    def test_ping_backs_in_flight_are_bounded(self) -> None:
        for i in range(100):
            self.book.contact_seen(key_in(3, i), (f"192.0.{i}.1", 4000))
        self.assertEqual(len(self.host.pings), self.limits.routing_verify_max)
        self.assertEqual(self.refused["routing_verify_busy"],
                         100 - self.limits.routing_verify_max)

    def test_ping_backs_are_rate_limited(self) -> None:
        rate = int(self.limits.routing_verify_per_second)
        sent = 0
        for i in range(3 * rate):
            self.book.contact_seen(key_in(3, i), (f"10.{i // 250}.{i % 250}.1", 4000))
            sent += self.answer_pings()
        self.assertEqual(sent, rate)  # the burst
        self.assertEqual(self.refused["routing_verify_rate"], 2 * rate)
        self.clock.advance(0.5)
        for i in range(rate):
            self.book.contact_seen(key_in(3, i), (f"10.9.{i % 250}.1", 4000))
            sent += self.answer_pings()
        self.assertEqual(sent, rate + rate // 2)

    def test_far_requesters_share_a_small_budget(self) -> None:
        """Requesters that could not be among our k closest contacts get at most
        ``routing_verify_far_per_second`` ping-backs a second; nearer ones are not held
        back by it."""
        for i in range(self.host.k):  # k contacts closer to us than bucket 0
            self.book.contact_answered(key_in(5 + i % 4, 200 + i), (f"10.{i}.0.1", 4000))
        self.assertEqual(self.table.num_contacts, self.host.k)
        budget = int(max(1.0, self.limits.routing_verify_far_per_second))
        pinged = 0
        for i in range(10):
            self.book.contact_seen(key_in(0, i), (f"192.0.2.{i + 1}", 4000))
            pinged += self.answer_pings()
        self.assertEqual(pinged, budget)
        self.assertEqual(self.refused["routing_verify_far_rate"], 10 - budget)
        self.book.contact_seen(key_in(12, 1), ("192.0.2.200", 4000))  # could be close
        self.assertEqual(self.answer_pings(), 1)
        self.clock.advance(0.5 / self.limits.routing_verify_far_per_second)  # half refilled
        self.book.contact_seen(key_in(0, 49), ("192.0.2.99", 4000))
        self.assertEqual(self.answer_pings(), 0)
        self.clock.advance(0.5 / self.limits.routing_verify_far_per_second)  # refilled
        self.book.contact_seen(key_in(0, 50), ("192.0.2.100", 4000))
        self.assertEqual(self.answer_pings(), 1)
        self.assertEqual(self.refused["routing_verify_rate"], 0)

    def test_clock_set_back_does_not_stop_ping_backs(self) -> None:
        """A clock stepped back (an NTP step) neither drains nor freezes the budgets."""
        self.clock.advance(-3600)
        self.book.contact_seen(key_in(3, 1), ("192.0.2.1", 4000))
        self.assertEqual(self.answer_pings(), 1)
        self.assertEqual(self.refused["routing_verify_rate"], 0)

    def test_recently_verified_map_is_bounded_in_size_and_age(self) -> None:
        limits = self.limits
        for i in range(limits.routing_verify_recent_max + 500):
            self.clock.advance(1.0 / limits.routing_verify_per_second)
            self.book.contact_seen(key_in(3, i), (f"10.{i // 250}.{i % 250}.1", 4000))
            self.answer_pings()
        self.assertLessEqual(self.book.sizes()["verified"], limits.routing_verify_recent_max)
        self.clock.advance(limits.routing_verify_interval)
        self.book.contact_seen(key_in(3, 1), ("10.200.0.1", 4000))
        self.answer_pings()
        self.assertEqual(self.book.sizes()["verified"], 1)


class IncumbentTests(BookMixin, SynchronousTestCase):
    def fill(self, bucket: int = 0) -> list[Node]:
        added = []
        for i in range(self.host.k):
            n = Node(key_in(bucket, 100 + i), f"10.{i}.0.1", 4000)
            self.book.contact_answered(n.key, n.address)
            added.append(n)
        return added

    def test_full_bucket_pings_its_oldest(self) -> None:
        added = self.fill()
        newcomer = Node(key_in(0, 999), "10.99.0.1", 4000)
        self.book.contact_answered(newcomer.key, newcomer.address)
        self.assertEqual(self.host.pings, [])  # the oldest was heard from lately
        self.assertEqual(self.table.buckets[0].replacements, [newcomer])
        self.clock.advance(self.limits.routing_evict_ping_after)
        other = Node(key_in(0, 998), "10.98.0.1", 4000)
        self.book.contact_answered(other.key, other.address)
        self.assertEqual([a for a, _ in self.host.pings], [added[0].address])
        self.answer_pings()  # silent: evicted, the newest kept-aside node takes its place
        self.assertIsNone(self.table.find(added[0].key))
        self.assertIs(self.table.find(other.key), self.table.buckets[0].nodes[-1])
        self.assertEqual(self.table.buckets[0].replacements, [newcomer])

    def test_local_error_keeps_the_incumbent(self) -> None:
        added = self.fill()
        self.clock.advance(self.limits.routing_evict_ping_after)
        self.book.contact_answered(key_in(0, 999), ("10.99.0.1", 4000))
        _, d = self.host.pings.pop()
        d.errback(ProtocolStoppedError())
        self.assertIn(added[0], self.table)
        self.assertFalse(self.table.buckets[0].locked)

    def test_checks_in_flight_are_bounded(self) -> None:
        limits = Limits(routing_checks_max=2)
        book = ContactBook(self.host, self.table, self.clock, limits, self.refused)
        for bucket in range(4):
            for i in range(self.host.k):
                book.contact_answered(key_in(bucket, 100 + i), (f"10.{bucket}.{i}.1", 1))
        self.clock.advance(limits.routing_evict_ping_after)
        for bucket in range(4):
            book.contact_answered(key_in(bucket, 999), (f"10.9{bucket}.0.1", 1))
        self.assertEqual(len(self.host.pings), 2)
        self.assertEqual(self.refused["routing_checks_busy"], 2)
        self.assertEqual(sum(b.locked for b in self.table.buckets), 2)  # the others unlocked

    def test_address_held_by_another_id(self) -> None:
        """A node restarted with a new id at the same address: the old id is asked and
        the answer (from the new id) frees the slot."""
        old, new = key_in(4, 1), key_in(9, 2)
        self.book.contact_answered(old, ("192.0.2.9", 4000))
        self.clock.advance(self.limits.routing_evict_ping_after)
        self.book.contact_answered(new, ("192.0.2.9", 4000))
        self.assertIsNone(self.table.find(new))
        self.answer_pings({("192.0.2.9", 4000): new})
        self.assertIsNone(self.table.find(old))
        self.assertIsNotNone(self.table.find(new))


class FailureTests(BookMixin, SynchronousTestCase):
    def test_remote_faults(self) -> None:
        self.assertTrue(is_remote_fault(timeout()))
        self.assertTrue(is_remote_fault(Failure(VerificationError("bad bytes"))))
        for local in (ValueError("bad key"), TypeError("x"), ProtocolStoppedError(),
                      RemoteError(1, "refused"), DecodeError("ours")):
            self.assertFalse(is_remote_fault(Failure(local)), local)

    def test_only_contacts_are_counted(self) -> None:
        stranger = Node(key_in(2, 1), "192.0.2.1", 1)
        self.book.failed(stranger, timeout())
        self.assertEqual(self.book.failures(stranger.key), 0)
        self.assertEqual(self.book.sizes()["failures"], 0)

    def test_stale_contact_leaves_and_a_replacement_enters(self) -> None:
        contact = Node(key_in(2, 1), "192.0.2.1", 1)
        self.book.contact_answered(contact.key, contact.address)
        for _ in range(self.limits.routing_stale_after - 1):
            self.book.failed(contact, timeout())
        self.assertEqual(self.book.failures(contact.key), self.limits.routing_stale_after - 1)
        self.book.contact_answered(contact.key, contact.address)  # an answer resets it
        self.assertEqual(self.book.failures(contact.key), 0)
        for _ in range(self.limits.routing_stale_after):
            self.book.failed(contact, timeout())
        self.assertIsNone(self.table.find(contact.key))
        self.assertEqual(self.book.sizes()["failures"], 0)

    def test_failures_age_out(self) -> None:
        contact = Node(key_in(2, 1), "192.0.2.1", 1)
        self.book.contact_answered(contact.key, contact.address)
        for _ in range(self.limits.routing_stale_after - 1):
            self.book.failed(contact, timeout())
        self.clock.advance(self.limits.routing_failure_max_age + 1)
        self.assertEqual(self.book.failures(contact.key), 0)
        self.book.failed(contact, timeout())  # a fresh count of 1: still a contact
        self.assertIsNotNone(self.table.find(contact.key))
        self.assertEqual(self.book.failures(contact.key), 1)


class HypothesisTests(BookMixin, SynchronousTestCase):
    """Random hostile traffic: the maps stay within their bounds and the table holds
    only nodes that answered."""

    limits = Limits(routing_verify_max=4, routing_verify_per_second=5.0,
                    routing_verify_recent_max=8, routing_failures_max=6, routing_checks_max=3,
                    routing_replacements=2)

    events = st.lists(st.tuples(
        st.sampled_from(["request", "answer", "fail", "reply", "tick"]),
        st.integers(0, 40), st.integers(0, 12), st.booleans()), max_size=120)

    @settings(max_examples=60)
    @given(events)
    def test_bounds_and_only_answering_contacts(self, events: list[tuple[str, int, int, bool]]
                                                ) -> None:
        self.setUp()
        answered: set[tuple[bytes, tuple[str, int]]] = set()
        for kind, i, a, flag in events:
            key = key_in(i % 5, i)
            address = (f"10.{a}.0.1" if a % 3 else f"10.0.0.{a + 1}", 4000 + a % 2)
            if kind == "request":
                self.book.contact_seen(key, address)
            elif kind == "answer":
                answered.add((key, address))
                self.book.contact_answered(key, address)
            elif kind == "fail":
                self.book.failed(Node(key, *address), timeout() if flag else Failure(
                    ValueError("ours")))
            elif kind == "reply" and self.host.pings:
                address, d = self.host.pings.pop(i % len(self.host.pings))
                if flag:
                    answered.add((key, address))
                    self.book.contact_answered(key, address)
                    d.callback((0.001, Node(key, *address)))
                else:
                    d.errback(timeout())
            elif kind == "tick":
                self.clock.advance(a * 7.0)
            sizes = self.book.sizes()
            self.assertLessEqual(sizes["verifying"], self.limits.routing_verify_max)
            self.assertLessEqual(sizes["verified"], self.limits.routing_verify_recent_max)
            self.assertLessEqual(sizes["failures"], self.limits.routing_failures_max)
            self.assertLessEqual(sizes["checking"], self.limits.routing_checks_max)
            for bucket in self.table.buckets:
                self.assertLessEqual(len(bucket), self.host.k)
                self.assertLessEqual(len(bucket.replacements), self.limits.routing_replacements)
            for n in self.table.nodes():
                self.assertIn((n.key, n.address), answered)


class HandoverTests(SynchronousTestCase):
    """Issue 10: a newcomer closer to a key than the farthest of the k holders we know
    is handed the value (Kademlia §2.5)."""

    def test_newcomer_gets_the_values_it_should_hold(self) -> None:
        sim = Sim(seed=4)
        nodes = sim.add_many(8, k=4)
        sim.join_all()
        sim.settle(5)
        key = ids.key_for(b"handed")
        value = b"to the newcomer"
        self.assertEqual(self.successResultOf(sim.run(nodes[3].put(key, value))), 4)
        holders = sim.holders(key, ids.key_for(value))
        self.assertGreaterEqual(len(holders), 4)
        far_key = key_near(key, 1 << 159)
        self.successResultOf(sim.run(nodes[5].put(far_key, b"elsewhere")))
        sim.settle(5)
        newcomer = sim.add(node_id=key_near(key, 1), k=4)  # the closest node there is
        self.assertTrue(self.successResultOf(sim.run(newcomer.join_network(nodes[0].address))))
        sim.settle(30)
        self.assertIsNotNone(newcomer.kvp_table.get_record(key, ids.key_for(value)))
        self.assertEqual(result_of(newcomer.kvp_table.read(key, ids.key_for(value))), value)
        self.assertIsNone(newcomer.kvp_table.get_record(far_key, ids.key_for(b"elsewhere")))
        # Only the holder closest to the key hands it over: one copy, not k.
        self.assertEqual(sum(n.contacts.handed_over for n in nodes), 1)

    def test_handover_is_bounded(self) -> None:
        limits = Limits(routing_handover_max=3, routing_handover_in_flight=1)
        clock = task.Clock()
        host = FakeHost(limits)
        stores: list[defer.Deferred[bool]] = []

        def store_to_node(node: Node, key: bytes, index: bytes, value: bytes,
                          timestamp: float) -> defer.Deferred[bool]:
            d: defer.Deferred[bool] = defer.Deferred()
            stores.append(d)
            return d

        host.store_to_node = store_to_node  # type: ignore[method-assign]
        for i in range(10):
            v = b"v%d" % i
            host.kvp_table.put(KVPRecord(key_near(OWN, 1000 + i), ids.key_for(v), len(v),
                                         1.0), v)
        table = RoutingTable(OWN, clock.seconds)
        book = ContactBook(host, table, clock, limits, RefusalCounter())
        book.contact_answered(key_near(OWN, 1), ("192.0.2.1", 1))  # closer to all ten
        self.assertEqual(len(stores), 1)  # one in flight
        self.assertEqual(book.sizes()["handover"], 2)  # three queued in all
        while stores:
            stores.pop().callback(True)
        self.assertEqual(book.handed_over, 3)
