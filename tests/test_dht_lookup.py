"""Tests for :mod:`p2pnet.dht.lookup`: hop and contact counts, the bounds of a lookup
(issue 11 #1, the endless lookup) and a get that a lying holder cannot poison (#12).

Every attack test first shows the attack working (with the defence turned off, or at the
level the old code decided on), then the defence.  All on the in-memory network.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.errors import LookupTimeoutError, ValueNotFoundError, ValueUnreachableError
from p2pnet.dht.limits import Limits
from p2pnet.dht.lookup import Lookup, LookupStats
from p2pnet.dht.network import DHTNetwork
from p2pnet.dht.table import KVPRecord
from p2pnet.models import Node
from tests.dhthelpers import Sim, key_near, result_of

TARGET = ids.key_for(b"the target")


class StatsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = Sim(seed=3)
        self.nodes = self.sim.add_many(40)
        self.sim.join_all()

    def test_put_and_get_count_lookups_hops_contacts(self) -> None:
        writer, reader = self.nodes[7], self.nodes[31]
        stats = LookupStats()
        before = writer.lookup_contacts
        took = self.successResultOf(self.sim.run(writer.put("counted", b"v" * 64,
                                                            stats=stats)))
        self.assertEqual(took, 20)  # stored to the k closest ...
        self.assertEqual(stats.lookups, 1)
        self.assertEqual(stats.contacts, writer.lookup_contacts - before)
        # ... found by asking the closest few, not each of the k for nodes too
        self.assertGreaterEqual(stats.contacts, 3)
        self.assertLess(stats.contacts, 20)
        self.assertGreaterEqual(stats.hops, 1)
        got = LookupStats()
        before = reader.lookup_contacts
        self.assertEqual(self.successResultOf(self.sim.run(
            reader.get("counted", stats=got))), b"v" * 64)
        self.assertGreaterEqual(got.lookups, 1)
        self.assertEqual(got.contacts, reader.lookup_contacts - before)
        self.assertGreaterEqual(got.hops, 1)

    def test_get_value_and_store_value_take_stats(self) -> None:
        value = b"indexed" * 9
        key, index = ids.key_for(b"indexed key"), ids.key_for(value)
        owner = self.nodes[12]
        self.successResultOf(self.sim.run(owner.kvp_table.put(
            KVPRecord(key, index, len(value), 5.0, is_original=True), value)))
        stored = LookupStats()
        self.assertEqual(self.successResultOf(self.sim.run(
            owner.store_value(key, index, stats=stored))), 20)
        self.assertEqual(stored.lookups, 1)
        self.assertGreater(stored.contacts, 0)
        reader = next(n for n in self.nodes if n.kvp_table.get_record(key, index) is None)
        got = LookupStats()
        self.assertEqual(self.successResultOf(self.sim.run(
            reader.get_value(key, index, stats=got))), value)
        self.assertEqual(got.lookups, 1)  # stopped at the first holder
        self.assertGreaterEqual(got.hops, 1)

    def test_hops_are_depths(self) -> None:
        # A node that knows only one other node: what it finds is named by that one
        # (depth 1) or by nodes it named (depth 2, ...).
        newcomer = self.sim.add()
        self.successResultOf(self.sim.run(newcomer.ping_address(self.nodes[0].address)))
        lookup = Lookup(newcomer, TARGET)
        sl = self.successResultOf(self.sim.run(lookup.run()))
        self.assertEqual(sl.depth_of(self.nodes[0].node), 1)
        self.assertGreaterEqual(sl.hops, 2)
        self.assertEqual({sl.depth_of(n) for n in sl.closest()} - set(range(1, sl.hops + 1)),
                         set())
        stats = LookupStats()
        stats.add(sl)
        self.assertEqual(stats, LookupStats(lookups=1, hops=sl.hops, contacts=sl.contacted))

    def test_get_stops_once_closest_holders_answered(self) -> None:
        # A get needs far fewer requests than a lookup that waits for the k closest.
        self.successResultOf(self.sim.run(self.nodes[3].put("cheap", b"x" * 64)))
        reader = self.nodes[25]
        stats = LookupStats()
        self.successResultOf(self.sim.run(reader.get("cheap", stats=stats)))
        full = self.successResultOf(self.sim.run(
            reader.find_value_shortlist(ids.key_for(b"cheap"))))
        self.assertLess(stats.contacts, full.contacted)


def serve_fakes(attacker: DHTNetwork, make: Any) -> list[int]:
    """Make ``attacker`` answer every findnode with ``make(n)`` (n = answers so far)."""
    answers = [0]

    def answer(body: codec.FindNodeRequest, sender: bytes, address: Any
               ) -> codec.NodesResponse:
        answers[0] += 1
        return codec.NodesResponse(tuple(make(answers[0])))

    attacker.find_node.answer = answer  # type: ignore[method-assign]
    return answers


def closer_ids(n: int, count: int = 20) -> list[bytes]:
    """``count`` new ids, closer to TARGET the larger ``n`` is (never seen before)."""
    return [key_near(TARGET, ((10**6 - n) << 20) + i + 1) for i in range(count)]


class Relay(DatagramProtocol):
    """Another address of ``attacker``: it answers what arrives here, from here."""

    def __init__(self, attacker: DHTNetwork) -> None:
        self.attacker = attacker

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        proto = self.attacker.protocol
        own, proto.transport = proto.transport, self.transport
        try:
            proto.datagramReceived(datagram, addr)
        finally:
            proto.transport = own


UNBOUNDED = Limits(lookup_max_candidates=10**9, lookup_max_rounds=10**9,
                   lookup_max_seconds=1e9, lookup_one_per_address=False)


class EndlessLookupTests(SynchronousTestCase):
    """Issue 11 #1: every findnode answer holds 20 new ids closer to the target."""

    def victim_and_attacker(self, limits: Limits | None = None
                            ) -> tuple[Sim, DHTNetwork, DHTNetwork]:
        sim = Sim(seed=5)
        victim = sim.add(limits=limits)
        attacker = sim.add()
        self.successResultOf(sim.run(victim.ping_address(attacker.address)))
        return sim, victim, attacker

    def test_same_address_attack_without_the_defence(self) -> None:
        sim, victim, attacker = self.victim_and_attacker(UNBOUNDED)
        answers = serve_fakes(attacker, lambda n: [
            Node(i, *attacker.address) for i in closer_ids(n)])
        lookup = Lookup(victim, TARGET)
        d = lookup.run()
        sim.settle(0.5)
        self.assertNoResult(d)  # still going ...
        self.assertGreater(answers[0], 200)  # ... hundreds of requests in half a second
        self.assertGreater(lookup.shortlist.held, 4000)  # ... thousands of fake ids held
        victim.protocol.transport.stopListening()  # ends it (every request now fails)
        self.successResultOf(d)

    def test_same_address_defence(self) -> None:
        sim, victim, attacker = self.victim_and_attacker()
        answers = serve_fakes(attacker, lambda n: [
            Node(i, *attacker.address) for i in closer_ids(n)])
        sl = self.successResultOf(sim.run(victim.find_node_shortlist(TARGET)))
        self.assertEqual(answers[0], 1)
        self.assertEqual([n.key for n in sl.closest()], [attacker.key])
        self.assertEqual(victim.refused["lookup_same_address"], 20)

    def test_many_addresses_attack_is_bounded(self) -> None:
        # The attacker answers at many addresses (each fake id at one of its own, so the
        # one-per-address rule does not stop it): the caps on candidates, rounds and time
        # end the lookup.
        limits = Limits()
        sim, victim, attacker = self.victim_and_attacker(limits)
        hosts: list[tuple[str, int]] = []

        def fakes(n: int) -> list[Node]:
            out = []
            for i in closer_ids(n):
                address = (f"10.66.{len(hosts) // 250}.{len(hosts) % 250 + 1}", 4000)
                hosts.append(address)
                sim.net.attach(Relay(attacker), *address)
                out.append(Node(i, *address))
            return out

        answers = serve_fakes(attacker, fakes)
        lookup = Lookup(victim, TARGET)
        sl = self.successResultOf(sim.run(lookup.run()))
        self.assertLessEqual(answers[0], limits.lookup_max_rounds)
        self.assertLessEqual(sl.contacted, limits.lookup_max_rounds)
        self.assertLessEqual(sl.held, limits.lookup_max_candidates)
        self.assertEqual(victim.refused["lookup_rounds"], 1)
        self.assertGreater(victim.refused["lookup_candidates"], 0)
        self.assertEqual(len(sl.closest()), 20)  # the best it found, not a failure

    def test_time_bound(self) -> None:
        # Silent nodes: a node lookup past its time ends with what it has; a value
        # lookup fails, typed.
        limits = Limits(lookup_max_seconds=5.0)
        sim = Sim(seed=6)
        victim = sim.add(limits=limits)
        honest = sim.add()
        self.successResultOf(sim.run(victim.ping_address(honest.address)))
        for i in range(15):  # known contacts that no longer answer
            victim.routing_table.node_update(Node(key_near(TARGET, 1 + i), f"10.77.{i}.1", 4000))
        sl = self.successResultOf(sim.run(victim.find_node_shortlist(TARGET)))
        self.assertEqual(sim.clock.seconds() < 6.0, True)
        self.assertEqual(victim.refused["lookup_timeout"], 1)
        self.assertLessEqual({n.key for n in sl.closest()}, {honest.key})
        start = sim.clock.seconds()
        d = sim.run(victim.get_value(TARGET, ids.key_for(b"nothing")))
        self.failureResultOf(d, LookupTimeoutError)
        self.assertLess(sim.clock.seconds() - start, 5.1)


