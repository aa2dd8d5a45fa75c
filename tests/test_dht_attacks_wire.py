"""Trial tests of the wire-level attacks of issue 11 (#4, #13, #14, #16).

Each test first shows the attack -- against the node with that defence turned off where a
limit can be turned off, or by showing what the attacker's datagrams hold -- and then the
defence.  Everything but the datagram-size tests runs on the in-memory network, where an
attacker can forge source addresses (:meth:`MemoryNetwork.send`) and observers count the
bytes a victim receives.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from p2pnet import ids
from p2pnet.dht import codec, rpcs
from p2pnet.dht.limits import Limits
from p2pnet.dht.network import DHTNetwork
from p2pnet.dht.protocol import DHTProtocol, tune_udp_port
from p2pnet.dht.ratelimit import RATE_LIMITED_GLOBAL, RATE_LIMITED_PREFIX, RATE_LIMITED_SOURCE
from p2pnet.dht.table import KVPRecord
from p2pnet.models import Node
from tests.dhthelpers import Sim, result_of

NETID = b"p2pnet"
ATTACKER = ("198.18.0.66", 6666)   # a public-looking address (benchmarking range)
VICTIM = ("198.18.7.7", 7777)      # a third party the attacker aims at
TID = b"\x07" * codec.TID_BYTES


class Raw(DatagramProtocol):
    """An endpoint that records what it receives and can answer with crafted bytes."""

    def __init__(self, key: bytes = b"\xee" * 20) -> None:
        self.key = key
        self.received: list[tuple[bytes, Any]] = []
        self.answer: Any = None  # callable(msg) -> bytes to send back, or None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))
        if self.answer is not None:
            try:
                msg = codec.decode(data)
            except Exception:
                return
            out = self.answer(msg)
            if out is not None:
                self.transport.write(out, addr)  # type: ignore[union-attr]


def node_entry(key: bytes, host: str, port: int) -> bytes:
    packed = ipaddress.ip_address(host).packed
    return key + bytes((4 if len(packed) == 4 else 6,)) + packed + struct.pack("!H", port)


def raw_nodes_answer(msg: codec.Message, sender: bytes, entries: list[bytes]) -> bytes:
    head = codec.encode(NETID, msg.tid, sender, codec.NodesResponse(()), msg.rpc)
    prefix = b"\x00" if msg.rpc == codec.RPC.FIND_VALUE else b""
    # replace the empty list (its count byte) by the crafted entries
    return head[: len(head) - 1 - len(prefix)] + prefix + bytes((len(entries),)) + b"".join(
        entries)


class BogusContactTests(SynchronousTestCase):
    """#4: node lists holding unreachable addresses, our own id, the other family."""

    def test_bogus_contacts_dropped_counted_never_contacted(self) -> None:
        sim = Sim()
        victim = sim.add()
        honest = sim.add()
        attacker = Raw()
        sim.net.attach(attacker, *ATTACKER)
        bogus = [
            node_entry(b"\x01" * 20, "0.0.0.0", 4000),           # unspecified
            node_entry(b"\x02" * 20, "255.255.255.255", 4000),   # broadcast
            node_entry(b"\x03" * 20, "224.0.0.251", 5353),       # multicast
            node_entry(b"\x04" * 20, "240.1.2.3", 4000),         # reserved
            node_entry(b"\x05" * 20, "10.0.0.9", 0),             # port 0
            node_entry(victim.key, "10.0.0.10", 4000),           # the victim's own id
            node_entry(b"\x06" * 20, "2001:db8::1", 4000),       # IPv6 on an IPv4 socket
            node_entry(b"\x07" * 20, "::ffff:10.0.0.11", 4000),  # IPv4-mapped
            node_entry(b"\x08" * 20, "127.0.0.1", 22),           # loopback, named from afar
        ]
        good = node_entry(honest.key, *honest.address)
        attacker.answer = lambda m: raw_nodes_answer(m, attacker.key, bogus + [good])
        contacted: list[tuple[str, int]] = []
        sim.net.observers.append(
            lambda src, dst, data: contacted.append(dst) if src == victim.address else None)

        # The attack: the answer really names every bogus contact.
        raw = raw_nodes_answer(codec.decode(codec.encode(
            NETID, TID, victim.key, codec.FindNodeRequest(victim.key))), attacker.key,
            bogus + [good])
        self.assertEqual(raw[-(len(good) + len(b"".join(bogus))) - 1], len(bogus) + 1)

        # The defence: the lookup goes through the attacker and reaches only real nodes.
        found = result_of(sim.run(victim.find_nodes_from_node(
            Node(attacker.key, *ATTACKER), victim.key)))
        self.assertEqual(list(found), [honest.node])
        self.assertEqual(victim.refused["bogus_contact"], len(bogus))
        self.assertEqual(victim.protocol.stats.bogus_contacts, len(bogus))
        self.assertEqual(victim.protocol.stats.malformed, 0)
        sl = result_of(sim.run(victim.find_node_shortlist(victim.key)))
        self.assertIsNotNone(sl)
        self.assertLessEqual(set(contacted), {ATTACKER, honest.address})

    def test_loopback_contacts_kept_on_a_loopback_network(self) -> None:
        """127.0.0.1 contacts named by a loopback sender are real nodes (local networks)."""
        sim = Sim()
        a = sim.add(host="127.0.0.1", port=4001)
        b = sim.add(host="127.0.0.1", port=4002)
        c = sim.add(host="127.0.0.1", port=4003)
        result_of(sim.run(c.ping_address(b.address)))
        found = result_of(sim.run(a.find_nodes_from_node(b.node, a.key)))
        self.assertIn(c.node, list(found))
        self.assertEqual(a.refused["bogus_contact"], 0)

    def test_hostnames_are_not_a_wire_form(self) -> None:
        """Version 1 carried host strings; such a datagram is malformed now."""
        sim = Sim()
        victim = sim.add()
        v1 = (bytes((1, len(NETID))) + NETID + bytes((1, 2)) + TID + b"\xee" * 20 + b"\x01"
              + b"\x01" * 20 + struct.pack("!HB", 80, 11) + b"example.com")
        sim.net.send(ATTACKER, victim.address, v1)
        sim.settle(1)
        self.assertEqual(victim.protocol.stats.malformed, 1)


