# -*- test-case-name: tests.test_dht_service -*-
"""A DHT node as an ``IService``: binds UDP, joins (and keeps joining), runs timers.

Joining never gives up: while the routing table is empty, or has shrunk below what the
node has seen of the network, a :class:`Joiner` tries the bootstrap addresses and the
addresses of contacts it once had, with exponential back-off and jitter on the injected
clock, and logs each try.  ``when_joined()`` fires on the first success.  A node whose
bootstrap comes up late joins by itself; a node whose bootstrap died carries on through
the contacts it has.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet.dht.limits import Limits
from p2pnet.dht.network import NETWORK_ID, DHTNetwork
from p2pnet.dht.protocol import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Address, tune_udp_port
from p2pnet.dht.publishing import Maintenance, MaintenanceIntervals
from p2pnet.dht.shortlist import K
from p2pnet.dht.table import IKVPTable
from p2pnet.models import Node
from p2pnet.observer import OneShotObserver

log = Logger()

_SHARED_RNG = random.Random()


@attrs.frozen
class JoinPolicy:
    """How a node keeps joining."""

    #: seconds before the second try; each failed round doubles it (``factor``) ...
    first_delay: float = 1.0
    factor: float = 2.0
    #: ... up to this (a node whose bootstrap is down for hours tries every 5 minutes)
    max_delay: float = 300.0
    #: each delay is multiplied by a uniform draw from [1 - jitter, 1 + jitter], so a
    #: crowd that failed together does not retry together
    jitter: float = 0.5
    #: seconds between checks of a joined node's table (rejoins when it emptied)
    check_interval: float = 60.0
    #: addresses of past contacts remembered for rejoining
    remembered: int = 64
    #: past contacts tried per round, after the bootstrap addresses
    per_round: int = 3
    #: seconds after joining at which the node refreshes its buckets again, while its
    #: table is young and the network around it may still be filling in (none by
    #: default: each costs a lookup per bucket, and lookups that widen to farther
    #: buckets made them unnecessary in the flash-crowd runs; see bench_flashcrowd)
    young_refreshes: tuple[float, ...] = ()
    #: seconds of random delay before the first try (spreads a crowd started at once)
    start_jitter: float = 0.0
    #: after the first join, the refresh of the buckets farther than the closest
    #: neighbour (Kademlia's join) runs after a random delay up to this; the node counts
    #: as joined once it answered and it looked itself up.  0: inside the join, at once.
    far_refresh_spread: float = 10.0
    #: those refresh lookups end once the closest few nodes answered, not the k closest
    quick_refresh: bool = True


class Joiner:
    """Keeps ``network`` joined: see the module docstring and :class:`JoinPolicy`."""

    def __init__(self, network: DHTNetwork, bootstrap: Iterable[Address],
                 policy: JoinPolicy | None = None, rng: random.Random | None = None) -> None:
        self.network = network
        self.bootstrap = list(bootstrap)
        self.policy = policy or JoinPolicy()
        self.clock = network.clock
        # jitter needs no state of its own: one generator for every joiner of the process
        # (a Random holds 2.5 KiB; a crowd of 1,000 nodes in a process would hold 2.5 MiB)
        self.rng = rng or _SHARED_RNG
        self.observer: OneShotObserver[bool] = OneShotObserver()
        self.on_first_join: list[Any] = []
        self.tries = 0  #: join attempts made (one per address tried)
        self.rounds = 0  #: rounds of attempts
        self.failed_rounds = 0  #: rounds in a row that failed
        self._peak = 0
        self._past: list[Node] = []  # contacts met, oldest first, one per address
        self._timer: IDelayedCall | None = None
        self._young: list[IDelayedCall] = []
        self._running = False
        self._busy = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        if not self.bootstrap:  # the first node of a network: nothing to join
            self._joined()
            self._schedule(self.policy.check_interval)
            return
        self._schedule(self.rng.uniform(0, self.policy.start_jitter))

    def stop(self) -> None:
        self._running = False
        for call in [self._timer, *self._young]:
            if call is not None and call.active():
                call.cancel()
        self._timer, self._young = None, []

    def when_joined(self) -> defer.Deferred[bool]:
        return self.observer.when_fired()

    @property
    def joined(self) -> bool:
        return self.observer.fired

    # -- the loop ------------------------------------------------------------------

    def needs_join(self) -> bool:
        """The table is empty, or below half the largest it has been (and below k)."""
        n = self.network.routing_table.num_contacts
        return n == 0 or n < min(self.network.k, self._peak // 2)

    def _remember(self) -> None:
        """Note the current contacts' addresses (the newest ``remembered`` are kept)."""
        rt = self.network.routing_table
        self._peak = max(self._peak, rt.num_contacts)
        fresh = rt.get_close_nodes(self.network.key, self.policy.remembered)
        if fresh:
            # the contacts themselves (shared with the table), not an address tuple each
            now = {n.address for n in fresh}
            kept = [n for n in self._past if n.address not in now]
            self._past = (kept + fresh)[-self.policy.remembered:]

    def _schedule(self, delay: float) -> None:
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self._wake)

    def _wake(self) -> None:
        self._timer = None
        if not self._running or self._busy:
            return
        self._remember()
        if self.joined and not self.needs_join():
            self._schedule(self.policy.check_interval)
            return
        self._busy = True
        d = defer.Deferred.fromCoroutine(self._round())
        d.addErrback(self._round_bug)

    def _round_bug(self, failure: Failure) -> None:
        self._busy = False
        log.failure("join round failed", failure=failure)
        self._schedule(self._backoff())

    def _candidates(self) -> list[Address]:
        past = [n.address for n in self._past if n.address not in self.bootstrap]
        self.rng.shuffle(past)
        return self.bootstrap + past[: self.policy.per_round]

    async def _round(self) -> None:
        self.rounds += 1
        ok = False
        for address in self._candidates():
            if not self._running:
                break
            self.tries += 1
            log.info("join try {n} through {host}:{port}", n=self.tries,
                     host=address[0], port=address[1])
            try:
                ok = await self.network.join_network(
                    address, refresh=self.policy.far_refresh_spread <= 0)
            except Exception as e:  # a bad address (unresolvable name, ...): next one
                log.warn("join through {host}:{port} failed: {e}",
                         host=address[0], port=address[1], e=e)
                ok = False
            if ok:
                log.info("joined the DHT through {host}:{port}; {n} contacts",
                         host=address[0], port=address[1],
                         n=self.network.routing_table.num_contacts)
                break
            log.warn("{host}:{port} did not answer", host=address[0], port=address[1])
        self._busy = False
        if ok:
            self.failed_rounds = 0
            self._remember()
            first = not self.joined
            self._joined()
            if first:
                self._young = [
                    self.clock.callLater(delay * self.rng.uniform(0.75, 1.25),
                                         self._young_refresh)
                    for delay in self.policy.young_refreshes]
            if self.policy.far_refresh_spread > 0:
                self._drop_fired()
                self._young.append(self.clock.callLater(
                    self.rng.uniform(0, self.policy.far_refresh_spread), self._far_refresh))
            self._schedule(self.policy.check_interval)
        else:
            self.failed_rounds += 1
            delay = self._backoff()
            log.info("not joined; next try in {delay:.1f}s", delay=delay)
            self._schedule(delay)

    def _backoff(self) -> float:
        p = self.policy
        base = min(p.max_delay, p.first_delay * p.factor ** max(self.failed_rounds - 1, 0))
        return base * self.rng.uniform(1 - p.jitter, 1 + p.jitter)

    def _drop_fired(self) -> None:
        # a fired DelayedCall is ~1 KiB held for nothing (a crowd: 1 MiB per 1,000 nodes)
        self._young = [c for c in self._young if c.active()]

    def _young_refresh(self) -> None:
        self._drop_fired()
        if self._running and self.network.routing_table.num_contacts:
            d = self.network.refresh_buckets()
            d.addErrback(lambda f: log.failure("young refresh failed", failure=f))

    def _far_refresh(self) -> None:
        self._drop_fired()
        if self._running and self.network.routing_table.num_contacts:
            d = self.network.refresh_buckets(far_only=True, quick=self.policy.quick_refresh)
            d.addErrback(lambda f: log.failure("bucket refresh failed", failure=f))

    def _joined(self) -> None:
        if self.observer.fired:
            return
        self.observer.fire(True)
        for f in self.on_first_join:
            f()


