"""Tests for :mod:`p2pnet.dht.service`: joining never gives up (issue 10).

Every node is a :class:`~p2pnet.dht.service.DHTService` on the in-memory network, its
"reactor" a :class:`~p2pnet.sim.reactor.MemoryReactor` over ``task.Clock``.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.dht.protocol import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from p2pnet.dht.service import DHTService, JoinPolicy
from p2pnet.sim.memory import MemoryNetwork
from p2pnet.sim.reactor import MemoryReactor
from tests.dhthelpers import settle

GIVE_UP = (DEFAULT_RETRIES + 1) * DEFAULT_TIMEOUT  # a ping to a silent address fails then
BOOT = ("127.0.0.1", 5000)


class JoiningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.net = MemoryNetwork(self.clock, latency=0.001)
        self.reactor = MemoryReactor(self.clock, self.net)
        self.port = 5001
        self.services: list[DHTService] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def service(self, bootstrap: list[tuple[str, int]] = (),  # type: ignore[assignment]
                policy: JoinPolicy | None = None, start: bool = True) -> DHTService:
        s = DHTService(port=self.port, bootstrap=bootstrap, reactor=self.reactor,
                       join_policy=policy, rng=random.Random(self.port),
                       node_id=random.Random(self.port).randbytes(20))
        self.port += 1
        self.services.append(s)
        if start:
            s.startService()
        self.addCleanup(lambda: s.stopService() if s.running else None)
        return s

    def tries_logged(self) -> int:
        return sum(1 for e in self.events if e.get("log_format", "").startswith("join try"))

    def test_first_node_is_joined_at_once(self) -> None:
        boot = self.service()
        self.assertIs(self.successResultOf(boot.when_joined()), True)
        self.assertTrue(boot.joined)

    def test_backoff_with_jitter_until_the_bootstrap_answers(self) -> None:
        policy = JoinPolicy(first_delay=1.0, factor=2.0, max_delay=60.0, jitter=0.5)
        node = self.service([BOOT], policy)
        d = node.when_joined()
        starts: list[float] = []
        last = 0
        while self.clock.seconds() < 600:
            if node.joiner.rounds != last:
                last = node.joiner.rounds
                starts.append(self.clock.seconds())
            settle(self.clock, 0.05)
        self.assertNoResult(d)
        self.assertFalse(node.joined)
        gaps = [b - a - GIVE_UP for a, b in zip(starts, starts[1:])]  # back-off waits
        self.assertGreater(len(gaps), 5)
        for i, gap in enumerate(gaps):
            base = min(60.0, 1.0 * 2.0 ** i)
            self.assertGreaterEqual(gap, base * 0.5 - 0.1, gaps)
            self.assertLessEqual(gap, base * 1.5 + 0.1, gaps)
        self.assertGreater(gaps[4], gaps[0])  # it backs off ...
        self.assertLessEqual(max(gaps), 60.0 * 1.5 + 0.1)  # ... up to the cap
        self.assertEqual(self.tries_logged(), node.joiner.tries)  # each try is logged
        self.assertEqual(node.joiner.tries, len(starts))

    def test_bootstrap_that_starts_minutes_later(self) -> None:
        node = self.service([BOOT])
        d = node.when_joined()
        settle(self.clock, 180)
        self.assertNoResult(d)
        self.port = BOOT[1]
        boot = self.service()  # now the bootstrap node comes up
        settle(self.clock, 400)  # at most the back-off cap (300 s, jitter 1.5) later
        self.assertIs(self.successResultOf(d), True)
        self.assertIn(boot.network.node, node.network.routing_table)
        self.assertIn(node.network.node, boot.network.routing_table)

    def test_lost_first_ping_is_retried(self) -> None:
        self.port = BOOT[1]
        self.service()
        self.net.loss = 1.0  # everything lost for a while
        node = self.service([BOOT])
        settle(self.clock, 10)
        self.assertFalse(node.joined)
        self.net.loss = 0.0
        settle(self.clock, 30)
        self.assertTrue(node.joined)

    def test_joined_through_a_node_whose_bootstrap_died(self) -> None:
        self.port = BOOT[1]
        boot = self.service()
        a = self.service([BOOT])
        b = self.service([BOOT])
        settle(self.clock, 5)
        self.assertTrue(a.joined and b.joined)
        boot.stopService()
        settle(self.clock, 1)
        newcomer = self.service([a.network.address])
        settle(self.clock, 5)
        self.assertTrue(newcomer.joined)
        self.assertIn(b.network.node, newcomer.network.routing_table)

    def test_rejoins_through_past_contacts_when_the_table_empties(self) -> None:
        self.port = BOOT[1]
        boot = self.service()
        a = self.service([BOOT], JoinPolicy(check_interval=10.0))
        b = self.service([BOOT])
        settle(self.clock, 15)
        self.assertTrue(a.joined)
        boot.stopService()  # the bootstrap is gone for good
        rt = a.network.routing_table
        for n in list(rt.nodes()):
            rt.remove(n)
        self.assertEqual(rt.num_contacts, 0)
        before = a.joiner.tries
        settle(self.clock, 60)
        self.assertGreater(a.joiner.tries, before)
        self.assertIn(b.network.node, rt)

    def test_when_joined_fires_once_for_every_waiter(self) -> None:
        self.port = BOOT[1]
        self.service()
        node = self.service([BOOT])
        waiters = [node.when_joined() for _ in range(3)]
        settle(self.clock, 5)
        self.assertEqual([self.successResultOf(w) for w in waiters], [True] * 3)
        self.assertIs(self.successResultOf(node.when_joined()), True)

    def test_maintenance_hears_of_the_first_join(self) -> None:
        self.port = BOOT[1]
        self.service()
        node = self.service([BOOT], start=False)
        heard: list[bool] = []
        node.joiner.on_first_join.append(lambda: heard.append(True))
        node.startService()
        self.assertEqual(heard, [])
        self.assertFalse(node.maintenance.has_joined)
        self.assertFalse(node.maintenance.publisher.started)
        settle(self.clock, 5)
        self.assertEqual(heard, [True])
        self.assertTrue(node.maintenance.has_joined)
        self.assertTrue(node.maintenance.publisher.started)
        settle(self.clock, 200)  # later checks and rejoins do not call it again
        self.assertEqual(heard, [True])

    def test_stop_cancels_the_timers(self) -> None:
        node = self.service([BOOT])
        settle(self.clock, 1)
        node.stopService()
        settle(self.clock, GIVE_UP + 1)  # the ping in flight fails
        tries = node.joiner.tries
        settle(self.clock, 1000)
        self.assertEqual(node.joiner.tries, tries)
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if getattr(c.func, "__self__", None) is node.joiner], [])
