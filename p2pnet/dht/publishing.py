# -*- test-case-name: tests.test_dht_publishing -*-
"""The DHT's timers: republish originals, replicate held copies, expire, refresh buckets.

Each is a :class:`p2pnet.timers.Periodic` with a ``run_once()`` (a Deferred) and
``start()`` / ``stop()`` on the network's injected clock, so tests run them on
``task.Clock``.  :class:`Maintenance` groups the four as one ``IService``; it starts
republishing and replicating only once the node has joined (:meth:`Maintenance.joined`),
so a node alone never marks its values as published.  The periods are the network's
class constants (``TIME_REPUBLISH``, ``TIME_REPLICATE``, ``TIME_REFRESH``): overriding
them on a :class:`DHTNetwork` subclass or instance changes the timers.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer

from p2pnet.dht.network import DHTNetwork
from p2pnet.timers import Periodic

REPUBLISH_CHECK_INTERVAL = 3600.0
REFRESH_CHECK_INTERVAL = 900.0
EXPIRE_CHECK_INTERVAL = 600.0


class NetworkPeriodic(Periodic):
    """A :class:`Periodic` on a network's clock, with the network at hand."""

    def __init__(self, network: DHTNetwork, interval: float | None = None) -> None:
        super().__init__(network.clock, interval)
        self.network = network

    def _overdue_before_next_check(self, last: float, period: float, now: float) -> bool:
        """Whether ``period`` since ``last`` ends before the next check would run.

        Checking ``now - last >= period`` instead lets a round that finished just after
        its tick (``last`` a little past the tick) miss the tick ``period`` later and wait
        one more interval: republishing every 25 h while copies expire after 24 h 1.5 min,
        replicating every other hour.
        """
        return last + period < now + self.interval


async def _store_all(network: DHTNetwork, kvpids: list[tuple[bytes, bytes]]) -> int:
    sem = defer.DeferredSemaphore(network.NETWORK_PARALLELISM)

    async def one(kvpid: tuple[bytes, bytes]) -> int:
        try:
            count: int = await sem.run(network.store_value, kvpid[0], kvpid[1])
            return count
        except KeyError:
            return 0  # deleted meanwhile

    counts = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(one(k)) for k in kvpids], consumeErrors=True)
    return sum(counts)


def delete_expired(network: DHTNetwork) -> defer.Deferred[int]:
    """Delete the node's expired copies; fires with how many went."""
    now = network.clock.seconds()
    table = network.kvp_table
    expired = [r for r in table.records() if r.is_expired(now)]
    d = defer.gatherResults([table.delete(r.key, r.index) for r in expired],
                            consumeErrors=True)
    return d.addCallback(lambda _: len(expired))


class Publisher(NetworkPeriodic):
    """Republishes values this node originated, TIME_REPUBLISH after their last publish
    (at once when never published, or when no node took the last one); checked hourly
    and whenever :meth:`check` is called.  A value whose TIME_REPUBLISH would end before
    the next check is republished now: early rather than after the copies expired."""

    interval = REPUBLISH_CHECK_INTERVAL

    def due(self) -> list[tuple[bytes, bytes]]:
        now = self.network.clock.seconds()
        return [r.kvpid for r in self.network.kvp_table.records()
                if r.is_original and (r.last_update == 0 or self._overdue_before_next_check(
                    r.last_update, self.network.TIME_REPUBLISH, now))]

    def run_once(self) -> defer.Deferred[int]:
        return defer.Deferred.fromCoroutine(_store_all(self.network, self.due()))

    def check(self) -> None:
        """Publish what is due now (call after adding originals to the table)."""
        self.tick()


class Replicator(NetworkPeriodic):
    """Every TIME_REPLICATE: re-store held copies (not originals, not expired) whose last
    replication will be that old by the next round, then delete expired copies.  A
    replication carries the copy's age: it does not renew the copies it reaches."""

    interval = 3600.0

    def __init__(self, network: DHTNetwork, interval: float | None = None) -> None:
        super().__init__(network, network.TIME_REPLICATE if interval is None else interval)

    async def _round(self) -> int:
        now = self.network.clock.seconds()
        table = self.network.kvp_table
        due = [r.kvpid for r in table.records()
               if not r.is_original and not r.is_expired(now)
               and self._overdue_before_next_check(r.last_update,
                                                   self.network.TIME_REPLICATE, now)]
        count = await _store_all(self.network, due)
        await delete_expired(self.network)
        return count

    def run_once(self) -> defer.Deferred[int]:
        return defer.Deferred.fromCoroutine(self._round())


class Expirer(NetworkPeriodic):
    """Deletes expired copies (originals never expire)."""

    interval = EXPIRE_CHECK_INTERVAL

    def run_once(self) -> defer.Deferred[int]:
        return delete_expired(self.network)


class Refresher(NetworkPeriodic):
    """Every 15 minutes, looks up a random id in each bucket not looked up for
    TIME_REFRESH (an hour)."""

    interval = REFRESH_CHECK_INTERVAL

    def run_once(self) -> defer.Deferred[int]:
        return self.network.refresh_buckets(older_than=self.network.TIME_REFRESH)


@attrs.define
class MaintenanceIntervals:
    """Seconds between the timers' checks; ``replicate`` None: the network's
    TIME_REPLICATE."""

    republish: float = REPUBLISH_CHECK_INTERVAL
    replicate: float | None = None
    expire: float = EXPIRE_CHECK_INTERVAL
    refresh: float = REFRESH_CHECK_INTERVAL


class Maintenance(service.Service):
    """The four timers of a DHT node as one service.

    The expirer and the bucket refresher run from ``startService``; the publisher and the
    replicator only once :meth:`joined` has been called too (the DHT service calls it on
    the node's first join, and at once when it has nothing to join).  With
    ``wait_for_join=False`` they start with the service.
    """

    def __init__(self, network: DHTNetwork, intervals: MaintenanceIntervals | None = None,
                 *, wait_for_join: bool = True) -> None:
        iv = intervals or MaintenanceIntervals()
        self.publisher = Publisher(network, iv.republish)
        self.replicator = Replicator(network, iv.replicate)
        self.expirer = Expirer(network, iv.expire)
        self.refresher = Refresher(network, iv.refresh)
        self.has_joined = not wait_for_join

    def _timers(self) -> list[NetworkPeriodic]:
        return [self.publisher, self.replicator, self.expirer, self.refresher]

    def joined(self) -> None:
        """The node has joined the network: republishing and replication may start."""
        self.has_joined = True
        if self.running:
            self._start_publishing()

    def _start_publishing(self) -> None:
        self.publisher.start(now=True)
        self.replicator.start()

    def startService(self) -> None:  # noqa: N802 - IService
        super().startService()
        self.expirer.start()
        self.refresher.start()
        if self.has_joined:
            self._start_publishing()

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - IService
        super().stopService()
        return defer.gatherResults([t.stop() for t in self._timers()])