class AmplificationTests(SynchronousTestCase):
    """#13: forged requests must not turn a node into an amplifier."""

    def setUp(self) -> None:
        self.sim = Sim()

    def holder(self, limits: Limits) -> tuple[DHTNetwork, bytes, bytes]:
        """A node (with 20 contacts) that holds a 60 KiB value and 40 values of one key."""
        node = self.sim.add(limits=limits)
        for peer in self.sim.add_many(20):
            result_of(self.sim.run(peer.ping_address(node.address)))
        value = os.urandom(60 * 1024)
        key, index = b"\x42" * 20, ids.key_for(value)
        now = self.sim.clock.seconds()
        result_of(self.sim.run(node.kvp_table.put(KVPRecord(key, index, len(value), now),
                                                  value)))
        many = b"\x43" * 20
        for i in range(40):
            v = b"v%d" % i
            result_of(self.sim.run(node.kvp_table.put(
                KVPRecord(many, ids.key_for(v), len(v), now + i), v)))
        return node, key, index

    def reflect(self, node: DHTNetwork, requests: list[codec.Body]) -> dict[str, float]:
        """Send each request with VICTIM's address forged; bytes the victim got / sent."""
        got: dict[tuple[str, int], int] = {}
        self.sim.net.observers.append(
            lambda src, dst, data: got.__setitem__(dst, got.get(dst, 0) + len(data)))
        ratios = {}
        for body in requests:
            got.clear()
            data = codec.encode(NETID, TID, b"\xee" * 20, body)
            self.sim.net.send(VICTIM, node.address, data)
            self.sim.settle(0.1)
            ratios[type(body).__name__] = got.get(VICTIM, 0) / len(data)
        self.sim.net.observers.clear()
        return ratios

    def requests(self, key: bytes, index: bytes) -> list[codec.Body]:
        return [codec.PingRequest(), codec.FindNodeRequest(b"\x00" * 20),
                codec.FindValueRequest(b"\x43" * 20), codec.FindValueRequest(b"\x00" * 20),
                codec.GetValueRequest(key, index, 0, 60 * 1024),
                codec.StoreRequest(key, b"\x01" * 20, 10, 1.0)]

    def test_forged_requests_answer_at_most_three_times(self) -> None:
        # The attack, with the bound off: getval answers 700x, findval and findnode > 3x.
        open_node, key, index = self.holder(Limits(answer_amplification=0))
        before = self.reflect(open_node, self.requests(key, index))
        self.assertGreater(before["GetValueRequest"], 500)
        self.assertGreater(before["FindNodeRequest"], 3)
        self.assertGreater(max(before.values()), 3)
        # The defence: every answer to the forged address is at most 3x its request.
        node, key, index = self.holder(Limits())
        after = self.reflect(node, self.requests(key, index))
        for name, ratio in after.items():
            self.assertLessEqual(ratio, 3.0, name)
        self.assertGreater(node.refused["unproven_refused"], 0)  # getval
        self.assertGreater(node.refused["unproven_cut"], 0)      # findnode, findval

    def test_proven_requester_gets_whole_answers(self) -> None:
        """An honest node without a token still gets its value: the first getval is
        answered UNPROVEN with a token, and the protocol asks again with it."""
        node, key, index = self.holder(Limits())
        stranger = self.sim.add()
        got = result_of(self.sim.run(stranger.get_value_rpc.fetch(node.address, key, index)))
        self.assertEqual(len(got), 60 * 1024)
        self.assertEqual(ids.key_for(got), index)
        self.assertEqual(stranger.protocol.stats.proof_retries, 1)
        # With the token held, no more retries.
        result_of(self.sim.run(stranger.get_value_rpc.fetch(node.address, key, index)))
        self.assertEqual(stranger.protocol.stats.proof_retries, 1)

    def test_padded_findnode_gets_a_full_list(self) -> None:
        """A findnode without a token is padded so 20 contacts fit 3x its size."""
        node, _, _ = self.holder(Limits())
        stranger = self.sim.add()
        found = result_of(self.sim.run(stranger.find_nodes_from_node(node.node, b"\x00" * 20)))
        self.assertEqual(len(found), 20)
        self.assertEqual(node.refused["unproven_cut"], 0)

    def test_address_that_answered_us_is_proven(self) -> None:
        node, key, index = self.holder(Limits())
        peer = self.sim.add()
        result_of(self.sim.run(node.ping_address(peer.address)))  # peer answered node
        # A request from peer without any token: still answered in full.
        data = codec.encode(NETID, TID, peer.key, codec.GetValueRequest(key, index, 0, 4096))
        seen: list[bytes] = []
        self.sim.net.observers.append(
            lambda src, dst, d: seen.append(d) if dst == peer.address else None)
        self.sim.net.send(peer.address, node.address, data)
        self.sim.settle(0.1)
        self.assertEqual(len(seen), 1)
        self.assertIsInstance(codec.decode(seen[0]).body, codec.GetValueResponse)

    def test_token_bound_to_the_ip_and_rotates(self) -> None:
        node, key, index = self.holder(Limits(token_rotate_seconds=100))
        proof = node.protocol.proof
        token = proof.token_for("203.0.113.5")
        self.assertTrue(proof.valid("203.0.113.5", token))
        self.assertFalse(proof.valid("203.0.113.6", token))
        self.sim.clock.advance(150)   # one rotation: the previous secret still counts
        self.assertTrue(proof.valid("203.0.113.5", token))
        self.sim.clock.advance(100)   # two: the token is stale
        self.assertFalse(proof.valid("203.0.113.5", token))


