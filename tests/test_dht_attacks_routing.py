"""Issue 11, routing-table attacks (#5 id takeover, #6 table flood, #7 self-blame): each
test first mounts the attack -- where a limit can be opened up, with it open, to show the
harm -- and then shows the defence under the default limits.

Everything runs on a :class:`~twisted.internet.task.Clock` and the in-memory network,
with ordinary (non-loopback) addresses, so the per-address and per-prefix limits bite.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.limits import Limits
from p2pnet.dht.network import DHTNetwork
from p2pnet.dht.protocol import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from p2pnet.models import Node
from tests.dhthelpers import Sim, key_near, result_of

GIVE_UP = (DEFAULT_RETRIES + 1) * DEFAULT_TIMEOUT

#: Limits with the routing defences opened up (as far as they can be): any number of
#: contacts per address and prefix, and a ping back for every request.
OPEN = Limits(routing_one_per_address=False, routing_max_per_prefix=10**6,
              routing_verify_interval=0.0, routing_verify_per_second=1e9,
              routing_verify_max=10**6, routing_checks_max=10**6)

#: Attacking nodes take no stores (so they hold nothing to hand over): quiet puppets.
PUPPET = Limits(store_max_records=0)

ATTACKER_IP = "10.66.0.1"


def joined_victim(limits: Limits | None = None, honest: int = 12, seed: int = 3
                  ) -> tuple[Sim, DHTNetwork, list[DHTNetwork]]:
    """A victim and ``honest`` nodes joined through it."""
    sim = Sim(seed=seed)
    victim = sim.add(limits=limits) if limits is not None else sim.add()
    others = sim.add_many(honest)
    for n in others:
        assert result_of(sim.run(n.join_network(victim.address))) is True
    sim.settle(5)
    return sim, victim, others


class IdTakeoverTests(SynchronousTestCase):
    """#5: one spoofed ping reusing a live node's id from a new address used to re-map
    that id at once, and the real node dropped out of the table."""

    def setUp(self) -> None:
        self.sim = Sim()
        self.a, self.b = self.sim.add_many(2)
        self.successResultOf(self.sim.run(self.b.ping_address(self.a.address)))
        self.sim.settle(1)
        self.real = self.a.routing_table.find(self.b.key)
        self.assertEqual(self.real.address, self.b.address)  # type: ignore[union-attr]
        # The attacker claims b's id from its own address and answers pings as b, so
        # the "proof of address" a ping back gives is no help here.
        self.evil = self.sim.add(node_id=self.b.key, host=ATTACKER_IP, limits=PUPPET)

    def attack(self) -> None:
        self.successResultOf(self.sim.run(self.evil.ping_address(self.a.address)))
        self.sim.settle(GIVE_UP + 1)

    def assert_real_node_kept(self) -> None:
        held = self.a.routing_table.find(self.b.key)
        self.assertIsNotNone(held)
        self.assertEqual(held.address, self.b.address)  # type: ignore[union-attr]
        answer = self.a.close_nodes_for(self.b.key)
        self.assertEqual([n.address for n in answer if n.key == self.b.key], [self.b.address])
        self.assertNotIn(ATTACKER_IP, {n.host for n in self.a.routing_table.nodes()})

    def test_takeover_of_a_fresh_contact(self) -> None:
        """b was heard from within the last minute: the claim is refused outright."""
        before = self.b.protocol.stats.requests_in
        self.attack()
        # a did ping the attacker back (that is how a requester gets in) ...
        self.assertGreaterEqual(self.evil.protocol.stats.requests_in, 1)
        # ... whose answer, as b, could not move b: b was not even asked.
        self.assert_real_node_kept()
        self.assertEqual(self.b.protocol.stats.requests_in, before)
        self.assertEqual(self.a.refused["routing_address_taken"], 1)

    def test_takeover_of_a_quiet_contact(self) -> None:
        """b was quiet for a while: a pings b's old address first; b answers and keeps
        its slot."""
        self.sim.settle(self.a.limits.routing_evict_ping_after + 1)
        before = self.b.protocol.stats.requests_in
        self.attack()
        self.assertEqual(self.b.protocol.stats.requests_in, before + 1)  # the check
        self.assert_real_node_kept()
        self.assertEqual(self.a.refused["routing_address_taken"], 1)
        # The attacker keeps trying: each try costs it a ping back at most once a minute.
        for _ in range(5):
            self.attack()
        self.assert_real_node_kept()

    def test_a_node_that_really_moved_takes_its_id_along(self) -> None:
        """The defence must not pin a moved node to its dead address: when the old
        address is silent, the id moves."""
        self.sim.settle(self.a.limits.routing_evict_ping_after + 1)
        self.sim.net.blocked_hosts.add(self.b.address[0])  # b's old address went away
        self.attack()  # (here the "attacker" is b at its new address)
        held = self.a.routing_table.find(self.b.key)
        self.assertEqual(held.address, self.evil.address)  # type: ignore[union-attr]


class TableFloodTests(SynchronousTestCase):
    """#6: 4,000 pings with crafted ids from one address grew the table from 1 to 3,125
    entries; 19 of 20 findnode answers were then the attacker's."""

    def flood_from_one_ip(self, limits: Limits | None, count: int = 120
                          ) -> tuple[Sim, DHTNetwork, list[DHTNetwork], bytes]:
        """``count`` puppets on one IP (many ports), ids crowding around a target key,
        each answering pings as itself; each pings the victim twice."""
        sim, victim, honest = joined_victim(limits)
        target = random.Random(7).randbytes(20)
        puppets = [sim.add(node_id=key_near(target, i + 1), host=ATTACKER_IP, port=5000 + i,
                           limits=PUPPET) for i in range(count)]
        for _ in range(2):
            for p in puppets:
                p.ping_address(victim.address)
                sim.settle(0.01)
        sim.settle(GIVE_UP + 1)
        return sim, victim, honest, target

    def attacker_entries(self, victim: DHTNetwork) -> int:
        return sum(1 for n in victim.routing_table.nodes() if n.host == ATTACKER_IP)

    def test_flood_from_one_address(self) -> None:
        # The attack, with the limits opened up: the attacker owns the target's bucket.
        sim, victim, honest, target = self.flood_from_one_ip(OPEN)
        # (the honest contacts already in that bucket answer the eviction pings and stay)
        self.assertGreaterEqual(self.attacker_entries(victim), victim.k - 3)
        answer = victim.close_nodes_for(target)
        self.assertGreaterEqual(sum(1 for n in answer if n.host == ATTACKER_IP), victim.k - 3)
        # The defence: one contact for the address, one attacker node in the answer.
        sim, victim, honest, target = self.flood_from_one_ip(None)
        self.assertEqual(self.attacker_entries(victim), 1)
        answer = victim.close_nodes_for(target)
        self.assertEqual(sum(1 for n in answer if n.host == ATTACKER_IP), 1)
        for n in honest:
            self.assertIn(n.node, victim.routing_table)
        # ... and a newcomer joining through the victim gets in.
        newcomer = sim.add()
        self.assertTrue(self.successResultOf(sim.run(newcomer.join_network(victim.address))))
        sim.settle(5)
        self.assertIn(newcomer.node, victim.routing_table)
        self.assertIn(victim.node, newcomer.routing_table)

    def test_flood_from_one_prefix(self) -> None:
        """Many IPs of one /24: a few per bucket."""
        def flood(limits: Limits | None) -> tuple[DHTNetwork, bytes]:
            sim, victim, honest = joined_victim(limits)
            target = random.Random(8).randbytes(20)
            puppets = [sim.add(node_id=key_near(target, i + 1), host=f"10.66.0.{i + 1}",
                               limits=PUPPET) for i in range(60)]
            for p in puppets:
                p.ping_address(victim.address)
                sim.settle(0.01)
            sim.settle(GIVE_UP + 1)
            return victim, target

        victim, target = flood(OPEN)
        ours = [n for n in victim.routing_table.nodes() if n.host.startswith("10.66.0.")]
        self.assertGreaterEqual(len(ours), victim.k - 3)
        victim, target = flood(None)
        ours = [n for n in victim.routing_table.nodes() if n.host.startswith("10.66.0.")]
        self.assertEqual(len(ours), victim.limits.routing_max_per_prefix)
        self.assertGreater(victim.refused["routing_prefix_full"], 0)

    def test_spoofed_requests_never_enter(self) -> None:
        """4,000 pings with crafted ids from addresses that never answer (forged
        sources): nothing enters the table, the ping backs are bounded."""
        sim, victim, honest = joined_victim(honest=4)
        before = victim.routing_table.num_contacts
        sent_before = victim.protocol.stats.requests_out
        rnd = random.Random(11)
        for i in range(4000):
            data = codec.encode(b"p2pnet", rnd.randbytes(codec.TID_BYTES), rnd.randbytes(20),
                                codec.PingRequest())
            victim.protocol.datagramReceived(data, (f"10.{77 + i // 60_000}.{i // 250 % 240}"
                                                    f".{i % 250 + 1}", 6000 + i % 3))
            if i % 100 == 99:
                sim.settle(0.1)
        sim.settle(GIVE_UP + 1)
        self.assertEqual(victim.routing_table.num_contacts, before)
        sizes = victim.contacts.sizes()
        self.assertLessEqual(sizes["verified"], victim.limits.routing_verify_recent_max)
        self.assertEqual(sizes["verifying"], 0)
        pings_back = victim.protocol.stats.requests_out - sent_before
        # 4 s of flood at 100 ping backs a second (burst 100), no retries
        self.assertLessEqual(pings_back, 100 + 100 * 4 + 10)
        self.assertGreater(victim.refused["routing_verify_rate"]
                           + victim.refused["routing_verify_busy"], 0)
        # The same flood from ONE forged address: one ping back.
        sent_before = victim.protocol.stats.requests_out
        for _ in range(4000):
            data = codec.encode(b"p2pnet", rnd.randbytes(codec.TID_BYTES), rnd.randbytes(20),
                                codec.PingRequest())
            victim.protocol.datagramReceived(data, ("10.99.0.1", 6000))
        sim.settle(GIVE_UP + 1)
        self.assertEqual(victim.protocol.stats.requests_out - sent_before, 1)
        self.assertEqual(victim.routing_table.num_contacts, before)


