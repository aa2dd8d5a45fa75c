# -*- test-case-name: tests.test_dht_flashcrowd -*-
"""A flash crowd (issue 10): every node joins one bootstrap node at once, then every get
finds the value put just before it, from a random writer to a random reader.

300 nodes with 2% datagram loss on the in-memory network (simulated time on a
:class:`~p2pnet.sim.reactor.HeapClock`), and 50 nodes on real loopback UDP.  The
1,000-node figures come from ``bench/bench_flashcrowd.py``.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from p2pnet.dht.service import DHTService
from p2pnet.sim.memory import MemoryNetwork
from p2pnet.sim.reactor import HeapClock, MemoryReactor

OPS = 30


async def put_then_get(services: list[DHTService], rng: random.Random, ops: int
                       ) -> list[tuple[int, str]]:
    """``ops`` rounds of put from a random node then get from another; the failures."""
    failures = []
    for i in range(ops):
        writer, reader = rng.sample(services, 2)
        value = rng.randbytes(64)
        replicas = await writer.network.put(f"crowd-{i}", value)
        try:
            got = await reader.network.get(f"crowd-{i}")
        except Exception as e:
            failures.append((i, f"{type(e).__name__}: {e} ({replicas} replicas)"))
            continue
        if got != value:
            failures.append((i, "wrong value"))
    return failures


class MemoryFlashCrowdTests(unittest.SynchronousTestCase):
    def test_300_nodes_with_2pc_loss(self) -> None:
        n = 300
        clock = HeapClock()
        net = MemoryNetwork(clock, latency=0.001, loss=0.02, seed=10)
        sim_reactor = MemoryReactor(clock, net)
        ids = random.Random(11)
        services = []
        for i in range(n):
            s = DHTService(port=4000 + i, reactor=sim_reactor, node_id=ids.randbytes(20),
                           bootstrap=[("127.0.0.1", 4000)] if i else [],
                           rng=random.Random(i))
            services.append(s)
        for s in services:  # all at once
            s.startService()
            self.addCleanup(s.stopService)
        joined = clock.run_until(lambda: all(s.joined for s in services), 30.0)
        self.assertEqual(sum(s.joined for s in services), n)
        self.assertTrue(joined)
        self.assertLessEqual(clock.seconds(), 30.0)
        d = clock.run_deferred(defer.Deferred.fromCoroutine(
            put_then_get(services, random.Random(12), OPS)), 3600.0)
        self.assertEqual(self.successResultOf(d), [])


class LoopbackFlashCrowdTests(unittest.TestCase):
    timeout = 120

    def test_50_nodes_on_udp(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._scenario(50))

    async def _scenario(self, n: int) -> None:
        services: list[DHTService] = []
        boot = DHTService(port=0, interface="127.0.0.1", reactor=reactor)
        services.append(boot)
        boot.startService()
        self.addCleanup(self._stop, boot)
        for _ in range(n - 1):
            s = DHTService(port=0, interface="127.0.0.1", reactor=reactor,
                           bootstrap=[boot.network.address])
            services.append(s)
            s.startService()
            self.addCleanup(self._stop, s)
        waits = defer.gatherResults([s.when_joined() for s in services])
        joined = await waits.addTimeout(30, reactor)
        self.assertEqual(joined, [True] * n)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(await defer.Deferred.fromCoroutine(
            put_then_get(services, random.Random(13), OPS)), [])

    @staticmethod
    def _stop(s: DHTService) -> Any:
        return s.stopService() if s.running else None


class HeapClockTests(unittest.SynchronousTestCase):
    """The simulation's clock runs calls as ``task.Clock`` does, each at its own time."""

    def test_order_cancel_reset_delay(self) -> None:
        clock = HeapClock()
        ran: list[tuple[str, float]] = []

        def note(name: str) -> None:
            ran.append((name, clock.seconds()))

        clock.callLater(3, note, "c")
        a = clock.callLater(1, note, "a")
        gone = clock.callLater(2, note, "gone")
        late = clock.callLater(1.5, note, "late")
        early = clock.callLater(10, note, "early")
        gone.cancel()
        late.delay(4)  # now due at 5.5
        early.reset(0.5)  # now due at 0.5
        self.assertEqual(clock.pending, 4)
        self.assertEqual(sorted(c.getTime() for c in clock.getDelayedCalls()),
                         [0.5, 1, 3, 5.5])
        clock.advance(4)
        self.assertEqual(ran, [("early", 0.5), ("a", 1), ("c", 3)])
        self.assertFalse(a.active())
        self.assertEqual(clock.seconds(), 4)
        self.assertEqual(clock.next_call_time(), 5.5)
        clock.advance(10)
        self.assertEqual(ran[-1], ("late", 5.5))
        self.assertIsNone(clock.next_call_time())

    def test_run_until_and_looping_call(self) -> None:
        clock = HeapClock()
        ticks: list[float] = []
        loop = task.LoopingCall(lambda: ticks.append(clock.seconds()))
        loop.clock = clock
        loop.start(2.0, now=False)
        self.assertTrue(clock.run_until(lambda: len(ticks) == 3, 100))
        self.assertEqual(ticks, [2.0, 4.0, 6.0])
        self.assertFalse(clock.run_until(lambda: False, 5))
        self.assertEqual(clock.seconds(), 10.0)  # stops at the last call within the bound
        loop.stop()
        d = clock.run_deferred(task.deferLater(clock, 7, lambda: "done"))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(d), "done")
