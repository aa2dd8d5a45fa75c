# -*- test-case-name: tests.test_dht_flashcrowd -*-
"""A fast simulated clock and a reactor that binds UDP on the in-memory network.

:class:`HeapClock` is ``task.Clock`` with its delayed calls in a heap: scheduling and
running a call cost O(log n) instead of the sort of every pending call that
``task.Clock.callLater`` does, which is what a simulation of hundreds of nodes (tens of
thousands of datagrams in flight) spends its time on.  :class:`MemoryReactor` gives a
:class:`p2pnet.dht.service.DHTService` ``listenUDP`` on a
:class:`p2pnet.sim.memory.MemoryNetwork`, and the clock's time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from p2pnet.sim.memory import MemoryDatagramTransport, MemoryNetwork


@implementer(IReactorTime)
class HeapClock:
    """A deterministic ``IReactorTime`` for simulations; time moves only by ``advance``."""

    def __init__(self, start: float = 0.0) -> None:
        self.rightNow = start
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._seq = 0
        self._live = 0

    def seconds(self) -> float:
        return self.rightNow

    def _push(self, call: DelayedCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (call.time, self._seq, call))

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object,
                  **kw: object) -> DelayedCall:
        call = DelayedCall(self.rightNow + delay, callable, args, kw,
                           self._cancelled, self._push, self.seconds)
        self._live += 1
        self._push(call)
        return call

    def _cancelled(self, call: DelayedCall) -> None:
        self._live -= 1  # its heap entry is skipped when it comes up

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [c for t, _, c in self._heap if self._current(t, c)]

    @staticmethod
    def _current(t: float, call: DelayedCall) -> bool:
        return not call.cancelled and not call.called and call.time == t

    def next_call_time(self) -> float | None:
        """When the earliest pending call is due (None when nothing is pending)."""
        heap = self._heap
        while heap and not self._current(heap[0][0], heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @property
    def pending(self) -> int:
        return self._live

    def advance(self, amount: float) -> None:
        """Move time forward by ``amount``, running every call due on the way in order
        (each at its own time)."""
        end = self.rightNow + amount
        heap = self._heap
        while heap:
            t, _, call = heap[0]
            if not self._current(t, call):
                heapq.heappop(heap)
                continue
            if t > end:
                break
            heapq.heappop(heap)
            if call.delayed_time:  # DelayedCall.delay() / reset() to a later time
                call.activate_delay()
                self._push(call)
                continue
            self.rightNow = max(self.rightNow, t)
            self._live -= 1
            call.called = 1
            call.func(*call.args, **call.kw)
        self.rightNow = max(self.rightNow, end)

    def run_until(self, done: Callable[[], bool], max_seconds: float) -> bool:
        """Advance call by call until ``done()`` or ``max_seconds`` passed; returns
        ``done()``."""
        end = self.rightNow + max_seconds
        while not done():
            nxt = self.next_call_time()
            if nxt is None or nxt > end:
                break
            self.advance(max(nxt - self.rightNow, 0.0))
        return done()

    def run_deferred(self, d: defer.Deferred[Any], max_seconds: float = 600.0
                     ) -> defer.Deferred[Any]:
        """Advance until ``d`` fires (or ``max_seconds``); returns ``d``."""
        fired: list[bool] = []

        def note(result: Any) -> Any:
            fired.append(True)
            return result

        d.addBoth(note)
        self.run_until(lambda: bool(fired), max_seconds)
        return d


class MemoryReactor:
    """Just enough reactor for a ``DHTService``: the clock's time (a :class:`HeapClock`
    or ``task.Clock``), UDP on ``network``."""

    def __init__(self, clock: Any, network: MemoryNetwork,
                 host: str = "127.0.0.1") -> None:
        self.clock = clock
        self.network = network
        self.host = host

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, f: Callable[..., Any], *a: object, **kw: object
                  ) -> DelayedCall:
        return self.clock.callLater(delay, f, *a, **kw)

    def getDelayedCalls(self) -> list[DelayedCall]:
        return self.clock.getDelayedCalls()

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> MemoryDatagramTransport:
        return self.network.attach(protocol, interface or self.host, port)