class SelfBlameTests(SynchronousTestCase):
    """#7: three local ValueErrors from a bad key evicted a healthy contact that never
    saw a request."""

    def setUp(self) -> None:
        self.sim = Sim()
        self.a, self.b = self.sim.add_many(2)
        self.successResultOf(self.sim.run(self.a.ping_address(self.b.address)))
        self.sim.settle(1)
        self.assertIn(self.b.node, self.a.routing_table)

    def test_timeouts_count(self) -> None:
        """The rule bites where it should: three timeouts make b stale."""
        self.sim.net.blocked_hosts.add(self.b.address[0])
        for _ in range(self.a.limits.routing_stale_after):
            self.assertIs(self.successResultOf(self.sim.run(self.a.ping_node(self.b.node))),
                          False)
        self.assertNotIn(self.b.node, self.a.routing_table)

    def test_local_errors_do_not_count(self) -> None:
        before = self.b.protocol.stats.requests_in
        key = ids.key_for(b"k")
        for _ in range(self.a.limits.routing_stale_after + 2):
            # a bad index: the request does not even encode (a ValueError of ours)
            self.assertIs(self.successResultOf(self.sim.run(
                self.a.store_to_node(self.b.node, key, b"short", b"v", 1.0))), False)
            self.assertRaises(ValueError, self.a.find_value_from_node, self.b.node, key,
                              b"bad")
        self.assertEqual(self.a.contacts.failures(self.b.key), 0)
        self.assertEqual(self.b.protocol.stats.requests_in, before)  # b never saw any
        # a stopped protocol: ProtocolStoppedError, ours too
        self.a.protocol.stopProtocol()
        for _ in range(self.a.limits.routing_stale_after + 2):
            self.assertIs(self.successResultOf(self.sim.run(self.a.ping_node(self.b.node))),
                          False)
        self.assertEqual(self.a.contacts.failures(self.b.key), 0)
        self.assertIn(self.b.node, self.a.routing_table)

    def test_error_answers_do_not_count(self) -> None:
        """A node that answers with an error is alive (a refused store is no fault)."""
        wrong = ids.key_for(b"not the value's hash")
        for _ in range(self.a.limits.routing_stale_after + 1):
            self.assertIs(self.successResultOf(self.sim.run(
                self.a.store_to_node(self.b.node, self.a.key, wrong, b"value", 1.0))), False)
        self.assertIn(self.b.node, self.a.routing_table)