class RequestFloodTests(SynchronousTestCase):
    """#14: a flood from one address (or one prefix) slows that address only."""

    def flood(self, limits: Limits, sources: list[tuple[str, int]], per_source: int,
              honest_pings: int = 20) -> tuple[DHTNetwork, int, int]:
        """Every source sends ``per_source`` pings within one second while an honest
        node pings the target; returns (target, attacker answers, honest answers)."""
        sim = Sim()
        target = sim.add(limits=limits)
        honest = sim.add(host="192.0.2.200")
        answers: dict[str, int] = {"attack": 0}
        attack_hosts = set(sources)

        def count(src: Any, dst: Any, data: bytes) -> None:
            if src == target.address and dst in attack_hosts and \
                    codec.decode(data).kind is not codec.Kind.REQUEST:
                answers["attack"] += 1

        sim.net.observers.append(count)
        ping = codec.encode(NETID, TID, b"\xee" * 20, codec.PingRequest())
        step = 1.0 / per_source
        honest_results: list[Any] = []
        for i in range(per_source):
            for s in sources:
                sim.net.send(s, target.address, ping)
            if honest_pings and i % max(1, per_source // honest_pings) == 0 \
                    and len(honest_results) < honest_pings:
                honest_results.append(honest.ping_address(target.address))
            sim.clock.advance(step)
        sim.settle(5)
        ok = sum(1 for d in honest_results if result_of(d) is not False)
        return target, answers["attack"], ok

    def test_one_address_flood(self) -> None:
        off = Limits(rate_per_source=0, rate_per_prefix=0, rate_global=0)
        target, answered, honest = self.flood(off, [ATTACKER], 2000)
        self.assertEqual(answered, 2000)  # the attack: every request costs an answer
        self.assertEqual(honest, 20)
        target, answered, honest = self.flood(Limits(), [ATTACKER], 2000)
        limits = Limits()
        self.assertLessEqual(answered, limits.rate_per_source_burst + limits.rate_per_source + 1)
        self.assertEqual(honest, 20)  # the honest node is not slowed
        self.assertGreater(target.refused[RATE_LIMITED_SOURCE], 1500)
        self.assertEqual(target.refused[RATE_LIMITED_GLOBAL], 0)

    def test_prefix_flood(self) -> None:
        """Many addresses of one /24, each under its own limit: the prefix bucket bites."""
        sources = [(f"93.184.5.{i}", 4000) for i in range(1, 41)]  # one public /24
        limits = Limits()
        target, answered, honest = self.flood(limits, sources, 80)
        self.assertGreater(target.refused[RATE_LIMITED_PREFIX], 0)
        self.assertEqual(target.refused[RATE_LIMITED_SOURCE], 0)
        self.assertLessEqual(answered, limits.rate_per_prefix_burst + limits.rate_per_prefix + 1)
        self.assertEqual(honest, 20)

    def test_global_bucket(self) -> None:
        limits = Limits(rate_global=100, rate_global_burst=100)
        sources = [(f"93.184.{i}.1", 4000) for i in range(1, 11)]
        target, answered, _ = self.flood(limits, sources, 50, honest_pings=0)
        self.assertGreater(target.refused[RATE_LIMITED_GLOBAL], 0)
        self.assertLessEqual(answered, 201)

    def test_loopback_network_not_one_address(self) -> None:
        """1,000 nodes on 127.0.0.1 (distinct ports) send 3,000 requests within a quarter
        of a second -- 15 times one address's burst: nothing is refused under the default
        limits, since loopback sources key on address and port."""
        sim = Sim()
        target = sim.add(host="127.0.0.1", port=4000)
        ping = codec.encode(NETID, TID, b"\xee" * 20, codec.PingRequest())
        for _ in range(3):
            for first in range(5000, 6000, 100):
                for port in range(first, first + 100):
                    sim.net.send(("127.0.0.1", port), target.address, ping)
                sim.settle(0.008)
        self.assertEqual(target.protocol.stats.requests_in, 3000)
        self.assertEqual(sum(v for k, v in target.refused.items()
                             if k.startswith("rate_limited")), 0)


class CostlyFloodTests(SynchronousTestCase):
    """#14: many addresses in many prefixes, each under its own limit, flood stores; the
    global bucket, charged by each request's cost, bites, and cheap requests still pass."""

    def test_store_flood_from_many_prefixes(self) -> None:
        limits = Limits()
        sim = Sim()
        target = sim.add(host="192.0.2.1", limits=limits)
        # an honest client that retries quickly (three tries within the flood)
        honest = sim.add(host="198.51.100.7", timeout=0.1, retries=2)
        sources = [(f"93.{i}.7.1", 5000) for i in range(100)]  # 100 public /24s
        per_source = 80  # stores a second each, under rate_per_source (100)
        self.assertLess(per_source, limits.rate_per_source)
        seconds = 2.0
        held = os.urandom(20)
        result_of(sim.run(target.kvp_table.put(KVPRecord(held, ids.key_for(b"v"), 1, 0.0), b"v")))
        rng = 0
        pings: list[Any] = []
        gets: list[Any] = []
        step = 1.0 / per_source
        for tick in range(int(seconds * per_source)):
            # each source's store in its own tenth of the tick, as a real flood spreads
            for part in range(10):
                for src in sources[part::10]:
                    rng += 1
                    body = codec.StoreRequest(rng.to_bytes(20, "big"), ids.key_for(b""), 0,
                                              sim.clock.seconds(), b"")
                    sim.net.send(src, target.address,
                                 codec.encode(NETID, rng.to_bytes(8, "big"), b"\xee" * 20,
                                              body))
                if part == 5 and tick >= per_source // 2 and tick % 2 == 0:
                    # the second half of the flood, past the global burst
                    pings.append(honest.ping_address(target.address))
                    gets.append(honest.find_value_from_node(target.node, held))
                sim.clock.advance(step / 10)
        stores = len(sources) * int(seconds * per_source)
        sim.settle(2)
        self.assertEqual(target.refused[RATE_LIMITED_SOURCE], 0)
        self.assertEqual(target.refused[RATE_LIMITED_PREFIX], 0)
        # the flood (8,000 stores/s) is below the old request-counting global limit
        # (10,000/s) but far above the work the node can do: the global bucket bites
        self.assertGreater(target.refused[RATE_LIMITED_GLOBAL], stores // 10)
        handled = target.protocol.stats.requests_in
        weight = limits.rate_weight_store
        self.assertLessEqual(handled * weight,
                             limits.rate_global_burst + limits.rate_global * (seconds + 2.1)
                             + weight * (len(pings) + len(gets)))
        ok_pings = sum(1 for d in pings if result_of(d) is not False)
        ok_gets = sum(1 for d in gets if result_of(d) is not None)
        self.assertEqual(len(pings), 60)
        self.assertGreaterEqual(ok_pings, 0.9 * len(pings))
        self.assertGreaterEqual(ok_gets, 0.75 * len(gets))


class _Sink(DatagramProtocol):
    def __init__(self) -> None:
        self.got: defer.Deferred[bytes] = defer.Deferred()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.got.called:
            self.got.callback(data)


class DatagramSizeTests(TestCase):
    """#16: Twisted reads 8,192 bytes per datagram unless told; real loopback UDP."""

    def listen(self, proto: Any, tune: bool) -> Any:
        port = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        if tune:
            tune_udp_port(port)
        return port

    async def test_largest_datagram_arrives_whole(self) -> None:
        big = codec.encode(NETID, TID, b"\xee" * 20, codec.GetValueResponse(
            10**6, 0, b"x" * (codec.MAX_DATAGRAM - 100)))
        big = big + b"x" * (codec.MAX_DATAGRAM - len(big))  # exactly the codec's maximum
        self.assertEqual(len(big), codec.MAX_DATAGRAM)
        self.assertEqual(len(codec.decode(big).body.data), len(big) - 47)  # type: ignore
        for tune, expected in [(False, 8192), (True, codec.MAX_DATAGRAM)]:
            sink = _Sink()
            port = self.listen(sink, tune)
            sender = self.listen(DatagramProtocol(), False)
            sender.write(big, ("127.0.0.1", port.getHost().port))
            data = await sink.got.addTimeout(5, reactor)
            # the attack (untuned): cut to 8,192 bytes; the defence: whole
            self.assertEqual(len(data), expected)

    async def test_largest_chunk_between_two_nodes(self) -> None:
        """A getval answer with the largest chunk both ends send and accept."""
        a, b = DHTNetwork(reactor), DHTNetwork(reactor)
        self.listen(a.protocol, True)
        pb = self.listen(b.protocol, True)
        value = os.urandom(200_000)
        key, index = b"\x42" * 20, ids.key_for(value)
        b.offer(key, index, value)
        await b.ping_address(a.address)  # a answered b: b answers a in full
        answer = await a.get_value_rpc.call(b.address, key, index, 0, rpcs.MAX_CHUNK)
        self.assertEqual(len(answer.data), rpcs.MAX_CHUNK)
        self.assertEqual(answer.data, value[:rpcs.MAX_CHUNK])
        self.assertEqual(b.protocol.stats.datagrams_out, a.protocol.stats.datagrams_in)
        self.assertEqual(a.protocol.stats.malformed, 0)
        self.assertGreater(tune_udp_port(pb), 0)


class ProtocolUnitTests(SynchronousTestCase):
    """The protocol's refusal counter is the node's."""

    def test_shared_counter(self) -> None:
        sim = Sim()
        node = sim.add()
        self.assertIs(node.protocol.refused, node.refused)
        self.assertIs(node.protocol.limits, node.limits)
        bare = DHTProtocol(b"\x01" * 20, NETID, object(), sim.clock)
        self.assertEqual(bare.limits, Limits())
