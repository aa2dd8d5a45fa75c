"""Tests for :mod:`p2pnet.sim.memory`: the in-memory datagram network on a clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.sim.memory import MemoryDatagramTransport, MemoryNetwork

A = ("10.0.0.1", 1000)
B = ("10.0.0.2", 2000)
C = ("10.0.0.3", 3000)


class Recorder(DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []
        self.started = 0
        self.stopped = 0

    def startProtocol(self) -> None:
        self.started += 1

    def stopProtocol(self) -> None:
        self.stopped += 1

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))


class Echo(Recorder):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        super().datagramReceived(datagram, addr)
        self.transport.write(datagram, addr)


class MemoryNetworkMixin:
    latency = 0.001

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.net = MemoryNetwork(self.clock, latency=self.latency)
        self.a, self.b = Recorder(), Recorder()
        self.ta = self.net.attach(self.a, *A)
        self.tb = self.net.attach(self.b, *B)


class DeliveryTests(MemoryNetworkMixin, SynchronousTestCase):
    def test_attach_starts_protocol(self) -> None:
        self.assertIsInstance(self.ta, MemoryDatagramTransport)
        self.assertIs(self.a.transport, self.ta)
        self.assertEqual(self.a.started, 1)
        self.assertEqual(self.ta.getHost(), IPv4Address("UDP", *A))

    def test_delivery_after_latency(self) -> None:
        self.ta.write(b"hello", B)
        self.assertEqual(self.b.received, [])
        self.clock.advance(self.latency / 2)
        self.assertEqual(self.b.received, [])
        self.clock.advance(self.latency / 2)
        self.assertEqual(self.b.received, [(b"hello", A)])
        self.assertEqual((self.net.sent, self.net.delivered, self.net.bytes_sent), (1, 1, 5))

    def test_order_kept(self) -> None:
        for i in range(10):
            self.ta.write(bytes([i]), B)
        self.clock.advance(self.latency)
        self.assertEqual([d for d, _ in self.b.received], [bytes([i]) for i in range(10)])

    def test_latency_configurable(self) -> None:
        self.net.latency = 0.25
        self.ta.write(b"slow", B)
        self.clock.advance(0.249)
        self.assertEqual(self.b.received, [])
        self.clock.advance(0.001)
        self.assertEqual(len(self.b.received), 1)

    def test_round_trip(self) -> None:
        echo = Echo()
        self.net.attach(echo, *C)
        self.ta.write(b"ping", C)
        self.clock.advance(self.latency)
        self.assertEqual(self.a.received, [])
        self.clock.advance(self.latency)
        self.assertEqual(self.a.received, [(b"ping", C)])

    def test_unbound_address_drops(self) -> None:
        self.ta.write(b"nobody", ("10.9.9.9", 1))
        self.clock.advance(1)
        self.assertEqual((self.net.sent, self.net.delivered), (1, 0))

    def test_bytes_only(self) -> None:
        self.assertRaises(TypeError, self.ta.write, "text", B)
        self.assertRaises(TypeError, self.ta.write, bytearray(b"x"), B)
        self.assertEqual(self.net.sent, 0)

    def test_address_given_as_list(self) -> None:
        self.ta.write(b"x", ["10.0.0.2", 2000])  # type: ignore[arg-type]
        self.clock.advance(1)
        self.assertEqual(self.b.received, [(b"x", A)])


class LossTests(SynchronousTestCase):
    def deliveries(self, seed: int, loss: float = 0.3, count: int = 1000) -> list[int]:
        clock = task.Clock()
        net = MemoryNetwork(clock, loss=loss, seed=seed)
        a, b = Recorder(), Recorder()
        ta = net.attach(a, *A)
        net.attach(b, *B)
        for i in range(count):
            ta.write(i.to_bytes(2, "big"), B)
        clock.advance(1)
        self.assertEqual(net.sent, count)
        self.assertEqual(net.delivered, len(b.received))
        return [int.from_bytes(d, "big") for d, _ in b.received]

    def test_loss_rate(self) -> None:
        got = self.deliveries(seed=1)
        self.assertTrue(600 <= len(got) <= 800, len(got))

    def test_loss_is_seeded(self) -> None:
        self.assertEqual(self.deliveries(seed=7), self.deliveries(seed=7))
        self.assertNotEqual(self.deliveries(seed=7), self.deliveries(seed=8))

    def test_no_loss(self) -> None:
        self.assertEqual(self.deliveries(seed=1, loss=0.0, count=100), list(range(100)))

    def test_total_loss(self) -> None:
        self.assertEqual(self.deliveries(seed=1, loss=1.0, count=100), [])


class PartitionTests(MemoryNetworkMixin, SynchronousTestCase):
    def test_blocked_receiver(self) -> None:
        self.net.blocked_hosts.add(B[0])
        self.ta.write(b"x", B)
        self.clock.advance(1)
        self.assertEqual(self.b.received, [])

    def test_blocked_sender(self) -> None:
        self.net.blocked_hosts.add(A[0])
        self.ta.write(b"x", B)
        self.tb.write(b"y", A)
        self.clock.advance(1)
        self.assertEqual((self.a.received, self.b.received), ([], []))

    def test_others_unaffected(self) -> None:
        c = Recorder()
        self.net.attach(c, *C)
        self.net.blocked_hosts.add(B[0])
        self.ta.write(b"to c", C)
        self.clock.advance(1)
        self.assertEqual(c.received, [(b"to c", A)])

    def test_in_flight_datagram_dropped_and_unblock(self) -> None:
        self.ta.write(b"in flight", B)
        self.net.blocked_hosts.add(B[0])  # cut off while the datagram travels
        self.clock.advance(1)
        self.assertEqual(self.b.received, [])
        self.net.blocked_hosts.discard(B[0])
        self.ta.write(b"after", B)
        self.clock.advance(1)
        self.assertEqual(self.b.received, [(b"after", A)])

    def test_whole_host_blocked(self) -> None:
        other_port = Recorder()
        self.net.attach(other_port, B[0], 2001)
        self.net.blocked_hosts.add(B[0])
        self.ta.write(b"x", (B[0], 2001))
        self.clock.advance(1)
        self.assertEqual(other_port.received, [])


class DetachTests(MemoryNetworkMixin, SynchronousTestCase):
    def test_stop_listening(self) -> None:
        d = self.tb.stopListening()
        self.successResultOf(d)
        self.assertEqual(self.b.stopped, 1)
        self.assertIsNone(self.b.transport)
        self.assertFalse(self.tb.connected)
        self.assertNotIn(B, self.net.endpoints)
        self.ta.write(b"to the void", B)
        self.clock.advance(1)
        self.assertEqual(self.b.received, [])

    def test_stop_listening_twice(self) -> None:
        self.successResultOf(self.tb.stopListening())
        self.successResultOf(self.tb.stopListening())
        self.assertEqual(self.b.stopped, 1)

    def test_lose_connection_alias(self) -> None:
        self.tb.loseConnection()
        self.assertEqual(self.b.stopped, 1)

    def test_in_flight_to_stopped_dropped(self) -> None:
        self.ta.write(b"in flight", B)
        self.tb.stopListening()
        self.clock.advance(1)
        self.assertEqual(self.b.received, [])
        self.assertEqual(self.net.delivered, 0)

    def test_write_after_stop_is_dropped(self) -> None:
        self.tb.stopListening()
        self.tb.write(b"ghost", A)
        self.clock.advance(1)
        self.assertEqual(self.a.received, [])
        self.assertEqual(self.net.sent, 0)

    def test_detach(self) -> None:
        self.net.detach(B)
        self.ta.write(b"x", B)
        self.clock.advance(1)
        self.assertEqual(self.b.received, [])
        self.net.detach(B)  # twice is fine

    def test_reattach_same_address(self) -> None:
        self.tb.stopListening()
        fresh = Recorder()
        self.net.attach(fresh, *B)
        self.ta.write(b"x", B)
        self.clock.advance(1)
        self.assertEqual(fresh.received, [(b"x", A)])
        self.assertEqual(self.b.received, [])

    def test_reattach_same_protocol(self) -> None:
        self.tb.stopListening()
        self.net.attach(self.b, B[0], 2222)
        self.assertEqual(self.b.started, 2)
        self.ta.write(b"x", (B[0], 2222))
        self.clock.advance(1)
        self.assertEqual(self.b.received, [(b"x", A)])


class AddressTests(MemoryNetworkMixin, SynchronousTestCase):
    def test_address_in_use(self) -> None:
        self.assertRaises(OSError, self.net.attach, Recorder(), *A)
        self.assertIs(self.net.endpoints[A].protocol, self.a)

    def test_free_port(self) -> None:
        t1 = self.net.attach(Recorder(), "10.0.0.5")
        t2 = self.net.attach(Recorder(), "10.0.0.5")
        self.assertEqual(t1.address[0], "10.0.0.5")
        self.assertNotEqual(t1.address, t2.address)
        self.assertNotEqual(t1.address[1], 0)

    def test_free_port_skips_taken(self) -> None:
        taken = self.net.attach(Recorder(), "10.0.0.5", 10000)
        t = self.net.attach(Recorder(), "10.0.0.5")
        self.assertNotEqual(t.address, taken.address)

    def test_same_port_other_host(self) -> None:
        t = self.net.attach(Recorder(), "10.0.0.7", A[1])
        self.assertEqual(t.address, ("10.0.0.7", A[1]))


class AttackBenchTests(MemoryNetworkMixin, SynchronousTestCase):
    """What the attack tests use: forged sources, observers, the datagram size limit."""

    def test_forged_source(self) -> None:
        self.net.send(("203.0.113.9", 53), B, b"forged")
        self.clock.advance(self.latency)
        self.assertEqual(self.b.received, [(b"forged", ("203.0.113.9", 53))])

    def test_observers_see_every_datagram(self) -> None:
        seen: list[tuple[Any, Any, bytes]] = []
        self.net.observers.append(lambda s, d, data: seen.append((s, d, data)))
        self.ta.write(b"one", B)
        self.ta.write(b"two", ("10.9.9.9", 1))  # nobody there: still observed
        self.assertEqual(seen, [(A, B, b"one"), (A, ("10.9.9.9", 1), b"two")])

    def test_datagram_over_the_limit_dropped(self) -> None:
        self.ta.write(b"x" * 65507, B)
        self.ta.write(b"x" * 65508, B)
        self.clock.advance(self.latency)
        self.assertEqual([len(d) for d, _ in self.b.received], [65507])
        self.assertEqual(self.net.too_large, 1)
        small = MemoryNetwork(self.clock, latency=self.latency, max_datagram=10)
        c, d = Recorder(), Recorder()
        tc = small.attach(c, *A)
        small.attach(d, *B)
        tc.write(b"x" * 11, B)
        tc.write(b"x" * 10, B)
        self.clock.advance(self.latency)
        self.assertEqual([len(x) for x, _ in d.received], [10])
