# -*- test-case-name: tests.test_dht_service -*-
"""A DHT node as an ``IService``: binds UDP, joins through bootstrap nodes, runs timers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from p2pnet.dht.network import NETWORK_ID, DHTNetwork
from p2pnet.dht.protocol import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Address
from p2pnet.dht.publishing import Maintenance, MaintenanceIntervals
from p2pnet.dht.table import IKVPTable

log = Logger()


class DHTService(service.MultiService):
    """Owns a :class:`DHTNetwork`, its UDP port and its maintenance timers.

    ``reactor`` must provide ``IReactorUDP`` and ``IReactorTime`` (the global reactor
    when None).  The network exists from construction, so an application can hold on to
    ``service.network`` before the service starts.
    """

    def __init__(
        self,
        port: int = 0,
        interface: str = "127.0.0.1",
        node_id: bytes | None = None,
        network_id: bytes = NETWORK_ID,
        bootstrap: Iterable[Address] = (),
        kvp_table: IKVPTable | None = None,
        reactor: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        intervals: MaintenanceIntervals | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.bootstrap = list(bootstrap)
        self.network = DHTNetwork(reactor, kvp_table, node_id, network_id, timeout, retries)
        self.maintenance = Maintenance(self.network, intervals)
        self.maintenance.setServiceParent(self)
        self._listening: Any = None
        self._join_waiters: list[defer.Deferred[bool]] = []
        self.joined: bool | None = None

    def startService(self) -> None:
        self._listening = self._reactor.listenUDP(self.port, self.network.protocol,
                                                  interface=self.interface)
        host, port = self.network.address
        log.info("DHT node {id} listening on {host}:{port}", id=self.network.key.hex(),
                 host=host, port=port)
        super().startService()
        d = defer.Deferred.fromCoroutine(self._join_all())
        d.addBoth(self._join_done)

    async def _join_all(self) -> bool:
        for address in self.bootstrap:
            if await self.network.join_network(address):
                log.info("joined the DHT through {host}:{port}; {n} contacts",
                         host=address[0], port=address[1],
                         n=self.network.routing_table.num_contacts)
                return True
            log.warn("bootstrap node {host}:{port} did not answer",
                     host=address[0], port=address[1])
        return not self.bootstrap

    def _join_done(self, result: Any) -> None:
        ok = result is True
        if not isinstance(result, bool):
            log.failure("join failed", failure=result)
        self.joined = ok
        waiters, self._join_waiters = self._join_waiters, []
        for w in waiters:
            w.callback(ok)

    def when_joined(self) -> defer.Deferred[bool]:
        """Fires when joining ends: True when joined (or nothing to join), else False."""
        if self.joined is not None:
            return defer.succeed(self.joined)
        d: defer.Deferred[bool] = defer.Deferred()
        self._join_waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        d = defer.maybeDeferred(super().stopService)
        listening, self._listening = self._listening, None

        def close(_: object) -> Any:
            if listening is not None:
                return listening.stopListening()
            return None

        return d.addCallback(close)