class HostileTrafficTests(SynchronousTestCase):
    """Random well-formed but hostile messages -- requests and unsolicited answers with
    any id, from addresses that never answer -- sent to a joined node: it still answers,
    its contact maps stay within their bounds, and its routing table holds no contact
    that has not answered it."""

    @settings(max_examples=25)
    @given(st.lists(st.tuples(
        st.sampled_from(["ping", "findnode", "findval", "pong", "nodes"]),
        st.binary(min_size=20, max_size=20), st.integers(0, 3), st.integers(0, 255),
        st.integers(1, 65535)), min_size=1, max_size=150))
    def test_hostile_messages(self, messages: list[tuple[str, bytes, int, int, int]]) -> None:
        sim, victim, honest = joined_victim(honest=6)
        contacts = {(n.key, n.address) for n in [*honest]}
        bodies: dict[str, Any] = {
            "ping": codec.PingRequest(), "findnode": None, "findval": None,
            "pong": codec.PingResponse(), "nodes": None}
        for kind, sender, net_a, net_b, port in messages:
            body = bodies[kind]
            if kind == "findnode":
                body = codec.FindNodeRequest(sender)
            elif kind == "findval":
                body = codec.FindValueRequest(sender, None)
            elif kind == "nodes":
                body = codec.NodesResponse((Node(sender, f"10.{200 + net_a}.{net_b}.9", port),))
            data = codec.encode(b"p2pnet", sender[:codec.TID_BYTES], sender, body)
            victim.protocol.datagramReceived(data, (f"10.{200 + net_a}.{net_b}.1", port))
            sim.settle(0.01)
        sim.settle(GIVE_UP + 1)
        for n in victim.routing_table.nodes():
            self.assertIn((n.key, n.address), contacts)
        sizes = victim.contacts.sizes()
        limits = victim.limits
        self.assertLessEqual(sizes["verified"], limits.routing_verify_recent_max)
        self.assertEqual(sizes["verifying"], 0)
        self.assertEqual(sizes["checking"], 0)
        self.assertLessEqual(sizes["failures"], limits.routing_failures_max)
        for bucket in victim.routing_table.buckets:
            self.assertLessEqual(len(bucket), victim.k)
            self.assertLessEqual(len(bucket.replacements), limits.routing_replacements)
        self.assertTrue(self.successResultOf(sim.run(honest[0].ping_node(victim.node))))