class PoisonedGetTests(SynchronousTestCase):
    """Issue 11 #12: a holder that announces a made-up newer value, or lies about a
    value's size or digest, cannot make a get fail."""

    def setUp(self) -> None:
        self.sim = Sim(seed=8)
        self.nodes = self.sim.add_many(30)
        self.sim.join_all()
        self.key = ids.key_for(b"poisoned")
        self.value = b"the real value" * 4
        self.publisher = self.nodes[4]
        self.successResultOf(self.sim.run(self.publisher.put(self.key, self.value)))
        by_distance = sorted(self.nodes, key=lambda n: ids.distance(n.key, self.key))
        self.liar = next(n for n in by_distance if n is not self.publisher)
        self.readers = [n for n in self.nodes if n is not self.liar]

    def lie(self, record: KVPRecord) -> None:
        """The liar announces ``record`` (newer than the real value) for the key."""
        real = self.liar.kvp_table.records_for_key
        self.liar.kvp_table.records_for_key = lambda k: (  # type: ignore[method-assign]
            [record] if k == self.key else real(k))

    def announced(self, reader: DHTNetwork) -> codec.ValueInfo | None:
        sl = self.successResultOf(self.sim.run(reader.find_value_shortlist(self.key)))
        return sl.get_common_kvp_exchange_info()

    def check_everyone_gets_the_value(self) -> None:
        for n in self.readers:
            self.assertEqual(self.successResultOf(self.sim.run(n.get(self.key))),
                             self.value, f"node {self.nodes.index(n)}")

    def test_made_up_index(self) -> None:
        fake = KVPRecord(self.key, ids.key_for(b"made up"), 10, self.sim.clock.seconds() + 100)
        self.lie(fake)
        # The attack: the newest announcement, the one a get used to fetch, is the lie.
        self.assertEqual(self.announced(self.nodes[20]).index, fake.index)
        # The defence: every node (the publisher too) still gets the real value.
        self.check_everyone_gets_the_value()
        self.assertEqual(self.successResultOf(self.sim.run(self.publisher.get(self.key))),
                         self.value)

    def test_lying_size(self) -> None:
        real = ids.key_for(self.value)
        self.lie(KVPRecord(self.key, real, len(self.value) + 7, self.sim.clock.seconds() + 100))
        self.assertEqual(self.announced(self.nodes[20]).size, len(self.value) + 7)
        self.check_everyone_gets_the_value()

    def test_lying_digest(self) -> None:
        # The liar holds bytes under an index they do not hash to, and serves them.
        wrong = ids.key_for(b"another value")
        ts = self.sim.clock.seconds() + 100
        self.liar.kvp_table.put(KVPRecord(self.key, wrong, 7, ts), b"garbage")
        self.assertEqual(self.announced(self.nodes[20]).index, wrong)
        self.check_everyone_gets_the_value()

    def test_fails_only_when_nobody_can_deliver(self) -> None:
        # Only the liar announces anything (no one else holds the key): not found.
        key = ids.key_for(b"only lies")
        self.liar.kvp_table.records_for_key = lambda k: (  # type: ignore[method-assign]
            [KVPRecord(key, ids.key_for(b"x"), 1, 5.0)] if k == key else [])
        f = self.failureResultOf(self.sim.run(self.nodes[20].get(key)), ValueNotFoundError)
        self.assertIn(key.hex(), str(f.value))
        self.assertIsNotNone(result_of(self.sim.run(self.liar.find_value_shortlist(key))))


