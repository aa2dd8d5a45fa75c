# -*- test-case-name: tests.test_dht_integration -*-
"""Integration over real loopback UDP: many DHT nodes in one reactor.

Every node is a :class:`~p2pnet.dht.service.DHTService` bound to 127.0.0.1 on port 0 of
the real reactor, joined through one bootstrap node.  Values put from random nodes are
got from every other node; then a node that holds the large value is stopped while
lookups are under way, and every lookup (old values, and a new put/get) must still
succeed from the nodes that remain.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from p2pnet import ids
from p2pnet.dht.service import DHTService
from p2pnet.models import MAX_VALUE_SIZE

NODES = 30
#: Short RPC timeouts so a stopped node costs little: 0.5 s, one retry.
TIMEOUT = 0.5
RETRIES = 1
#: Lookups run concurrently, at most this many at a time over the whole network.
CONCURRENCY = 30


def _key(name: str) -> bytes:
    return ids.key_for(name.encode("utf-8"))


class LoopbackNetworkTests(unittest.TestCase):
    """30+ nodes on 127.0.0.1, one reactor, real UDP."""

    timeout = 120

    def setUp(self) -> None:
        self.rng = random.Random(20240601)
        self.services: list[DHTService] = []

    def _service(self, bootstrap: list[tuple[str, int]]) -> DHTService:
        s = DHTService(port=0, interface="127.0.0.1", bootstrap=bootstrap, reactor=reactor,
                       timeout=TIMEOUT, retries=RETRIES)
        s.startService()
        self.services.append(s)
        self.addCleanup(self._stop, s)
        return s

    @staticmethod
    def _stop(s: DHTService) -> defer.Deferred[Any] | None:
        if s.running:
            return s.stopService()
        return None

    async def _build(self, count: int) -> list[DHTService]:
        boot = self._service([])
        self.assertTrue(await boot.when_joined())
        address = boot.network.address
        self.assertEqual(address[0], "127.0.0.1")
        self.assertNotEqual(address[1], 0)
        others = [self._service([address]) for _ in range(count - 1)]
        joined = await defer.gatherResults([s.when_joined() for s in others])
        self.assertEqual(joined, [True] * (count - 1))
        for s in self.services:
            self.assertGreater(s.network.routing_table.num_contacts, 0)
        return self.services

    async def _get_everywhere(self, nodes: list[DHTService], values: dict[str, bytes]
                              ) -> None:
        """Get every value from every node in ``nodes``; report all mismatches at once."""
        sem = defer.DeferredSemaphore(CONCURRENCY)

        async def one(s: DHTService, name: str) -> tuple[str, int, str] | None:
            try:
                got = await sem.run(s.network.get, name)
            except Exception as e:  # collected and reported below
                return (name, s.network.address[1], f"{type(e).__name__}: {e}")
            if got != values[name]:
                return (name, s.network.address[1], f"wrong value ({len(got)} bytes)")
            return None

        results = await defer.gatherResults([
            defer.Deferred.fromCoroutine(one(s, name))
            for name in values for s in nodes])
        failures = [r for r in results if r is not None]
        self.assertEqual(failures, [], f"{len(failures)} of {len(results)} gets failed")

    async def _put(self, s: DHTService, name: str, value: bytes) -> None:
        replicas = await s.network.put(name, value)
        self.assertGreaterEqual(replicas, 1, f"put of {name!r} stored nowhere")

    def test_put_get_and_node_stopped(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._scenario())

    async def _scenario(self) -> None:
        nodes = await self._build(NODES)

        # Several small values and one of the largest size, each put from a random node.
        values = {f"small-{i}": os.urandom(self.rng.randrange(1, 900)) for i in range(5)}
        values["big"] = os.urandom(MAX_VALUE_SIZE)
        putters: dict[str, DHTService] = {}
        for name, value in values.items():
            putters[name] = self.rng.choice(nodes)
            await self._put(putters[name], name, value)

        # ... and got from every other node.
        for name in values:
            await self._get_everywhere([s for s in nodes if s is not putters[name]],
                                       {name: values[name]})

        # Stop the node closest to the big value's key (a holder that every get of it
        # asks first) while gets of every value are under way from all other nodes.
        big_key = _key("big")
        victim = min(nodes, key=lambda s: ids.distance(s.network.key, big_key))
        self.assertTrue(victim.network.kvp_table.records_for_key(big_key))
        remaining = [s for s in nodes if s is not victim]
        timeouts_before = sum(s.network.protocol.stats.timeouts for s in remaining)
        stopped = task.deferLater(reactor, 0.05, victim.stopService)
        await self._get_everywhere(remaining, values)
        await stopped
        self.assertFalse(victim.running)

        # After the stop: every value once more, and a new value put and got.
        await self._get_everywhere(remaining, values)
        values = {"after-stop": os.urandom(700)}
        await self._put(self.rng.choice(remaining), "after-stop", values["after-stop"])
        await self._get_everywhere(remaining, values)

        # The stopped node was in the way (requests to it timed out), and nothing was
        # malformed or misrouted on the wire.
        self.assertGreater(sum(s.network.protocol.stats.timeouts for s in remaining),
                           timeouts_before)
        for s in nodes:
            self.assertEqual(s.network.protocol.stats.malformed, 0)
            self.assertEqual(s.network.protocol.stats.wrong_network, 0)