class DHTService(service.MultiService):
    """Owns a :class:`DHTNetwork`, its UDP port, its joining and its maintenance timers.

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
        limits: Limits | None = None,
        join_policy: JoinPolicy | None = None,
        rng: random.Random | None = None,
        k: int = K,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.bootstrap = list(bootstrap)
        self.network = DHTNetwork(reactor, kvp_table, node_id, network_id, timeout, retries,
                                  k=k, limits=limits)
        self.maintenance = Maintenance(self.network, intervals)
        self.maintenance.setServiceParent(self)
        self.joiner = Joiner(self.network, self.bootstrap, join_policy, rng)
        # republishing and replication start once the node has joined
        self.joiner.on_first_join.append(self.maintenance.joined)
        self._listening: Any = None

    @property
    def joined(self) -> bool:
        """Whether the node has joined (at least once)."""
        return self.joiner.joined

    def startService(self) -> None:
        self._listening = self._reactor.listenUDP(self.port, self.network.protocol,
                                                  interface=self.interface)
        # Whole datagrams, as large as the codec accepts, and a receive buffer sized for
        # bursts (a crowd joining through us).
        tune_udp_port(self._listening, self.network.limits.udp_receive_buffer)
        host, port = self.network.address
        log.info("DHT node {id} listening on {host}:{port}", id=self.network.key.hex(),
                 host=host, port=port)
        super().startService()
        self.joiner.start()

    def when_joined(self) -> defer.Deferred[bool]:
        """Fires with True once the node has joined (at once when it has, or when it has
        nothing to join); keeps waiting while joining fails."""
        return self.joiner.when_joined()

    def stopService(self) -> defer.Deferred[None]:
        self.joiner.stop()
        d = defer.maybeDeferred(super().stopService)
        listening, self._listening = self._listening, None

        def close(_: object) -> Any:
            if listening is not None:
                return listening.stopListening()
            return None

        return d.addCallback(close)