class WideningTests(SynchronousTestCase):
    """A lookup from a region that never learned of the key's region (nodes that joined
    together and met only each other) asks nodes of farther buckets once."""

    def test_lookup_reaches_a_region_its_neighbours_do_not_know(self) -> None:
        sim = Sim(seed=9)
        rnd = random.Random(9)

        def node_id(prefix: int) -> bytes:  # an id whose first two bits are ``prefix``
            raw = bytearray(rnd.randbytes(20))
            raw[0] = (prefix << 6) | (raw[0] & 0x3F)
            return bytes(raw)

        asker = sim.add(node_id(0b11))
        region = [sim.add(node_id(0b11)) for _ in range(21)]  # more than k: far is out
        far = sim.add(node_id(0b00))
        others = [sim.add(node_id(0b10)) for _ in range(5)]
        key = node_id(0b10)
        for n in region + [far]:
            asker.routing_table.node_update(n.node)
        for n in region:
            for m in region + [asker]:
                if m is not n:
                    n.routing_table.node_update(m.node)
        for m in others:
            far.routing_table.node_update(m.node)
        sl = self.successResultOf(sim.run(asker.find_node_shortlist(key)))
        found = {n.key for n in sl.closest(5)}
        self.assertEqual(found, {n.key for n in others})
        self.assertEqual(sl.depth_of(far.node), 1)
        self.assertEqual(sl.depth_of(others[0].node), 2)


