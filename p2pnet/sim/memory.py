# -*- test-case-name: tests.test_sim_memory -*-
"""An in-memory datagram network on an injected clock, for tests and simulations.

:class:`MemoryNetwork` hands each attached protocol a :class:`MemoryDatagramTransport`;
a datagram written to an address is delivered to the protocol bound there after
``latency`` seconds of the network's clock (``task.Clock`` in tests), or dropped when
nothing is bound there, when the sender's or receiver's host is partitioned off, or by
the configured loss rate.  A datagram longer than ``max_datagram`` is dropped on send, as
the kernel does (65,507 bytes: the largest UDP payload over IPv4).

The network is also a test bench for attacks: :meth:`MemoryNetwork.send` takes any source
address (a forged one too), and ``observers`` see every datagram sent (for counting the
bytes an attack reflects to a victim, or the addresses a node was made to contact).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

Address = tuple[str, int]

#: the largest UDP payload over IPv4
MAX_UDP_PAYLOAD = 65507


class MemoryDatagramTransport:
    """The transport an attached protocol writes to."""

    def __init__(self, network: MemoryNetwork, address: Address,
                 protocol: DatagramProtocol) -> None:
        self.network = network
        self.address = address
        self.protocol = protocol
        self.connected = True

    def write(self, data: bytes, addr: Address) -> None:
        if not isinstance(data, bytes):
            raise TypeError("datagrams are bytes")
        if self.connected:
            self.network.send(self.address, (addr[0], addr[1]), data)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.address)

    def stopListening(self) -> defer.Deferred[None]:
        if self.connected:
            self.connected = False
            self.network.detach(self.address)
            self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening


class MemoryNetwork:
    """Addresses to protocols, with latency, loss and host partitions."""

    def __init__(self, clock: IReactorTime, latency: float = 0.001, loss: float = 0.0,
                 seed: int = 0, max_datagram: int = MAX_UDP_PAYLOAD) -> None:
        self.clock = clock
        self.latency = latency
        self.loss = loss
        self.max_datagram = max_datagram
        #: called as ``observer(source, dest, data)`` for every datagram sent
        self.observers: list[Callable[[Address, Address, bytes], None]] = []
        self.too_large = 0
        self.random = random.Random(seed)
        self.endpoints: dict[Address, MemoryDatagramTransport] = {}
        self.blocked_hosts: set[str] = set()
        self.sent = 0
        self.delivered = 0
        self.bytes_sent = 0
        self._next_port = 10000

    def attach(self, protocol: DatagramProtocol, host: str = "127.0.0.1",
               port: int = 0) -> MemoryDatagramTransport:
        """Bind ``protocol`` at ``(host, port)`` (a free port when 0) and start it."""
        if port == 0:
            while (host, self._next_port) in self.endpoints:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        if (host, port) in self.endpoints:
            raise OSError(f"address in use: {host}:{port}")
        transport = MemoryDatagramTransport(self, (host, port), protocol)
        self.endpoints[(host, port)] = transport
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        return transport

    def detach(self, address: Address) -> None:
        self.endpoints.pop(address, None)

    def send(self, source: Address, dest: Address, data: bytes) -> None:
        """Send ``data`` from ``source`` (any address: tests forge them) to ``dest``."""
        self.sent += 1
        self.bytes_sent += len(data)
        for observer in self.observers:
            observer(source, dest, data)
        if len(data) > self.max_datagram:
            self.too_large += 1
            return
        if self.loss and self.random.random() < self.loss:
            return
        self.clock.callLater(self.latency, self._deliver, source, dest, data)

    def _deliver(self, source: Address, dest: Address, data: bytes) -> None:
        if source[0] in self.blocked_hosts or dest[0] in self.blocked_hosts:
            return
        endpoint = self.endpoints.get(dest)
        if endpoint is None or not endpoint.connected:
            return
        self.delivered += 1
        proto: Any = endpoint.protocol
        proto.datagramReceived(data, source)
