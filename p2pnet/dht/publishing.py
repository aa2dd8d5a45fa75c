# -*- test-case-name: tests.test_dht_publishing -*-
"""The DHT's timers: republish originals, replicate held copies, expire, refresh buckets.

Each is a small object with a ``run_once()`` (a Deferred) and ``start()`` / ``stop()``
driving it from a ``task.LoopingCall`` on the network's injected clock, so tests run
them on ``task.Clock``.  :class:`Maintenance` groups the four as one ``IService``.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet.dht.network import (
    TIME_REFRESH,
    TIME_REPLICATE,
    TIME_REPUBLISH,
    DHTNetwork,
)
from p2pnet.dht.shortlist import NETWORK_PARALLELISM

log = Logger()

REPUBLISH_CHECK_INTERVAL = 3600.0
REFRESH_CHECK_INTERVAL = 900.0


class _Periodic:
    """Run ``run_once`` every ``interval`` seconds of the network's clock, one at a time."""

    interval = 3600.0

    def __init__(self, network: DHTNetwork, interval: float | None = None) -> None:
        self.network = network
        if interval is not None:
            self.interval = interval
        self._loop: task.LoopingCall | None = None
        self._running: defer.Deferred[Any] | None = None
        self.runs = 0

    def run_once(self) -> defer.Deferred[Any]:
        raise NotImplementedError

    def _overdue_before_next_check(self, last: float, period: float, now: float) -> bool:
        """Whether ``period`` since ``last`` ends before the next check would run.

        Checking ``now - last >= period`` instead lets a round that finished just after
        its tick (``last`` a little past the tick) miss the tick ``period`` later and wait
        one more interval: republishing every 25 h while copies expire after 24 h 1.5 min,
        replicating every other hour.
        """
        return last + period < now + self.interval

    def _tick(self) -> defer.Deferred[Any] | None:
        if self._running is not None:
            return None  # the previous round is still going: skip this tick
        self.runs += 1
        d = defer.maybeDeferred(self.run_once)
        self._running = d

        def finished(result: Any) -> None:
            self._running = None
            if isinstance(result, Failure):
                log.failure("{name} round failed", failure=result, name=type(self).__name__)

        d.addBoth(finished)
        return None

    def start(self, now: bool = False) -> None:
        if self._loop is not None:
            return
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.network.clock
        self._loop.start(self.interval, now=now)

    def stop(self) -> defer.Deferred[Any]:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        running = self._running
        if running is None:
            return defer.succeed(None)
        waiter: defer.Deferred[Any] = defer.Deferred()

        def release(result: Any) -> Any:
            waiter.callback(None)
            return result

        running.addBoth(release)
        return waiter


async def _store_all(network: DHTNetwork, kvpids: list[tuple[bytes, bytes]]) -> int:
    sem = defer.DeferredSemaphore(NETWORK_PARALLELISM)

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


class Publisher(_Periodic):
    """Republishes values this node originated, TIME_REPUBLISH after their last publish
    (at once when never published); checked hourly and whenever :meth:`check` is called.
    A value whose TIME_REPUBLISH would end before the next check is republished now:
    early rather than after the copies expired."""

    interval = REPUBLISH_CHECK_INTERVAL

    def due(self) -> list[tuple[bytes, bytes]]:
        now = self.network.clock.seconds()
        return [r.kvpid for r in self.network.kvp_table.records()
                if r.is_original and (r.last_update == 0 or self._overdue_before_next_check(
                    r.last_update, TIME_REPUBLISH, now))]

    def run_once(self) -> defer.Deferred[int]:
        return defer.Deferred.fromCoroutine(_store_all(self.network, self.due()))

    def check(self) -> None:
        """Publish what is due now (call after adding originals to the table)."""
        self._tick()


class Replicator(_Periodic):
    """Every TIME_REPLICATE: re-store held copies (not originals, not expired) whose last
    replication will be that old by the next round, then delete expired copies."""

    interval = TIME_REPLICATE

    async def _round(self) -> int:
        now = self.network.clock.seconds()
        table = self.network.kvp_table
        due = [r.kvpid for r in table.records()
               if not r.is_original and not r.is_expired(now)
               and self._overdue_before_next_check(r.last_update, TIME_REPLICATE, now)]
        count = await _store_all(self.network, due)
        await delete_expired(self.network)
        return count

    def run_once(self) -> defer.Deferred[int]:
        return defer.Deferred.fromCoroutine(self._round())


class Expirer(_Periodic):
    """Deletes expired copies (originals never expire)."""

    interval = 600.0

    def run_once(self) -> defer.Deferred[int]:
        return delete_expired(self.network)


class Refresher(_Periodic):
    """Every 15 minutes, looks up a random id in each bucket not looked up for an hour."""

    interval = REFRESH_CHECK_INTERVAL

    def run_once(self) -> defer.Deferred[int]:
        return self.network.refresh_buckets(older_than=TIME_REFRESH)


@attrs.define
class MaintenanceIntervals:
    republish: float = REPUBLISH_CHECK_INTERVAL
    replicate: float = TIME_REPLICATE
    expire: float = 600.0
    refresh: float = REFRESH_CHECK_INTERVAL


class Maintenance(service.Service):
    """The four timers of a DHT node as one service."""

    def __init__(self, network: DHTNetwork, intervals: MaintenanceIntervals | None = None
                 ) -> None:
        iv = intervals or MaintenanceIntervals()
        self.publisher = Publisher(network, iv.republish)
        self.replicator = Replicator(network, iv.replicate)
        self.expirer = Expirer(network, iv.expire)
        self.refresher = Refresher(network, iv.refresh)

    def _timers(self) -> list[_Periodic]:
        return [self.publisher, self.replicator, self.expirer, self.refresher]

    def startService(self) -> None:
        super().startService()
        self.publisher.start(now=True)
        for t in self._timers()[1:]:
            t.start()

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return defer.gatherResults([t.stop() for t in self._timers()])
