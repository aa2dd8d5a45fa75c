"""Shared helpers for the DHT tests: N nodes on an in-memory network, driven by a Clock.

Nothing here touches a socket or the global reactor: every node is a
:class:`~p2pnet.dht.network.DHTNetwork` attached to one
:class:`~p2pnet.sim.memory.MemoryNetwork`, and time only moves when a test moves the
:class:`twisted.internet.task.Clock`.  Node ids and transaction ids come from seeded
generators, so every run is the same.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, task

from p2pnet import ids
from p2pnet.dht.network import DHTNetwork
from p2pnet.models import Node
from p2pnet.sim.memory import MemoryNetwork
from p2pnet.timers import Periodic

PORT = 4000


def host_of(i: int) -> str:
    """One host per node, so ``MemoryNetwork.blocked_hosts`` can cut a single node off,
    each in its own /24, so the routing table's per-prefix limit does not bite."""
    return f"10.{i // 250}.{i % 250}.1"


def seeded(seed: int) -> Any:
    """A ``randbytes(n)`` function that gives the same bytes every run."""
    return random.Random(seed).randbytes


class Sim:
    """A clock, an in-memory network and the DHT nodes on it."""

    def __init__(self, latency: float = 0.001, loss: float = 0.0, seed: int = 0) -> None:
        self.clock = task.Clock()
        self.net = MemoryNetwork(self.clock, latency=latency, loss=loss, seed=seed)
        self.nodes: list[DHTNetwork] = []
        self.seed = seed

    def add(self, node_id: bytes | None = None, host: str | None = None, port: int = PORT,
            **kw: Any) -> DHTNetwork:
        """A new node attached at ``(host, port)`` (its own host by default)."""
        i = len(self.nodes)
        kw.setdefault("randbytes", seeded(self.seed * 100_003 + i))
        node = DHTNetwork(self.clock, node_id=node_id, **kw)
        self.net.attach(node.protocol, host or host_of(i), port)
        self.nodes.append(node)
        return node

    def add_many(self, count: int, **kw: Any) -> list[DHTNetwork]:
        return [self.add(**kw) for _ in range(count)]

    def run(self, d: defer.Deferred[Any], max_seconds: float = 600.0) -> defer.Deferred[Any]:
        return run(self.clock, d, max_seconds)

    def settle(self, seconds: float) -> None:
        settle(self.clock, seconds)

    def join_all(self, bootstrap: DHTNetwork | None = None,
                 nodes: Iterable[DHTNetwork] | None = None) -> list[Any]:
        """Join every node (one after the other) through ``bootstrap`` (the first node)."""
        bootstrap = bootstrap or self.nodes[0]
        results = []
        for node in nodes if nodes is not None else self.nodes:
            if node is bootstrap:
                continue
            d = self.run(node.join_network(bootstrap.address))
            results.append(result_of(d))
        return results

    def live(self) -> list[DHTNetwork]:
        """The nodes still attached to the network."""
        return [n for n in self.nodes if n.protocol.transport is not None]

    def closest(self, key: bytes, count: int = 20, exclude: Iterable[DHTNetwork] = ()
                ) -> list[Node]:
        """The true ``count`` closest live nodes to ``key`` (what a lookup should find)."""
        skip = {n.key for n in exclude}
        nodes = [n.node for n in self.live() if n.key not in skip]
        nodes.sort(key=lambda n: n.distance(key))
        return nodes[:count]

    def holders(self, key: bytes, index: bytes) -> list[DHTNetwork]:
        return [n for n in self.nodes if n.kvp_table.get_record(key, index) is not None]


#: Each step lands this far past the call it runs.  Landing exactly on a call's time
#: can leave the clock an ulp short of what ``task.LoopingCall`` computed for its tick
#: (``Clock.callLater`` rounds ``now + delay``), and the loop then ticks twice; the
#: overshoot also guarantees that a step always moves the clock.
_TICK = 1e-9


def _next_call(clock: task.Clock) -> float | None:
    calls = clock.getDelayedCalls()
    return min(c.getTime() for c in calls) if calls else None


def run(clock: task.Clock, d: defer.Deferred[Any], max_seconds: float = 600.0
        ) -> defer.Deferred[Any]:
    """Advance ``clock`` until ``d`` fires or ``max_seconds`` have passed.

    The clock moves from one delayed call to the next (never more than one call's worth
    at a time), so times seen by the code are exact: ``task.Clock.advance(x)`` runs the
    calls due in ``x`` with the clock already at the end of ``x``, so one big step would
    stretch every hop scheduled on the way.  Quiet stretches (waiting for a timeout) cost
    one step.  Returns ``d``: use ``successResultOf`` / ``failureResultOf`` on it.
    """
    fired: list[bool] = []
    d.addBoth(lambda r: fired.append(True) or r)  # d.called is True while it waits on
    end = clock.seconds() + max_seconds             # a Deferred it chained to: not enough
    while not fired:
        nxt = _next_call(clock)
        if nxt is None or nxt > end:
            break  # nothing (more) can fire it in time
        clock.advance(max(nxt - clock.seconds(), 0.0) + _TICK)
    return d


def settle(clock: task.Clock, seconds: float) -> None:
    """Advance exactly ``seconds``, running every call due on the way at its own time."""
    end = clock.seconds() + seconds
    while True:
        nxt = _next_call(clock)
        if nxt is None or nxt > end:
            break
        clock.advance(max(nxt - clock.seconds(), 0.0) + _TICK)
    if clock.seconds() < end:
        clock.advance(end - clock.seconds())


def looping_calls(clock: task.Clock) -> list[Any]:
    """The delayed calls of :class:`p2pnet.timers.Periodic` timers on ``clock``."""
    return [c for c in clock.getDelayedCalls()
            if isinstance(getattr(c.func, "__self__", None), Periodic)]


def result_of(d: defer.Deferred[Any]) -> Any:
    """The result of a fired Deferred (raises AssertionError if it has not fired)."""
    box: list[Any] = []
    d.addBoth(lambda r: box.append(r) or r)
    if not box:
        raise AssertionError(f"{d!r} has not fired")
    return box[0]


def key_near(key: bytes, distance: int) -> bytes:
    """The key at XOR ``distance`` from ``key``."""
    return ids.int_to_key(ids.key_to_int(key) ^ distance)


def count_stores(*nodes: DHTNetwork) -> list[tuple[DHTNetwork, Any]]:
    """Record every store request each node answers: a list of ``(node, request body)``."""
    seen: list[tuple[DHTNetwork, Any]] = []
    for node in nodes:
        original = node.store.answer

        def answer(body: Any, sender: bytes, address: Any, _node: DHTNetwork = node,
                   _orig: Any = original) -> Any:
            seen.append((_node, body))
            return _orig(body, sender, address)

        node.store.answer = answer  # type: ignore[method-assign]
    return seen