class UnreachableTests(SynchronousTestCase):
    """"Not found" (the closest nodes answered, none holds the key) and "unreachable"
    (the nodes that should hold it did not answer) are different errors: only the first
    is a ``KeyError``."""

    def setUp(self) -> None:
        self.sim = Sim(seed=5)
        self.nodes = self.sim.add_many(30, k=4)
        self.sim.join_all()

    def test_all_holders_cut_off_is_unreachable_not_absent(self) -> None:
        writer = self.nodes[3]
        self.assertGreaterEqual(self.successResultOf(self.sim.run(
            writer.put("held", b"v" * 64))), 3)
        key = ids.key_for(b"held")
        holders = {n.address[0] for n in self.nodes if n.kvp_table.records_for_key(key)}
        reader = next(n for n in self.nodes if n.address[0] not in holders)
        self.sim.net.blocked_hosts.update(holders)
        failure = self.failureResultOf(self.sim.run(reader.get("held")),
                                       ValueUnreachableError)
        self.assertNotIsInstance(failure.value, KeyError)

    def test_absent_key_with_a_node_down_is_not_found(self) -> None:
        reader = self.nodes[9]
        key = ids.key_for(b"never stored")
        closest = self.sim.closest(key, 1, exclude=[reader])[0]
        self.sim.net.blocked_hosts.add(closest.host)  # one of the closest is down
        failure = self.failureResultOf(self.sim.run(reader.get("never stored")),
                                       ValueNotFoundError)
        self.assertIsInstance(failure.value, KeyError)


class BugTests(SynchronousTestCase):
    """A bug in a lookup step ends the lookup with it (logged), instead of leaving the
    lookup's Deferred waiting forever."""

    def setUp(self) -> None:
        self.sim = Sim(seed=5)
        self.nodes = self.sim.add_many(10)
        self.sim.join_all()

    def test_step_that_raises(self) -> None:
        lookup = Lookup(self.nodes[0], TARGET)

        def broken(*a: Any, **kw: Any) -> None:
            raise ZeroDivisionError("a bug")

        from p2pnet.dht.shortlist import Shortlist
        d = lookup.run()  # asks its first nodes; their answers arrive to the bug
        self.patch(Shortlist, "add_nodes", broken)
        self.sim.settle(1.0)
        self.failureResultOf(d, ZeroDivisionError)
        self.assertTrue(self.flushLoggedErrors(ZeroDivisionError))

    def test_request_that_fails_unexpectedly(self) -> None:
        from twisted.internet import defer
        node = self.nodes[0]
        node.find_nodes_from_node = (  # type: ignore[method-assign]
            lambda n, k: defer.fail(KeyError("not the node's fault")))
        d = Lookup(node, TARGET).run()
        self.sim.settle(1.0)
        self.failureResultOf(d, KeyError)
        self.assertTrue(self.flushLoggedErrors(KeyError))
